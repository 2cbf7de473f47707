"""The vectors a server may use: the ``.safetensors`` files of one folder that fit its model.

Requests name vectors, never paths: a name is a file stem in the folder, checked against
a strict pattern. (Re)loading reads and validates the new file completely before it
replaces the old entry, so a bad file leaves the old vector serving. Rows already in
flight keep the vector object they started with.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any, Callable

import torch

from lasa_steer import LasaError, SteeringVector
from lasa_steer.errors import VectorNameError

log = logging.getLogger("lasa.server")
# Letters and digits, single '_', '-' or '.' between them (so never '..', nor a leading
# dot), at most 128 characters. The same rule is the OpenAPI pattern of every vector name
# (an ECMA/JSON-Schema regex: '$' is the end of the text there, hence fullmatch here).
NAME_PATTERN = r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$"
NAME_MAX = 128
NAME_RE = re.compile(NAME_PATTERN[1:-1])


def check_name(name: str) -> str:
    if len(name) > NAME_MAX or not NAME_RE.fullmatch(name):
        raise VectorNameError(
            f"vector name {name!r} is not valid: use the file stem of a .safetensors file in "
            "the server's vector folder (letters and digits, single '_', '-' or '.' between "
            f"them, at most {NAME_MAX} characters)")
    return name


# (name, file or None, vector) -> None, or raise LasaError: whether the vector may serve
Check = Callable[[str, "Path | None", SteeringVector], None]


class VectorRegistry:
    """Vectors by name. A file serves once ``check`` accepts it (default: it fits
    ``model``; the vLLM engine's check installs it in the engine's workers).

    ``shipped`` (the package's own vectors) is read first; a file of the same name in
    ``folder`` (``--vectors``) replaces it, other files add vectors."""

    def __init__(self, model: torch.nn.Module | None, folder: Path | None,
                 extra: dict[str, SteeringVector] | None = None, check: Check | None = None,
                 shipped: Path | None = None):
        if check is None:
            if model is None:
                raise ValueError("VectorRegistry needs a model or a check")
            check = lambda name, path, vector: vector.check_model(model)  # noqa: E731
        self.check = check
        self.folder = folder
        self.shipped = shipped
        self._lock = threading.Lock()
        self._vectors: dict[str, SteeringVector] = dict(extra or {})
        self.skipped: dict[str, str] = {}

    def files(self) -> dict[str, Path]:
        """Name -> file: the shipped vectors, then ``folder``'s (which win on a name)."""
        out: dict[str, Path] = {}
        for folder in (self.shipped, self.folder):
            if folder is not None and folder.is_dir():
                out.update({p.stem: p for p in sorted(folder.glob("*.safetensors"))})
        return out

    def scan(self) -> None:
        """Load every vector file that fits the model; log and skip the rest."""
        if self.folder is not None and not self.folder.is_dir():
            raise LasaError(f"--vectors {self.folder}: no such folder")
        for name, path in self.files().items():
            try:
                self._vectors[name] = self._read(path)
            except LasaError as exc:  # the error names the field that does not fit
                self.skipped[name] = str(exc)
                log.warning("vector %s skipped: %s", path, exc)

    def _read(self, path: Path) -> SteeringVector:
        check_name(path.stem)
        # load() copies the tensors out of the file's memory map: an admin overwriting a
        # vector file in place cannot pull the pages from under a serving vector (SIGBUS).
        vector = SteeringVector.load(path)
        self.check(path.stem, path, vector)
        return vector

    def load(self, name: str) -> SteeringVector:
        """(Re)load ``<folder>/<name>.safetensors`` (else the shipped file of that name);
        on any error the old entry stays."""
        check_name(name)
        if self.folder is None and self.shipped is None:
            raise FileNotFoundError("the server has no vector folder (--vectors)")
        path = self.files().get(name)
        if path is None or not path.is_file():
            raise FileNotFoundError(f"no vector file {name}.safetensors in the vector folder")
        vector = self._read(path)
        with self._lock:
            self._vectors[name] = vector
        self.skipped.pop(name, None)
        return vector

    def get(self, name: str) -> SteeringVector | None:
        with self._lock:
            return self._vectors.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._vectors)

    def describe(self, name: str) -> dict[str, Any]:
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        gate = v.gate
        return {
            "id": name, "object": "steering.vector",
            "model": v.model.name,
            "gate": None if gate is None else {"layer": gate.layer, "site": gate.site,
                                               "threshold": gate.threshold,
                                               "pooling": gate.pooling},
            "site": v.site,
            "directions": {d: sorted(layers) for d, layers in v.directions.items()},
            "default_direction": v.default_direction,
            "default_action": v.default_action,
            "default_strength": v.default_strength,
        }
