"""``lasa fit MODEL``: fit a gated refusal vector file from multilingual harmful/harmless data."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from .common import (add_identify, add_mixture, add_model_and_data, add_placement, comma_list,
                     load_placed, mixture_specs)

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="fit a vector file (gate + refusal directions) for a model")
    add_model_and_data(p)
    p.add_argument("--data", default="polyrefuse",
                   help="'polyrefuse' (the shared PolyRefuse folder; train split for fitting, "
                        "val split for calibration) or a JSONL/CSV with text,label,lang")
    p.add_argument("--val", help="validation JSONL/CSV (default: a seeded 20%% of --data, or "
                                 "the PolyRefuse val split)")
    p.add_argument("--langs", help="comma-separated language codes (default: all)")
    p.add_argument("--limit", type=int, help="PolyRefuse rows per language and label (train)")
    p.add_argument("--val-limit", type=int, help="PolyRefuse val rows per language and label")
    p.add_argument("-o", "--out", required=True, help="output vector file (.safetensors)")
    p.add_argument("--report", help="report path stem (default: next to --out, '<out>.fit')")
    p.add_argument("--layer", type=int, help="bottleneck block (default: choose it)")
    p.add_argument("--refusal-layers", type=comma_list(int, "block indices"),
                   help="comma-separated blocks for the refusal direction")
    p.add_argument("--steer-layers", type=comma_list(int, "block indices"),
                   help="comma-separated blocks steered by default "
                        "(default: the first block after the bottleneck)")
    p.add_argument("--fpr", type=float, default=0.02, help="gate target FPR (default 0.02)")
    p.add_argument("--strengths", type=comma_list(float, "numbers"), default=[3.0, 4.0, 5.0],
                   help="strength grid to calibrate (default 3,4,5)")
    p.add_argument("--contrastive-per-language", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    add_placement(p)
    p.add_argument("--capture-dtype", default="auto",
                   help="dtype of the activation captures: 'auto' (a bfloat16 copy of a "
                        "float32 model on a CPU with AMX, else the model), 'model', or a "
                        "dtype name; the gate threshold and generation always use the model")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's; 1 is fastest on a busy machine)")
    add_identify(p)
    add_mixture(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..fit.data import load_labelled, load_polyrefuse, split_examples
    from ..fit.languages import identification_texts
    from ..fit.mixture import load_mixture
    from ..fit.pipeline import FitConfig, fit, write_report

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    langs = [x.strip() for x in args.langs.split(",")] if args.langs else None
    if args.data == "polyrefuse":
        train = load_polyrefuse(args.data_dir, "train", langs, args.limit, args.seed)
        val = load_polyrefuse(args.data_dir, "val", langs, args.val_limit, args.seed)
        info = {"train": "PolyRefuse train split", "val": "PolyRefuse val split"}
    else:
        train = load_labelled(args.data)
        if langs:
            train = [e for e in train if e.lang in langs]
        if args.val:
            val = load_labelled(args.val)
            info = {"train": str(args.data), "val": str(args.val)}
        else:
            train, val = split_examples(train, 0.2, args.seed)
            info = {"train": f"{args.data} (80%)", "val": f"{args.data} (seeded 20%)"}
    model, tok = load_placed(args)
    loaded = time.perf_counter() - t0
    cfg = FitConfig(layer=args.layer, band=args.band, refusal_layers=args.refusal_layers or None,
                    steer_layers=args.steer_layers or None, fpr=args.fpr,
                    strengths=tuple(args.strengths),
                    contrastive_per_language=args.contrastive_per_language,
                    capture_dtype=args.capture_dtype, batch_size=args.batch_size,
                    seed=args.seed, progress=not args.no_progress)
    texts, check = identification_texts(
        {e.lang for e in train}, args.data_dir, cfg.lid_per_language, seed=args.seed,
        sources=args.identify)
    # the default mixture goes with the default data; a user's --data fits its gate alone
    # unless --mixture names sources
    specs = mixture_specs(args) if (args.mixture is not None or args.data == "polyrefuse") \
        else []
    mixture = load_mixture(specs, args.data_dir, args.seed) if specs else None  # fail early
    result = fit(model, tok, train, val, cfg, data_info=info, identify_only=texts,
                 identify_check=check)
    if mixture is not None:
        from ..fit.mixture_gate import MixtureGateConfig, fit_mixture_gate
        from ..fit.operating_points import DEFAULT_POINTS
        mcfg = MixtureGateConfig(points=tuple(args.operating_points or DEFAULT_POINTS),
                                 batch_size=args.batch_size, progress=not args.no_progress,
                                 seed=args.seed)
        result.vector, result.report["mixture_gate"] = fit_mixture_gate(
            model, tok, result.vector, mixture, mcfg)
    elapsed = time.perf_counter() - t0
    steps = result.report.get("step_wall_time_s") or {}
    result.report["step_wall_time_s"] = {
        "load data and model": round(loaded, 1), **steps,
        **({"mixture gate": result.report["mixture_gate"]["wall_time_s"]}
           if mixture is not None else {})}
    result.report["wall_time_s"] = round(elapsed, 1)
    result.vector.extra["fit_wall_time_s"] = round(elapsed, 1)
    out = result.vector.save(args.out)
    stem = Path(args.report) if args.report else out.with_name(out.stem + ".fit")
    paths = write_report(result, stem)
    r = result.report
    g = result.vector.gate
    point = f"operating point {g.operating_point!r}, " if g is not None and g.operating_point \
        else ""
    print(f"wrote {out} (bottleneck block {r['bottleneck']}, gate {point}pooled threshold "
          f"{g.threshold if g is not None else float('nan'):.4f}, refusal "
          f"{r['refusal']['chosen']} x {r['refusal']['strength']} at blocks "
          f"{r['refusal']['layers']}) in {elapsed:.0f} s")
    print("report: " + ", ".join(str(p) for p in paths))
    return 0
