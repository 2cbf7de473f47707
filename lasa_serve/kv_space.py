"""How much memory vLLM's KV cache takes (``lasa serve --engine vllm --kv-space``).

On the CPU, vLLM without ``VLLM_CPU_KVCACHE_SPACE`` reserves most of the machine (19.8 of
23.5 GiB in issue 20). ``lasa serve`` bounds it: ``--kv-space`` when given (it wins over the
variable), else vLLM's variable when set, else what ``--max-batch`` full contexts need,
at most :data:`CAP` and a quarter of the machine's memory, and at least one full context
(vLLM refuses less). On a GPU vLLM's own sizing (``gpu_memory_utilization``) stays unless
``--kv-space`` is given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from .budget import config_kv_bytes_per_token

GIB = 1 << 30
CAP = 3 * GIB
ENV = "VLLM_CPU_KVCACHE_SPACE"


@dataclass(frozen=True)
class KvSpace:
    bytes: int | None  # kv_cache_memory_bytes for vLLM; None: vLLM decides
    source: str  # for the start-up log
    drop_env: bool = False  # remove VLLM_CPU_KVCACHE_SPACE (it would override --kv-space)


def bytes_per_token(hf_config: Any, dtype: str) -> int:
    """Keys and values of one token over every layer (vLLM's KV dtype is the model's)."""
    return config_kv_bytes_per_token(hf_config, 4 if dtype == "float32" else 2)


def choose(kv_space: float | None, on_cpu: bool, hf_config: Any, dtype: str, max_batch: int,
           context: int, env: Mapping[str, str] = os.environ,
           total_memory: int | None = None) -> KvSpace:
    """The KV cache size ``lasa serve`` passes to vLLM, and where it comes from."""
    if kv_space is not None:
        if kv_space <= 0:
            from lasa_steer import LasaError

            raise LasaError(f"--kv-space {kv_space}: a size in GiB above 0")
        return KvSpace(int(kv_space * GIB), f"--kv-space {kv_space:g} GiB",
                       drop_env=bool(env.get(ENV)))
    if not on_cpu:
        return KvSpace(None, "vLLM's gpu_memory_utilization")
    if env.get(ENV):
        return KvSpace(None, f"{ENV}={env[ENV]} GiB (vLLM's variable)")
    per_token = bytes_per_token(hf_config, dtype)
    if total_memory is None:
        total_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    want = max_batch * context * per_token
    size = max(min(want, CAP, total_memory // 4), context * per_token)
    return KvSpace(size, f"{size / GIB:.2f} GiB: min(--max-batch {max_batch} x context "
                   f"{context} x {per_token} B/token = {want / GIB:.2f} GiB, "
                   f"{CAP // GIB} GiB, a quarter of memory), at least one context")
