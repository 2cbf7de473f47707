"""Vector files shipped inside the package (``lasa_steer/vectors/``), found by name.

A vector is named by its file stem (``smollm2-135m-instruct``), so ``steer(model,
"smollm2-135m-instruct")``, ``lasa info smollm2-135m-instruct`` and ``lasa serve`` with no
``--vectors`` work after a plain ``pip install`` without knowing where pip put the file.
A path that exists always wins over a name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import VectorFileError

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "vectors"
SUFFIX = ".safetensors"
# a bare name: no folder, no suffix (the same letters as a server's vector names)
_NAME_RE = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")


def shipped_vectors() -> dict[str, Path]:
    """Name -> file of every vector shipped with this installation."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*" + SUFFIX))}


def is_vector_name(text: str) -> bool:
    return bool(_NAME_RE.fullmatch(text)) and not text.endswith(SUFFIX)


def locate(spec: str | os.PathLike[str]) -> Path:
    """The file ``spec`` means: the path as given when it exists or is not a bare name,
    else the shipped vector of that name (the path as given when there is none)."""
    path = Path(spec).expanduser()
    if not path.exists() and is_vector_name(os.fspath(spec)):
        return shipped_vectors().get(os.fspath(spec), path)
    return path


def resolve_vector(spec: str | os.PathLike[str]) -> Path:
    """:func:`locate`, or raise :class:`VectorFileError` saying where it looked."""
    path = locate(spec)
    if path.is_file():
        return path
    if is_vector_name(os.fspath(spec)):
        raise VectorFileError(
            f"{os.fspath(spec)}: no such vector file, and no shipped vector of that name "
            f"(shipped: {', '.join(shipped_vectors()) or 'none'}); give a path to a "
            ".safetensors file or a shipped name")
    raise VectorFileError(f"{path}: no such vector file")
