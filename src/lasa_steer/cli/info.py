"""``lasa info VECTOR``: print a vector file's metadata readably."""

from __future__ import annotations

import argparse
import json

from ..vector.file import SteeringVector


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a vector file's metadata")
    p.add_argument("vector", help="a .safetensors vector file, or a shipped vector's name "
                   "(smollm2-135m-instruct)")
    p.add_argument("--json", action="store_true", help="print the raw metadata as JSON")
    p.set_defaults(func=run)


def describe(vector: SteeringVector) -> str:
    meta = vector.metadata()
    m = vector.model
    lines = [
        f"vector       {vector.path or vector.name}",
        f"format       version {meta['format_version']}, made by lasa-steer "
        f"{meta['provenance'].get('tool_version', '?')}",
        f"model        {m.name} ({m.architecture}), hidden {m.hidden_size}, "
        f"{m.num_layers} blocks, config fingerprint {m.config_fingerprint}",
    ]
    if vector.gate:
        g = vector.gate
        lines.append(f"gate         block {g.layer} {g.site}, pooling {g.pooling}, "
                     f"threshold {g.threshold:.4g}")
        report = vector.extra.get("language_gate", {})
        score = f"MLP probe ({g.probe.hidden} hidden, gelu)" if g.probe else "direction"
        chose = f", chosen as {report['gate_choice']!r}" if report.get("gate_choice") else ""
        lines.append(f"gate score   {score}{chose}")
        hard = report.get("hard_negatives")
        if hard:
            lines.append(f"hard negs    {hard['train']} trained on, {hard['calibration']} "
                         f"calibrated on (FPR there {hard['calibration_fpr']:.3f})")
        lines += _points(vector)
        if g.language_aware:
            at = f"operating point {g.operating_point!r}" if g.operating_point else \
                f"thresholds at FPR {g.fpr}"
            lines.append(f"languages    {len(g.languages)} centroids at block {g.lid_layer} "
                         f"(mean state); {at}; others: {g.threshold:.4g}")
            per = report.get("per_language", {})
            checked = report.get("identification_check", {})
            for lang in g.languages:
                row = per.get(lang, {})
                rates = "".join(f", {k} {row[k]:.2f}" for k in ("tpr", "fpr", "lid_accuracy")
                                if isinstance(row.get(k), float) and row[k] == row[k])
                thr = g.thresholds.get(lang)
                if thr is None:  # no labelled prompts: identified, pooled threshold
                    acc = f", identified on {checked[lang]:.2f} of held-out sentences" \
                        if lang in checked else ""
                    why = "too few calibration rows of its own" if g.operating_points \
                        else "identification only"
                    lines.append(f"  {lang:<4}       threshold {g.threshold:.4g} (pooled; "
                                 f"{why}{acc})")
                    continue
                lines.append(f"  {lang:<4}       threshold {format(thr, '.4g')}{rates}")
    else:
        lines.append("gate         none (mode='always' only)")
    for name, per_layer in sorted(vector.directions.items()):
        blocks = sorted(per_layer)
        norms = ", ".join(f"{per_layer[b].norm():.3g}" for b in blocks[:6])
        more = " ..." if len(blocks) > 6 else ""
        lines.append(f"direction    {name!r} at {vector.site} of blocks {blocks} "
                     f"(norms {norms}{more})")
    note = " (for add; refuse/prefix open with a sentence)" if vector.default_action in (
        "prefix", "refuse") else ""
    lines.append(f"defaults     action {vector.default_action}, strength "
                 f"{vector.default_strength:.4g}{note}, direction {vector.default_direction!r}")
    for key, value in sorted(meta["provenance"].items()):
        if key != "tool_version":
            text = json.dumps(value) if not isinstance(value, str) else value
            lines.append(f"provenance   {key}: {text if len(text) < 200 else text[:197] + '...'}")
    for key, value in sorted(meta["extra"].items()):
        if key in ("language_gate", "mixture_gate"):
            continue
        text = json.dumps(value)
        lines.append(f"extra        {key}: {text if len(text) < 200 else text[:197] + '...'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    vector = SteeringVector.load(args.vector)
    if args.json:
        print(json.dumps(vector.metadata(), indent=2, sort_keys=True))
    else:
        print(describe(vector))
    return 0


def _points(vector: SteeringVector) -> list[str]:
    """One block per operating point: its targets and the rates the fit measured on the
    data it held out (the mixture's test part)."""
    g = vector.gate
    if g is None or not g.operating_points:
        return []
    lines = []
    if g.probability_scale is not None:
        lines.append(f"probability  p(harmful) = sigmoid((score - threshold) / "
                     f"{g.probability_scale:.4g})")
    for name in g.point_names():
        op = g.operating_points[name]
        mark = " (default)" if name == g.operating_point else ""
        targets = ", ".join(f"{k} {v:g}" for k, v in op.targets.items())
        lines.append(f"op. point    {name}{mark}: FPR targets {targets}; pooled threshold "
                     f"{op.threshold:.4g}")
        test = op.measured.get("test", {})
        if test:
            rates = ", ".join(f"{role} {test[role]['rate']:.1%} of {test[role]['rows']}"
                              for role in ("harmful", "lookalike", "harmless") if role in test)
            lines.append(f"               held-out test part fired: {rates}")
    return lines
