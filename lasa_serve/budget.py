"""The HF engine's KV-cache budget: requests are admitted by the KV bytes they may need.

A row (one choice of one request) may grow to ``prompt + max_tokens`` tokens, and each token
holds a key and a value per block: ``2 x blocks x kv_heads x head_dim x dtype bytes``. The
scheduler reserves that worst case for every running row (the left padding the running batch
shares is not counted) and admits a waiting request only while the reservations stay within
the budget: a request that fits the budget alone waits until running rows finish, one that
could never fit is refused with a 400 before it starts. Without ``--kv-budget`` the budget
is derived once at start, after the model loaded: 90% of the free memory of the model's
CUDA device, or on the CPU half of the memory the kernel reports available
(``MemAvailable``), leaving the rest to activations and the process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from lasa_steer.model.layers import text_config
from lasa_steer.model.placement import input_device

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6,
          "mib": 2**20, "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12,
          "tib": 2**40}
CUDA_FRACTION = 0.9
CPU_FRACTION = 0.5


def parse_bytes(text: str) -> int:
    """``"2GiB"``, ``"512MB"``, ``"1e9"`` or a plain byte count, as bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r}: expected a size such as 4GiB, 512MB or a byte count")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value <= 0:
        raise ValueError(f"{text!r}: the size must be positive")
    return int(value)


def kv_bytes_per_token(model: Any) -> int:
    """KV-cache bytes one token of one row takes in ``model`` (every block)."""
    return config_kv_bytes_per_token(text_config(model), next(model.parameters()).dtype.itemsize)


def config_kv_bytes_per_token(cfg: Any, itemsize: int) -> int:
    """KV-cache bytes of one token per row, from a (text) model config and the KV dtype's
    size (the vLLM engine sizes its cache from the config before any model loads)."""
    layers = int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer"))
    heads = int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head"))
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    hidden = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    return 2 * layers * kv_heads * head_dim * itemsize


def free_memory(device: torch.device) -> tuple[int, str]:
    """The budget derived from free memory on ``device``, and how it was derived."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_FRACTION), f"{CUDA_FRACTION:.0%} of free memory on {device}"
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        avail = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import os

        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(avail * CPU_FRACTION), f"{CPU_FRACTION:.0%} of available host memory"


@dataclass(frozen=True)
class KVBudget:
    limit: int  # bytes
    per_token: int  # bytes per token of one row
    source: str  # "--kv-budget" or how it was derived

    @classmethod
    def for_model(cls, model: Any, limit: int | None = None) -> "KVBudget":
        per_token = kv_bytes_per_token(model)
        if limit is not None:
            return cls(int(limit), per_token, "--kv-budget")
        derived, how = free_memory(input_device(model))
        return cls(derived, per_token, how)

    def row_cost(self, prompt_tokens: int, max_tokens: int) -> int:
        """The bytes one row of ``prompt_tokens`` may reach after ``max_tokens`` more."""
        return (prompt_tokens + max_tokens) * self.per_token

    def refusal(self, prompt_tokens: int, max_tokens: int, rows: int) -> str | None:
        """Why a request of ``rows`` rows can never be admitted (None: it can)."""
        need = rows * self.row_cost(prompt_tokens, max_tokens)
        if need <= self.limit:
            return None
        fit = self.limit // self.per_token // max(rows, 1) - prompt_tokens
        hint = (f"lower max_tokens to at most {fit}" if fit >= 1 else
                "shorten the prompt" + (" or lower n" if rows > 1 else ""))
        return (f"the request may need {need / 2**20:.1f} MiB of KV cache ({rows} x "
                f"({prompt_tokens} prompt + {max_tokens} max_tokens) tokens x "
                f"{self.per_token} bytes), more than this server's KV budget of "
                f"{self.limit / 2**20:.1f} MiB ({self.source}); {hint}")

    def describe(self) -> str:
        return (f"KV budget {self.limit / 2**20:.0f} MiB ({self.source}), "
                f"{self.per_token} bytes per token, {self.limit // self.per_token} tokens")
