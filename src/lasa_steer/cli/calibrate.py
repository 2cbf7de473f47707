"""``lasa calibrate VECTOR MODEL -o OUT``: make a vector's gate language-aware.

Adds language centroids and a threshold per language (at ``--fpr`` on each language's
harmless PolyRefuse validation prompts) to an existing vector file, without refitting its
directions (see :mod:`lasa_steer.fit.languages`). ``--gate refit`` then refits the gate's
score at its block (linear candidates and an MLP probe, chosen by worst-language and
held-out-style TPR) with thresholds that also hold on hard negatives
(:mod:`lasa_steer.fit.regate`). ``--action`` also sets the file's
default action (e.g. ``refuse``: the reply of a fired row is a refusal sentence in the
prompt's language). Languages of ``--identify``'s parallel corpora without labelled prompts
get an identification centroid and the pooled threshold; ``--add-languages`` adds only those
to a calibrated file, keeping everything else."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from ..types import ACTIONS
from .common import (DATA_DIR_HELP, MODEL_HELP, add_identify, add_mixture, add_placement,
                     load_placed, mixture_specs)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="add per-language gate thresholds to a vector file")
    p.add_argument("vector", help="the vector file to calibrate")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("-o", "--out", required=True, help="where to write the calibrated file")
    p.add_argument("--fpr", type=float, default=0.02,
                   help="false-positive target per language (default 0.02)")
    p.add_argument("--lid-layer", type=int, default=None,
                   help="block whose mean state identifies the language (default ~27%% depth)")
    p.add_argument("--per-language", type=int, default=40,
                   help="training prompts per language for the centroids (default 40)")
    p.add_argument("--val-limit", type=int, default=None,
                   help="validation prompts per language and label (default: all)")
    p.add_argument("--action", choices=ACTIONS, default=None,
                   help="also set the file's default action")
    p.add_argument("--gate", choices=("keep", "refit", "mixture", "points"), default="keep",
                   help="refit: also refit the gate's score and thresholds on PolyRefuse and "
                        "mined hard negatives; mixture: refit it on --mixture with operating "
                        "points set on look-alikes; points: keep a mixture gate's probe and "
                        "only set its --operating-point(s) again on --mixture's calibration "
                        "part (no training; captures about 40%% of the rows) (default keep)")
    p.add_argument("--train-limit", type=int, default=60,
                   help="with --gate refit: PolyRefuse train rows per language and label "
                        "(default 60)")
    p.add_argument("--hard-negatives", type=int, default=400,
                   help="with --gate refit: harmless look-alikes from refusal_direction "
                        "train, half to train, half to calibrate (default 400; 0 = none)")
    p.add_argument("--probe-hidden", type=int, default=64,
                   help="with --gate refit: width of the MLP probe candidate (0 = none)")
    add_identify(p)
    add_mixture(p)
    p.add_argument("--add-languages", action="store_true",
                   help="only add identification centroids (--identify) for languages the "
                        "gate lacks; its score, thresholds and centroids stay")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    add_placement(p)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import FitConfigError
    from ..fit.data import load_polyrefuse
    from ..fit.languages import (add_languages, calibrate_languages, check_identification,
                                 identification_texts)
    from ..vector.file import SteeringVector

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.add_languages and args.gate != "keep":
        raise FitConfigError(f"--add-languages keeps the gate: drop --gate {args.gate}")
    mixture = None
    if args.gate in ("mixture", "points"):
        from ..fit.mixture import load_mixture
        specs = mixture_specs(args)
        if not specs:
            raise FitConfigError(f"--gate {args.gate} needs a --mixture (not 'none')")
        mixture = load_mixture(specs, args.data_dir)
    t0 = time.perf_counter()
    vector = SteeringVector.load(args.vector)
    if args.gate == "points" and (vector.gate is None or vector.gate.probe is None
                                  or not vector.gate.language_aware):
        raise FitConfigError(f"{args.vector}: --gate points retunes a mixture gate; this "
                             "file has none (use --gate mixture)")
    model, tok = load_placed(args)
    vector.check_model(model)
    if args.gate == "points":
        return _retune(args, model, tok, vector, mixture, t0)
    if args.add_languages:
        have = vector.gate.languages if vector.gate else ()
        texts, check = identification_texts(have, args.data_dir, args.per_language,
                                            sources=args.identify)
        out, added = add_languages(model, tok, vector, texts, check)
        report = dict(out.extra.get("language_gate", {}))
        report["identification_check"] = {**report.get("identification_check", {}),
                                          **added["check_accuracy"]}
        report["wall_time_s"] = round(time.perf_counter() - t0, 1)
        out.extra = {**out.extra, "language_gate": report}
        path = out.save(args.out)
        print(f"wrote {path}: added {added['added'] or 'no languages'}; identified on "
              f"held-out sentences: {added['check_accuracy']}")
        return 0
    train = load_polyrefuse(args.data_dir, "train")
    val = load_polyrefuse(args.data_dir, "val", limit=args.val_limit)
    texts, check = identification_texts({e.lang for e in train}, args.data_dir,
                                        args.per_language, sources=args.identify)
    checked: dict = {}
    if not (vector.gate and vector.gate.language_aware) or args.gate == "keep":
        vector, report = calibrate_languages(model, tok, vector, train, val, args.fpr,
                                             args.lid_layer, args.per_language,
                                             identify_only=texts)
        checked = check_identification(model, tok, vector.gate, check)
    out = vector
    if args.gate == "refit":
        from ..fit.hard_negatives import refusal_direction_hard_negatives
        from ..fit.probe import ProbeConfig
        from ..fit.regate import RegateConfig, regate
        hard = refusal_direction_hard_negatives(args.data_dir, args.hard_negatives) \
            if args.hard_negatives else []
        cfg = RegateConfig(fpr=args.fpr, probe=ProbeConfig(hidden=args.probe_hidden)
                           if args.probe_hidden else None)
        gate_train = load_polyrefuse(args.data_dir, "train", limit=args.train_limit)
        out, report = regate(model, tok, vector, gate_train, val, hard, cfg)
        print(f"gate: chose {report['gate_choice']!r}; hard-negative calibration FPR "
              f"{report['hard_negatives']['calibration_fpr']}")
    if mixture is not None:  # --gate mixture
        from ..fit.mixture_gate import MixtureGateConfig, fit_mixture_gate
        from ..fit.operating_points import DEFAULT_POINTS
        mcfg = MixtureGateConfig(points=tuple(args.operating_points or DEFAULT_POINTS))
        out, mreport = fit_mixture_gate(model, tok, out, mixture, mcfg)
        report = dict(out.extra.get("language_gate", {}))
        print(f"gate: chose {mreport['choice']!r} on the mixture; operating points " +
              ", ".join(f"{k} (test part: harmful "
                        f"{v['measured']['test'].get('harmful', {}).get('rate', float('nan')):.3f}"
                        f", look-alikes "
                        f"{v['measured']['test'].get('lookalike', {}).get('rate', float('nan')):.3f})"
                        for k, v in mreport["points"].items()))
    if args.action:  # the calibrated strength stays: it is what action 'add' uses
        out = replace(out, default_action=args.action)
    report["identification_check"] = checked or vector.extra.get(
        "language_gate", {}).get("identification_check", {})
    report["wall_time_s"] = round(time.perf_counter() - t0, 1)
    out.extra = {**out.extra, "language_gate": report}
    path = out.save(args.out)
    print(f"wrote {path}: language ID accuracy {report['lid_accuracy']:.3f} on validation, "
          f"block {report['lid_layer']}, {report['wall_time_s']:.0f} s")
    print(json.dumps(report["per_language"], indent=1))
    return 0


def _retune(args: argparse.Namespace, model, tok, vector, mixture, t0: float) -> int:
    """``--gate points``: new operating points for the file's probe (see retune_points)."""
    from ..fit.mixture_gate import MixtureGateConfig, retune_points
    from ..fit.operating_points import DEFAULT_POINTS
    cfg = MixtureGateConfig(points=tuple(args.operating_points or DEFAULT_POINTS))
    out, report = retune_points(model, tok, vector, mixture, cfg)
    if args.action:
        out = replace(out, default_action=args.action)
    path = out.save(args.out)
    print(f"wrote {path}: operating points set again on the mixture's calibration part in "
          f"{time.perf_counter() - t0:.0f} s")
    for name, meta in report["points"].items():
        test = meta.get("measured", {}).get("test", {})
        print(f"  {name}: test part " + ", ".join(
            f"{role} {v['rate']:.3f} ({v['rows']} rows)" for role, v in sorted(test.items())
            if isinstance(v, dict) and "rate" in v))
    return 0
