"""Fit a gated refusal vector for your own model and data, end to end.

    python examples/fit_your_model.py MODEL DATA.jsonl OUT.safetensors [--val VAL.jsonl]

MODEL: a Hugging Face folder, hub id (cached locally), a .gguf file, or
"smollm2-135m-instruct". DATA: JSONL or CSV with ``text,label,lang`` (label 1/harmful or
0/harmless; optional ``group`` marking rows that translate one another, used to choose the
bottleneck). Without ``--val`` a seeded 20% per language and label is held out.

The script runs the same pipeline as ``lasa fit``, writes the vector plus its fit report,
then shows the vector at work: gate scores and a steered vs unsteered reply.
Run with ``--demo`` to generate a small demo data file from the shared PolyRefuse set first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lasa_steer import SteeringVector, load_model, steer
from lasa_steer.generate import generate
from lasa_steer.capture import gate_scores
from lasa_steer.fit.data import load_labelled, load_polyrefuse, split_examples
from lasa_steer.fit import FitConfig, fit, write_report


def write_demo_data(path: Path, langs=("en", "de", "fr"), per_label: int = 40) -> None:
    """A small text,label,lang JSONL from the shared PolyRefuse data (for trying this out)."""
    rows = [{"text": e.text, "label": e.label, "lang": e.lang, "group": e.group}
            for e in load_polyrefuse(None, "train", list(langs), per_label)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    print(f"wrote {len(rows)} demo rows to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--val")
    ap.add_argument("--demo", action="store_true", help="first write DATA from PolyRefuse")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.demo:
        write_demo_data(Path(args.data))
    examples = load_labelled(args.data)            # DataError names file and row if malformed
    if args.val:
        train, val = examples, load_labelled(args.val)
    else:
        train, val = split_examples(examples, 0.2, seed=0)
    print(f"{len(train)} training and {len(val)} validation prompts, languages "
          f"{sorted({e.lang for e in train})}")

    model, tok = load_model(args.model, dtype="float32")
    config = FitConfig(strengths=(2.0, 4.0, 8.0), contrastive_per_language=4)
    result = fit(model, tok, train, val, config,
                 data_info={"train": args.data, "val": args.val or "20% of train"})
    out = result.vector.save(args.out)
    report = write_report(result, Path(args.out).with_suffix(""))
    r = result.report
    print(f"saved {out}; report {report[1]}")
    print(f"bottleneck block {r['bottleneck']}, gate threshold {r['gate']['threshold']:.3f} "
          f"(val FPR {r['gate']['val_fpr']:.3f}, TPR {r['gate']['val_tpr']:.3f}), refusal "
          f"{r['refusal']['chosen']} x {r['refusal']['strength']} at {r['refusal']['layers']}")

    # Use it: score prompts with the gate only, then generate with gated steering.
    vector = SteeringVector.load(out)
    harmful = next(e.text for e in val if e.label == 1)
    harmless = next(e.text for e in val if e.label == 0)
    scores, flagged = gate_scores(model, tok, vector, [harmful, harmless])
    print(f"gate scores {scores.tolist()} flagged {flagged.tolist()}")
    plain = generate(model, tok, [harmful, harmless], max_new_tokens=32)
    with steer(model, vector) as handle:            # mode="gate": only flagged rows steered
        steered = generate(model, tok, [harmful, harmless], max_new_tokens=32)
        print(f"fired per row: {handle.fired.tolist()}")
    for p, a, b in zip([harmful, harmless], plain, steered):
        print(f"\nPROMPT   {p[:80]}\nplain    {a[:100]!r}\nsteered  {b[:100]!r}")


if __name__ == "__main__":
    main()
