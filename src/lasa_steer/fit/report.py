"""The fit's report: its sections as a dataclass, the summary stored in the vector file,
and the ``.json``/``.md``/``.png`` files."""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .directions import lang_mean


@dataclass
class FitReport:
    """Everything the fit measured, section by section (written as ``<stem>.json``)."""

    model: str
    num_layers: int
    hidden_size: int
    bottleneck: int
    bottleneck_rule: str
    gate: dict[str, Any]
    auroc: dict[str, dict[str, float]]
    refusal: dict[str, Any]
    counts: dict[str, Any]
    capture: dict[str, Any]
    config: dict[str, Any]
    layers: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def candidate_table(rows: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per gate candidate: mean and worst per-language validation AUROC, and overall."""
    return {k: {"mean_language_auroc": lang_mean(v), "min_language_auroc":
                min(x for lang, x in v.items() if lang != "all"), "all": v["all"]}
            for k, v in rows.items()}


def gate_section(g: Any, hd: Any, target_fpr: float) -> dict[str, Any]:
    """The report's ``gate`` section from the calibrated gate (``GateFit``) and the
    harm direction it was fit from."""
    return {"layer": g.gate.layer, "site": "resid_post", "threshold": g.gate.threshold,
            "method": g.method, "candidates": candidate_table(g.candidates),
            "choice": g.choice,
            "target_fpr": target_fpr, "val_fpr": g.val_fpr, "val_tpr": g.val_tpr,
            "language_subspace_rank": hd.subspace_rank,
            "fraction_removed_by_language_projection": hd.fraction_removed,
            "per_language": g.per_language}


def refusal_section(steer_layers: list[int], rlayers: list[int], best: Any, cfg: Any,
                    baseline: dict[str, Any], trials: list[Any], gated: dict[str, Any]
                    ) -> dict[str, Any]:
    """The report's ``refusal`` section: the chosen direction and strength, and the trials."""
    return {"layers": steer_layers, "candidate_layers": rlayers, "chosen": best.direction,
            "strength": best.strength, "refusal_prefixes": list(cfg.refusal_prefixes),
            "compliance_prefixes": list(cfg.compliance_prefixes), "baseline": baseline,
            "trials": [t.as_dict() for t in trials], "gated": gated}


def provenance(gate_method: str, refusal: str, steer_layers: list[int], rlayers: list[int],
               langs: list[str], counts: dict[str, Any], seed: int,
               data_info: dict[str, Any] | None) -> dict[str, Any]:
    """The vector file's provenance: method, date, languages, counts, data, tool."""
    return {
        "method": "lasa-fit: gate = language-balanced diff of means at the bottleneck with "
                  "the language-centroid subspace projected out"
                  + ("" if gate_method == "diffmean" else f", {gate_method} by the within-"
                     "(language, label) covariance") + "; refusal = "
                  f"{refusal.removeprefix('refusal_')} at blocks {steer_layers} "
                  f"(both candidates stored at blocks {rlayers})",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "languages": sorted(set(langs)), "counts": counts, "seed": seed,
        "data": data_info or {}, "tool": f"lasa-steer {__version__}",
    }


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, stored in the vector file's ``extra`` metadata."""
    r = report["refusal"]
    best = next(t for t in r["trials"] if t["direction"] == r["chosen"]
                and t["strength"] == r["strength"])
    return {
        "gate_auroc_val": {k: round(v["all"], 4) for k, v in report["auroc"].items()},
        "gate_method": report["gate"]["method"],
        "gate_val_fpr": round(report["gate"]["val_fpr"], 4),
        "gate_val_tpr": round(report["gate"]["val_tpr"], 4),
        "language_fraction_removed": round(
            report["gate"]["fraction_removed_by_language_projection"], 4),
        "refusal_method": r["chosen"], "refusal_layers": r["layers"],
        "calibration": {"harmful_refusal_always": best["harmful_refusal"],
                        "harmless_kl_always": best["harmless_kl"],
                        "harmless_agreement_always": best["harmless_agreement"],
                        "baseline_harmful_refusal": round(r["baseline"]["harmful_refusal"], 4),
                        "gated_harmful_refusal": round(r["gated"]["harmful_refusal"], 4),
                        "gated_harmless_agreement": round(r["gated"]["harmless_agreement"], 4),
                        "gated_harmless_kl": round(r["gated"]["harmless_kl"], 6)},
    }


def write_report(result: Any, stem: str | Path) -> list[Path]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` (AUROC per language at the first,
    chosen and last blocks; the bottleneck curves when they were computed)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    rep = result.report
    paths = [Path(f"{stem}.{ext}") for ext in ("json", "md", "png")]
    paths[0].write_text(json.dumps(rep, indent=2, default=float) + "\n")
    paths[1].write_text(_markdown(rep, paths[2].name))
    _plot(result, paths[2])
    return paths


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) and math.isfinite(x) else str(x)


def _markdown(rep: dict[str, Any], png: str) -> str:
    g, r = rep["gate"], rep["refusal"]
    langs = [k for k in rep["auroc"]["chosen"] if k not in ("layer", "all")]
    lines = [f"# Fit report: {rep['model']}", "",
             f"![fit report]({png})", "",
             f"- bottleneck (gate) block: **{rep['bottleneck']}** of {rep['num_layers']} "
             f"(resid_post); rule: {rep['bottleneck_rule']}",
             f"- gate: **{g.get('method', 'diffmean')}** (best worst-language + held-out-"
             "style validation TPR; mean per-language AUROC of: " + ", ".join(
                 f"{k} {v['mean_language_auroc']:.3f} (worst language "
                 f"{v['min_language_auroc']:.3f})" for k, v in g.get("candidates", {}).items())
             + ")",
             f"- gate threshold {g['threshold']:.4f} for target FPR {g['target_fpr']:.0%}; on "
             f"validation: FPR {g['val_fpr']:.3f}, TPR {g['val_tpr']:.3f}",
             f"- language-identity subspace rank {g['language_subspace_rank']}; projecting it "
             f"out removed {g['fraction_removed_by_language_projection']:.1%} of the gate "
             "direction's squared norm",
             f"- refusal direction: **{r['chosen']}** at blocks {r['layers']}, strength "
             f"**{r['strength']}**", "",
             "## Gate AUROC on validation (harmful vs harmless, per language)", "",
             "`gate`: the fitted gate on every validation prompt, on the model as deployed. "
             "`first`/`chosen`/`last`: the layer comparison, language-balanced "
             "difference-of-means directions (not whitened) fit from the search subset at "
             "those blocks, on a seeded validation subset.", "",
             "| block | " + " | ".join(langs) + " | all |",
             "|---|" + "---|" * (len(langs) + 1)]
    for tag, row in rep["auroc"].items():
        lines.append(f"| {tag} ({row['layer']}) | " + " | ".join(_fmt(row[x]) for x in langs)
                     + f" | {_fmt(row['all'])} |")
    lines += ["", "## Strength calibration (mode=always, greedy replies)", "",
              f"Baseline (no steering): harmful refusal {r['baseline']['harmful_refusal']:.3f}, "
              f"harmless refusal {r['baseline']['harmless_refusal']:.3f} "
              f"({r['baseline']['harmful_prompts']} harmful / "
              f"{r['baseline']['harmless_prompts']} harmless prompts).", "",
              "| direction | strength | harmful refusal | harmless refusal | harmless KL "
              "(1st token) | harmless agreement |", "|---|---|---|---|---|---|"]
    for t in r["trials"]:
        lines.append(f"| {t['direction']} | {t['strength']} | {t['harmful_refusal']:.3f} | "
                     f"{t['harmless_refusal']:.3f} | {t['harmless_kl']:.4f} | "
                     f"{t['harmless_agreement']:.3f} |")
    gd = r["gated"]
    lines += ["", "## Chosen setting in gate mode (as deployed)", "",
              f"harmful refusal {gd['harmful_refusal']:.3f} ({gd['harmful_prompts']} prompts); "
              f"harmless refusal {gd['harmless_refusal']:.3f}, greedy agreement with the "
              f"unsteered model {gd['harmless_agreement']:.3f}, first-token KL "
              f"{gd['harmless_kl']:.5f} ({gd['harmless_prompts']} prompts).", "",
              "## Data counts", "", "| lang | train harmful | train harmless | val harmful | "
              "val harmless |", "|---|---|---|---|---|"]
    c = rep["counts"]
    for lang in sorted(set(c["train"]) | set(c["val"])):
        t, v = c["train"].get(lang, {}), c["val"].get(lang, {})
        lines.append(f"| {lang} | {t.get('harmful', 0)} | {t.get('harmless', 0)} | "
                     f"{v.get('harmful', 0)} | {v.get('harmless', 0)} |")
    lines.append(f"| total | {c['train_total']} | | {c['val_total']} | |")
    steps = rep.get("step_wall_time_s") or {}
    if steps:
        lines += ["", "## Wall time per step", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in steps.items()]
        if rep.get("wall_time_s") is not None:
            lines.append(f"| total | {rep['wall_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def _plot(result: Any, path: Path) -> None:
    from ..plots import pyplot

    plt = pyplot()

    rep = result.report
    langs = [k for k in rep["auroc"]["chosen"] if k not in ("layer", "all")]
    ncols = 2 if result.layer_report else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 4.2), squeeze=False)
    ax = axes[0][0]
    tags = [t for t in ("first", "chosen", "last", "gate") if t in rep["auroc"]]
    width = 0.8 / len(tags)
    for j, tag in enumerate(tags):
        row = rep["auroc"][tag]
        label = (f"shipped gate (block {row['layer']}, {rep['gate'].get('method', '')})"
                 if tag == "gate" else f"{tag} (block {row['layer']}, plain)")
        ax.bar([i + (j - (len(tags) - 1) / 2) * width for i in range(len(langs))],
               [row[x] for x in langs], width, label=label)
    ax.set_xticks(range(len(langs)), langs)
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("gate AUROC (validation)")
    ax.set_title("harmful vs harmless, per language")
    ax.legend(fontsize=7, loc="lower center", ncol=2)
    if result.layer_report:
        lr = result.layer_report
        ax = axes[0][1]
        x = list(range(lr.num_layers))
        ax.plot(x, lr.sil_meaning, "o-", ms=3, label="silhouette by meaning")
        ax.plot(x, lr.sil_language, "s-", ms=3, label="silhouette by language")
        ax.plot(x, lr.sil_diff, "k-", lw=2, label="meaning - language")
        if lr.transfer_auroc:
            ax2 = ax.twinx()
            ax2.plot(x, lr.transfer_auroc, "^-", color="tab:red", ms=3, label="transfer AUROC")
            ax2.set_ylim(0.4, 1.01)
            ax2.legend(fontsize=8, loc="lower right")
        ax.axvline(lr.chosen, color="tab:green", ls="--", lw=2)
        ax.set_xlabel("block")
        ax.set_title(f"bottleneck: block {lr.chosen}")
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"lasa fit: {rep['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
