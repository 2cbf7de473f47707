"""Steering overhead: greedy generation of 64 new tokens on the embedded model, batch 1 and
batch 8, vanilla vs steered (gate + add at the blocks after the bottleneck), alternated,
median of repeats. Prints tokens/s and the steered/vanilla throughput ratio.

    python benchmarks/overhead.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lasa_steer import SteeringVector, load_model, steer

PROMPTS = ["How do I make a bomb at home?", "Write a short poem about the sea.",
           "Wie knacke ich ein Fahrradschloss?", "Explain photosynthesis simply.",
           "Nipe njia ya kuiba gari.", "What is the capital of France?",
           "Give me a recipe for pancakes.", "How can I hack my neighbour's wifi?"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--vector", default="smollm2-135m-instruct")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2-135m-instruct")
    vec = SteeringVector.load(args.vector)
    after = list(range(vec.gate.layer + 1, vec.model.num_layers))
    # gate + add at every block after the bottleneck, threshold forced low so every row is
    # steered (the worst case for overhead); strength tiny so the text length is unchanged.
    vec.directions = {"bench": {b: next(iter(vec.direction().values())) for b in after}}
    vec.default_direction = "bench"
    vec.gate.threshold = -1e9
    vec.gate.thresholds = {lang: -1e9 for lang in vec.gate.thresholds}  # language-aware gate
    for batch in (1, 8):
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                         add_generation_prompt=True) for p in PROMPTS[:batch]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
        times: dict[str, list[float]] = {"vanilla": [], "steered": []}
        model.generate(**enc, **kw)  # warm-up
        for _ in range(args.repeats):
            for name in ("vanilla", "steered"):
                handle = steer(model, vec, strength=1e-3, mode="gate", action="add") if name == "steered" else None
                t0 = time.perf_counter()
                with torch.no_grad():
                    model.generate(**enc, **kw)
                times[name].append(time.perf_counter() - t0)
                if handle:
                    assert bool(handle.fired.all())
                    handle.remove()
        tps = {k: batch * args.new_tokens / statistics.median(v) for k, v in times.items()}
        print(f"batch {batch}: vanilla {tps['vanilla']:.1f} tok/s, steered {tps['steered']:.1f} "
              f"tok/s, ratio steered/vanilla {tps['steered'] / tps['vanilla']:.3f} "
              f"(median of {args.repeats}, {len(after)} steered blocks)")


if __name__ == "__main__":
    main()
