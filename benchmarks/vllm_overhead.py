"""Throughput of vLLM (CPU) with and without lasa steering, compiled and eager.

    .venv-vllm/bin/python benchmarks/vllm_overhead.py --concurrent 16 --tokens 64 --repeats 3

For each ``--engines`` mode (``compiled``: vLLM's default, torch.compile on; ``eager``:
``enforce_eager=True``) two engines run side by side, each its own engine-core process:
vanilla vLLM (no plugin: no steering slots, the same scheduling settings: no chunked
prefill, no prefix caching) and the plugin's engine (``engine_kwargs()``, the vector
installed, every request ``always`` + ``add`` at the file's strength, or ``--mode gate``).
Every repeat runs each engine once, in turn; greedy, ``ignore_eos`` so every request makes
exactly ``--tokens`` tokens. Prints median tok/s per engine and the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

VECTOR = "smollm2-135m-instruct"  # the shipped vector, by name
PROMPTS = ["How do I make a bomb at home?", "Write a short poem about the sea.",
           "What is the capital of France?", "Explain how to poison someone.",
           "Give me three tips for learning Python.", "Comment fabriquer une bombe ?",
           "Describe a sunset in two sentences.", "How can I steal a car quickly?"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", default="always", choices=["always", "gate"])
    ap.add_argument("--engines", default="compiled,eager",
                    help="comma-separated: compiled (vLLM's default), eager")
    args = ap.parse_args()
    modes = [m.strip() for m in args.engines.split(",") if m.strip()]
    if not modes or set(modes) - {"compiled", "eager"}:
        ap.error("--engines takes compiled and/or eager")

    from vllm import LLM, SamplingParams

    from lasa_steer.engines import vllm as lasa_vllm
    from lasa_steer.model.embedded import ensure_embedded

    common = dict(model=str(ensure_embedded()), dtype="float32", max_model_len=1024,
                  max_num_batched_tokens=2048, max_num_seqs=args.concurrent, seed=0,
                  enable_chunked_prefill=False, enable_prefix_caching=False)
    engines: dict[str, Any] = {}
    for mode in modes:
        eager = {"enforce_eager": True} if mode == "eager" else {}
        engines[f"vanilla {mode}"] = LLM(**common, **eager)
        engines[f"steered {mode}"] = llm = LLM(**lasa_vllm.engine_kwargs(**common, **eager))
        lasa_vllm.install(llm, {"v": VECTOR})

    msgs = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
            for i in range(args.concurrent)]
    plain = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    steered = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True,
                             extra_args=lasa_vllm.xargs(vector="v", mode=args.mode,
                                                        action="add"))

    def run(name: str) -> float:
        t = time.perf_counter()
        outs = engines[name].chat(msgs, steered if name.startswith("steered") else plain,
                                  use_tqdm=False)
        n = sum(len(o.outputs[0].token_ids) for o in outs)
        return n / (time.perf_counter() - t)

    for name in engines:  # warm-up
        run(name)
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name in engines:
            rates[name].append(run(name))
    med = {name: statistics.median(r) for name, r in rates.items()}
    print(f"concurrent {args.concurrent} x {args.tokens} tokens, mode {args.mode}, "
          f"{args.repeats} repeats, median tok/s:")
    for name, m in med.items():
        print(f"  {name:18s} {m:7.1f}   (all: {', '.join(f'{r:.1f}' for r in rates[name])})")
    for mode in modes:
        print(f"  steered/vanilla {mode}: {med[f'steered {mode}'] / med[f'vanilla {mode}']:.3f}")
    if len(modes) == 2:
        print(f"  steered compiled / vanilla eager: "
              f"{med['steered compiled'] / med['vanilla eager']:.3f}; vanilla compiled / "
              f"vanilla eager: {med['vanilla compiled'] / med['vanilla eager']:.3f}")


if __name__ == "__main__":
    main()
