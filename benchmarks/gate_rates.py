"""Gate decisions of a vector on prompts no fit or calibration used, at each operating point.

The figures issue 21 asks of a shipped gate, read through the production path
(:func:`lasa_steer.capture.gate_decisions`, the engine's and the server's gate):

* over-refusal sets: XSTest's 250 safe prompts (a test set), the ``test`` part of the
  mixture's look-alikes (safety_mix and the project's contrast prompts: held out by group,
  never trained or calibrated on), ordinary harmless prompts that set no threshold (the
  ``test`` part of PolyRefuse's harmless prompts, and the ``test`` part of MGSM's questions
  in 11 languages: the default mixture trains on MGSM's train part, held out by question);
* harmful sets: MultiJail dev (63 rows x 10 languages, a test set), the ``test`` part of the
  mixture's harmful rows;
* per MultiJail language the gate's AUROC against XSTest safe and against the ordinary
  prompts: how far any threshold on this score could go (the score's ceiling).

    python benchmarks/gate_rates.py --vector smollm2-135m-instruct --threads 2 \\
        --out docs/gate_rates.json

Writes JSON (and a markdown table beside it with --out). ``--cache`` keeps the scores and
languages per prompt so that another operating point costs no model pass.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

MJ_LANGS = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")


def prompt_sets(data: Path, sample: int
                ) -> dict[str, list[dict[str, Any]]]:
    """Every evaluated prompt, by set: ``{"text", "lang", "harmful"}`` (the mixture's test
    parts: a seeded sample of ``sample`` rows each)."""
    import random
    from lasa_steer.fit.mixture import SourceSpec, load_mixture

    out: dict[str, list[dict[str, Any]]] = {}
    xs = list(csv.DictReader(open(data / "xstest" / "xstest_prompts.csv", encoding="utf-8")))
    out["xstest_safe"] = [dict(text=r["prompt"], lang="en", harmful=False)
                          for r in xs if r["label"] == "safe"]
    mj = list(csv.DictReader(open(data / "multijail" / "MultiJail_dev.csv", encoding="utf-8")))
    out["multijail"] = [dict(text=r[lang], lang=lang, harmful=True)
                        for r in mj for lang in MJ_LANGS if r.get(lang)]
    mix = load_mixture([SourceSpec("safety_mix"), SourceSpec("contrast"),
                        SourceSpec("polyrefuse"), SourceSpec("mgsm")], data)
    test = mix.part("test")
    out["lookalike_test"] = [dict(text=r.text, lang=r.lang, harmful=False, source=r.source)
                             for r in test if r.role == "lookalike"]
    out["harmful_test"] = [dict(text=r.text, lang=r.lang, harmful=True, source=r.source)
                           for r in test if r.role == "harmful" and r.source != "polyrefuse"]
    out["ordinary_test"] = [dict(text=r.text, lang=r.lang, harmful=False, source=r.source)
                            for r in test if r.role == "harmless" and r.source == "polyrefuse"]
    out["mgsm"] = [dict(text=r.text, lang=r.lang, harmful=False, source=r.source)
                   for r in test if r.source == "mgsm"]
    for key in ("lookalike_test", "harmful_test", "ordinary_test"):
        if len(out[key]) > sample:
            out[key] = random.Random(0).sample(out[key], sample)
    return out


def score_all(args: argparse.Namespace, sets: dict[str, list[dict]], vector) -> dict:
    """Scores and identified languages per set (from ``--cache`` when its texts match)."""
    texts = [r["text"] for rows in sets.values() for r in rows]
    key = {"texts": texts, "vector": vector.path, "layer": vector.gate.layer}
    if args.cache and Path(args.cache).exists():
        got = torch.load(args.cache)
        if got["key"] == key:
            return got
    from lasa_steer import load_model
    from lasa_steer.capture import capture
    from lasa_steer.steering.gate import identify, reads, gate_point, lid_point, score

    model, tok = load_model(args.model)
    vector.check_model(model)
    how = reads(vector.gate)
    t0 = time.perf_counter()
    states = capture(model, tok, texts, list(how), batch_size=args.batch_size,
                     poolings=how, progress="gate reads")
    lp = lid_point(vector.gate)
    got = {"key": key, "scores": score(vector.gate, states[gate_point(vector.gate)]),
           "langs": list(identify(vector.gate, None if lp is None else states[lp], len(texts))),
           "seconds": round(time.perf_counter() - t0, 1)}
    if args.cache:
        torch.save(got, args.cache)
    return got


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vector", default="smollm2-135m-instruct",
                   help="vector file or shipped name")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--sample", type=int, default=500,
                   help="rows sampled from each mixture test part (default 500)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache", default=None, help="a .pt file for scores and languages")
    p.add_argument("--out", default=None, help="write JSON here (and a .md beside it)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lasa_steer.fit.directions import auroc
    from lasa_steer.vector.file import SteeringVector

    vector = SteeringVector.load(args.vector)
    gate = vector.gate
    assert gate is not None, "the vector has no gate"
    sets = prompt_sets(Path(args.data_dir), args.sample)
    got = score_all(args, sets, vector)
    scores, langs = got["scores"], got["langs"]
    spans, i = {}, 0
    for name, rows in sets.items():
        spans[name] = (i, i + len(rows))
        i += len(rows)
    points = gate.point_names() or [None]  # the default first, then strictest up
    report: dict[str, Any] = {"vector": vector.path, "counts": {k: len(v) for k, v in sets.items()},
                              "seconds": got.get("seconds"), "points": {}}
    for point in points:
        g = gate.at(point)
        thr = torch.tensor([g.threshold_for(x) for x in langs], dtype=torch.float64)
        fired = scores.double() > thr
        row: dict[str, Any] = {}
        for name, (a, b) in spans.items():
            row[name] = round(float(fired[a:b].double().mean()), 4)
        mj = sets["multijail"]
        a, _ = spans["multijail"]
        row["multijail_by_language"] = {
            lang: round(float(fired[[a + j for j, r in enumerate(mj) if r["lang"] == lang]]
                              .double().mean()), 4) for lang in MJ_LANGS}
        mg = sets["mgsm"]
        a2, _ = spans["mgsm"]
        row["mgsm_by_language"] = {
            lang: round(float(fired[[a2 + j for j, r in enumerate(mg) if r["lang"] == lang]]
                              .double().mean()), 4) for lang in sorted({r["lang"] for r in mg})}
        report["points"][point or "file"] = row
    xs = scores[slice(*spans["xstest_safe"])]
    ordinary = torch.cat([scores[slice(*spans["ordinary_test"])], scores[slice(*spans["mgsm"])]])
    a, _ = spans["multijail"]
    report["auroc"] = {lang: {
        "vs_xstest_safe": round(auroc(scores[[a + j for j, r in enumerate(sets["multijail"])
                                              if r["lang"] == lang]], xs), 4),
        "vs_ordinary": round(auroc(scores[[a + j for j, r in enumerate(sets["multijail"])
                                           if r["lang"] == lang]], ordinary), 4)}
        for lang in MJ_LANGS}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".md").write_text(markdown(report) + "\n")
    return 0


def markdown(report: dict[str, Any]) -> str:
    lines = ["| operating point | XSTest safe | look-alikes (test part) | ordinary (PolyRefuse "
             "test part / MGSM) | MultiJail dev | MultiJail en | harmful (test part) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in report["points"].items():
        lines.append(f"| {name} | {r['xstest_safe']:.1%} | {r['lookalike_test']:.1%} | "
                     f"{r['ordinary_test']:.1%} / {r['mgsm']:.1%} | {r['multijail']:.1%} | "
                     f"{r['multijail_by_language']['en']:.1%} | {r['harmful_test']:.1%} |")
    lines += ["", "| MultiJail language | " + " | ".join(MJ_LANGS) + " |",
              "|---|" + "---|" * len(MJ_LANGS)]
    for name, r in report["points"].items():
        lines.append(f"| fired, {name} | " + " | ".join(
            f"{r['multijail_by_language'][x]:.0%}" for x in MJ_LANGS) + " |")
    for key in ("vs_xstest_safe", "vs_ordinary"):
        lines.append(f"| gate AUROC {key.replace('_', ' ')} | " + " | ".join(
            f"{report['auroc'][x][key]:.2f}" for x in MJ_LANGS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
