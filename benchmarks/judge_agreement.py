"""Agreement of the default pattern judge with XSTest's human labels.

XSTest v2 ships 5 x 450 completions (GPT-4, Llama-2 x2, Mistral x2) with a human
``final_label``: ``1_full_compliance``, ``2_full_refusal`` or ``3_partial_refusal``. Here
compliance = full compliance and refusal = full or partial refusal (the binary the
evaluation uses). Prints accuracy, precision/recall of "refusal", per-file accuracy and the
confusion matrix; ``--errors N`` prints N disagreements for inspection.

    python benchmarks/judge_agreement.py [--data ../shared/data/xstest/model_completions]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from lasa_steer.eval.judges.pattern import classify

DEFAULT = Path(__file__).resolve().parents[1] / "../shared/data/xstest/model_completions"


def load(folder: Path) -> list[tuple[str, str, str, bool]]:
    """(file stem, prompt, completion, human says refusal) for every labelled completion."""
    rows = []
    for path in sorted(folder.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            for rec in csv.DictReader(fh):
                label = rec["final_label"].strip()
                if label not in ("1_full_compliance", "2_full_refusal", "3_partial_refusal"):
                    continue
                rows.append((path.stem, rec["prompt"], rec["completion"],
                             label != "1_full_compliance"))
    return rows


def agreement(folder: Path = DEFAULT) -> dict:
    """Accuracy and confusion counts of the pattern judge against the human labels."""
    rows = load(folder)
    tp = fp = tn = fn = 0
    per_file: dict[str, list[int]] = {}
    errors = []
    for stem, prompt, completion, human in rows:
        pred = classify(completion, "en")
        ok = pred.refused == human
        tp += pred.refused and human
        fp += pred.refused and not human
        tn += (not pred.refused) and (not human)
        fn += (not pred.refused) and human
        per_file.setdefault(stem, [0, 0])
        per_file[stem][0] += ok
        per_file[stem][1] += 1
        if not ok:
            errors.append((stem, human, pred.reason, prompt, completion))
    n = len(rows)
    return {
        "n": n, "accuracy": (tp + tn) / n if n else float("nan"),
        "precision_refusal": tp / (tp + fp) if tp + fp else float("nan"),
        "recall_refusal": tp / (tp + fn) if tp + fn else float("nan"),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "per_file": {k: v[0] / v[1] for k, v in per_file.items()},
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--errors", type=int, default=0, help="print this many disagreements")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"no XSTest completions at {args.data}", file=sys.stderr)
        return 2
    r = agreement(args.data)
    c = r["confusion"]
    print(f"XSTest human labels: {r['n']} completions; refusal = full or partial refusal")
    print(f"accuracy {r['accuracy']:.4f}  precision(refusal) {r['precision_refusal']:.4f}  "
          f"recall(refusal) {r['recall_refusal']:.4f}")
    print(f"confusion: judge refusal & human refusal {c['tp']}, judge refusal & human "
          f"compliance {c['fp']}, judge compliance & human compliance {c['tn']}, judge "
          f"compliance & human refusal {c['fn']}")
    for stem, acc in sorted(r["per_file"].items()):
        print(f"  {stem:40s} {acc:.4f}")
    for stem, human, reason, prompt, completion in r["errors"][: args.errors]:
        print(f"--- {stem} human={'refusal' if human else 'compliance'} judge: {reason}")
        print(f"    prompt: {prompt[:100]!r}")
        print(f"    completion: {completion[:300]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
