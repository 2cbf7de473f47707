"""``lasa layers MODEL``: per-block silhouettes (meaning vs language) and harm-transfer
AUROC on parallel text; chooses the semantic bottleneck and writes JSON + a PNG plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_model_and_data, add_placement, load_placed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("layers", help="find the semantic bottleneck of a model")
    add_model_and_data(p, band_help="depth band to choose the bottleneck in (default 0.3,0.8)")
    p.add_argument("--parallel", default="ntrex",
                   help="comma-separated parallel text sets: ntrex, nusax, multijail or CSV "
                        "paths; rows of each set are grouped by meaning (default ntrex)")
    p.add_argument("--langs", help="comma-separated language codes (default: all of a set's)")
    p.add_argument("--limit", type=int, default=48, help="sentences per set (default 48)")
    p.add_argument("--harm", default="polyrefuse",
                   help="'polyrefuse', a JSONL/CSV with text,label,lang, or 'none': labelled "
                        "prompts for the transfer-AUROC curve")
    p.add_argument("--harm-limit", type=int, default=24,
                   help="PolyRefuse rows per language and label (default 24)")
    p.add_argument("--chat", action="store_true",
                   help="wrap parallel sentences in the chat template (default: raw text)")
    p.add_argument("-o", "--out", default="layers",
                   help="output path stem: writes STEM.json and STEM.png (default 'layers')")
    p.add_argument("--batch-size", type=int, default=16)
    add_placement(p, dtype_default="float32")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..fit.bottleneck import analyze_layers
    from ..fit.data import load_labelled, load_parallel, load_polyrefuse

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    langs = [x.strip() for x in args.langs.split(",")] if args.langs else None
    sets = []
    for spec in args.parallel.split(","):
        par = load_parallel(spec.strip(), args.data_dir)
        keep = [x for x in (langs or par.langs) if x in par.langs]
        sets.append((spec.strip(), par.select(keep, args.limit, args.seed)))
    harm = None
    if args.harm == "polyrefuse":
        harm = load_polyrefuse(args.data_dir, "train", None, args.harm_limit, args.seed)
        if langs:
            harm = [e for e in harm if e.lang in langs] or harm
    elif args.harm != "none":
        harm = load_labelled(args.harm)
    model, tok = load_placed(args)
    report = analyze_layers(model, tok, [p for _, p in sets], harm, chat=args.chat, band=args.band,
                            batch_size=args.batch_size, progress=not args.no_progress,
                            model_name=Path(args.model).stem if args.model.endswith(".gguf")
                            else args.model)
    out = Path(args.out)
    report.save(Path(f"{out}.json"), Path(f"{out}.png"))
    print(f"bottleneck block {report.chosen} of {report.num_layers} (raw silhouette-difference "
          f"argmax {report.raw_argmax}); wrote {out}.json and {out}.png")
    return 0

