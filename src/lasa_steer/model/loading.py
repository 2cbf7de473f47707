"""``load_model``: a Hugging Face causal LM and its tokenizer from a hub id, a local folder,
a ``.gguf`` file, or the embedded default model's name."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .embedded import EMBEDDED, cache_root, convert_gguf, ensure_embedded, is_converted
from ..errors import ModelLoadError
from .placement import is_dispatched


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _dtype(value: torch.dtype | str | None, device: str) -> torch.dtype:
    if value is None or value == "auto":
        return default_dtype(device)
    if isinstance(value, torch.dtype):
        return value
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if value not in table:
        raise ModelLoadError(f"dtype={value!r}: use one of {sorted(table)}")
    return table[value]


def _gguf_folder(path: Path) -> Path:
    """Convert a user's GGUF once into a cached safetensors folder keyed by file identity."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    folder = cache_root() / "gguf" / f"{path.stem}-{key[:12]}"
    return folder if is_converted(folder) else convert_gguf(path, folder, path.stem)


def resolve(name_or_path: str) -> tuple[str, str]:
    """Return (folder or hub id to pass to from_pretrained, display name)."""
    if name_or_path in EMBEDDED:
        return str(ensure_embedded(name_or_path)), name_or_path
    p = Path(os.path.expanduser(name_or_path))
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelLoadError(f"{p}: no such GGUF file")
        return str(_gguf_folder(p)), p.stem
    return str(p) if p.exists() else name_or_path, name_or_path


def load_model(name_or_path: str, dtype: torch.dtype | str | None = None,
               device: str | None = None, device_map: str | dict | None = None,
               offload_folder: str | os.PathLike[str] | None = None, **kwargs):
    """Load ``(model, tokenizer)`` for steering; eval mode, on ``device``.

    ``device`` defaults to CUDA when present, else CPU; ``dtype`` to bfloat16/float16 on
    CUDA and float32 on the CPU. ``device_map`` (``"auto"``, ``"balanced"``,
    ``"sequential"`` or a dict of module name to device, ``"cpu"`` or ``"disk"``) lets
    Hugging Face/accelerate place a model larger than one device across GPUs, the CPU and
    ``offload_folder``; the model is then left where it was dispatched (never ``.to()``),
    and ``device`` only picks the default dtype. Extra keyword arguments (``max_memory``,
    ``revision``, ``token``...) go to ``from_pretrained``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = device or default_device()
    if device_map is not None:
        kwargs["device_map"] = device_map
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    elif offload_folder is not None:
        raise ModelLoadError("offload_folder needs a device_map (e.g. 'auto', or one that "
                             "puts some blocks on 'disk')")
    source, display = resolve(name_or_path)
    tried = [f"from_pretrained({source!r})"]
    local = Path(source).exists()
    if not local and os.environ.get("HF_HUB_OFFLINE") == "1":
        tried.append("HF_HUB_OFFLINE=1, so no hub download")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **{k: v for k, v in kwargs.items()
                                                             if k in ("revision", "token")})
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_dtype(dtype, dev), **kwargs)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        hint = ("the folder exists but is not a loadable model (needs config.json and weights)"
                if local else "not a local path; as a hub id it could not be fetched (no "
                "network, a typo, or a gated model needing a token)")
        if device_map is not None and ("offload" in str(exc) or "device" in str(exc)):
            hint = (f"device_map={device_map!r} could not be applied (blocks placed on "
                    "'disk' need offload_folder; accelerate must be installed)")
        raise ModelLoadError(
            f"cannot load model {name_or_path!r}: {hint}. Tried: {'; '.join(tried)}. "
            f"Error: {exc}. Give a local folder, a .gguf file, a reachable hub id, or "
            f"one of the embedded names {sorted(EMBEDDED)}") from exc
    if not is_dispatched(model):
        model.to(dev)
    model.eval()
    model.lasa_model_name = display  # type: ignore[attr-defined]
    # steer() writes refusal openers with it when no tokenizer is passed
    model.lasa_tokenizer = tokenizer  # type: ignore[attr-defined]
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer
