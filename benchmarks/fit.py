"""Benchmark the fit: activation-capture throughput batched vs one prompt at a time, and
the wall time of the full ``lasa fit`` that builds the shipped vector.

    python benchmarks/fit.py [--repeats 3] [--prompts 64] [--threads 2] [--dtype auto] [--full]

Capture: the same PolyRefuse prompts (all 14 languages, mixed lengths, chat template),
states at every block (the fit's heaviest capture), batch 16 vs batch 1, on the model the
fit captures with (``--dtype auto``: the fit's default, a bfloat16 copy on an AMX CPU;
``model``: float32 as loaded); medians of ``--repeats``, batched and single alternated.
``--full`` also times ``lasa fit`` with the shipped vector's arguments (minutes; written to a
temporary folder). Prints a JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

SHIPPED_ARGS = ["--threads", "2"]  # full PolyRefuse train and val splits


def capture_rate(model, tok, prompts, batch_size, repeats):
    from lasa_steer.capture import capture
    from lasa_steer.model.layers import find_layers

    lm = find_layers(model)
    points = [("resid_post", i) for i in range(lm.num_layers)]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        capture(model, tok, prompts, points, batch_size=batch_size, progress=False)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"batch_size": batch_size, "prompts": len(prompts), "median_s": round(med, 3),
            "prompts_per_s": round(len(prompts) / med, 2), "runs_s": [round(x, 3) for x in times]}


def _merge(rs: list[dict]) -> dict:
    times = [r["median_s"] for r in rs]
    med = statistics.median(times)
    return {**rs[0], "median_s": round(med, 3), "prompts_per_s": round(rs[0]["prompts"] / med, 2),
            "runs_s": times}


def nnsight_capture(nn_model, tok, prompts, batch_size, num_layers):
    """The same last-token capture through nnsight tracing (for the hooks-vs-nnsight
    comparison): left-padded batches, every block's output saved at the last position."""
    from lasa_steer.prompts import format_prompts

    texts = format_prompts(tok, prompts)
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        saved = []
        inputs = dict(enc)
        inputs["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
        with nn_model.trace(inputs, use_cache=False) as tracer:
            for layer in range(num_layers):
                h = nn_model.model.layers[layer].output
                h = h[0] if isinstance(h, tuple) else h
                saved.append(h[:, -1].save())
            tracer.stop()
        out.append(torch.stack([torch.as_tensor(x).float() for x in saved], 1))
    return torch.cat(out)


def nnsight_rate(model, tok, prompts, batch_size, repeats):
    from nnsight import LanguageModel

    from lasa_steer.model.layers import find_layers

    n = find_layers(model).num_layers
    nn_model = LanguageModel(model, tokenizer=tok)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        nnsight_capture(nn_model, tok, prompts, batch_size, n)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"batch_size": batch_size, "prompts": len(prompts), "median_s": round(med, 3),
            "prompts_per_s": round(len(prompts) / med, 2), "runs_s": [round(x, 3) for x in times]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="auto", help="capture dtype, as lasa fit's "
                                                    "--capture-dtype (default auto)")
    ap.add_argument("--full", action="store_true", help="also time the full shipped fit")
    ap.add_argument("--full-repeats", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lasa_steer import load_model
    from lasa_steer.fit.data import load_polyrefuse

    from lasa_steer.fit import capture_model

    model, tok = load_model("smollm2-135m-instruct", dtype="float32")
    model = capture_model(model, args.dtype)
    ex = load_polyrefuse(None, "train", None, limit=max(1, args.prompts // 28 + 1), seed=0)
    prompts = [e.text for e in ex][: args.prompts]
    base = {"threads": args.threads, "cpu_count": os.cpu_count(),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
    runs: dict[int, list[dict]] = {16: [], 1: []}
    for _ in range(args.repeats):  # alternated, so load changes hit both alike
        for bs in runs:
            runs[bs].append(capture_rate(model, tok, prompts, bs, 1))
    batched, single = (_merge(runs[bs]) for bs in (16, 1))
    print(json.dumps({"bench": "capture", **base, "batched": batched, "single": single,
                      "speedup": round(single["median_s"] / batched["median_s"], 2)}))
    try:
        nns = nnsight_rate(model, tok, prompts, 16, args.repeats)
        print(json.dumps({"bench": "nnsight_vs_hooks", **base, "hooks": batched,
                          "nnsight": nns,
                          "hooks_speedup": round(nns["median_s"] / batched["median_s"], 2)}))
    except Exception as exc:  # noqa: BLE001 - report, do not hide, an nnsight failure
        print(json.dumps({"bench": "nnsight_vs_hooks", "error": repr(exc)[:300]}))
    if args.full:
        times = []
        for _ in range(args.full_repeats):
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-m", "lasa_steer.cli", "fit", "smollm2-135m-instruct",
                       *SHIPPED_ARGS, "--no-progress", "-o", f"{tmp}/v.safetensors"]
                t = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                times.append(time.perf_counter() - t)
        print(json.dumps({"bench": "full_fit", **base, "args": SHIPPED_ARGS,
                          "median_s": round(statistics.median(times), 1),
                          "runs_s": [round(x, 1) for x in times]}))


if __name__ == "__main__":
    main()
