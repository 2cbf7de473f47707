"""Writes ``lasa eval`` results: Markdown table, JSON summary, PNG chart, audit JSONL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

BENCH_METRIC = {  # the figure each benchmark's chart panel shows, before vs after
    "multijail": ("asr", "attack success rate (harmful)"),
    "xstest": ("refusal", "refusal rate on safe prompts (over-refusal)"),
    "polyrefuse-harmless": ("refusal", "refusal rate (over-refusal)"),
    "mgsm": ("accuracy", "MGSM accuracy"),
}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _pair(row: dict[str, Any], name: str) -> str:
    a, b = row.get(f"{name}_before"), row.get(f"{name}_after")
    return "–" if a is None and b is None else f"{_pct(a)} → {_pct(b)}"


def _fire(row: dict[str, Any]) -> str:
    return f"{_pct(row.get('fire_harmful'))} / {_pct(row.get('fire_harmless'))}"


def markdown(summary: dict[str, Any], header: str = "") -> str:
    """The per-language table followed by the per-benchmark averages."""
    cols = ("| bench | lang | n | attack success (harmful) | refusal (harmless) | "
            "gate fired (harmful / harmless) | MGSM accuracy | unchanged (harmless) | "
            "judge failures |")
    sep = "|" + "---|" * 9
    lines = [header, "", cols, sep] if header else [cols, sep]
    for r in summary["rows"]:
        lines.append(f"| {r['bench']} | {r['lang']} | {r['n']} | {_pair(r, 'asr')} | "
                     f"{_pair(r, 'refusal')} | {_fire(r)} | {_pair(r, 'accuracy')} | "
                     f"{_pct(r['unchanged'])} | {r['judge_failures']} |")
    lines += ["", "Averages over languages (unweighted):", "", cols.replace("| lang |",
              "| languages |"), sep]
    for bench, a in summary["averages"].items():
        lines.append(f"| {bench} | {a['languages']} | {a['n']} | {_pair(a, 'asr')} | "
                     f"{_pair(a, 'refusal')} | {_fire(a)} | {_pair(a, 'accuracy')} | "
                     f"{_pct(a['unchanged'])} | {a['judge_failures']} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> Path:
    """One panel per benchmark: its main figure per language, before vs after steering."""
    from ..plots import pyplot

    plt = pyplot()

    benches = [b for b in summary["averages"] if b in BENCH_METRIC]
    fig, axes = plt.subplots(len(benches) or 1, 1, figsize=(11, 2.8 * max(1, len(benches))),
                             squeeze=False)
    for ax, bench in zip(axes[:, 0], benches):
        metric, title = BENCH_METRIC[bench]
        rows = [r for r in summary["rows"] if r["bench"] == bench]
        langs = [r["lang"] for r in rows]
        before = [100 * (r[f"{metric}_before"] or 0.0) for r in rows]
        after = [100 * (r[f"{metric}_after"] or 0.0) for r in rows]
        xs = range(len(langs))
        for offset, values, label, color in ((-0.2, before, "before (unsteered)", "#999999"),
                                             (0.2, after, "after (steered)", "#1f77b4")):
            bars = ax.bar([x + offset for x in xs], values, width=0.4, label=label,
                          color=color)
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        ax.set_xticks(list(xs), langs)
        ax.set_xlim(-0.7, max(len(langs), 4) - 0.3)  # one language: keep bars narrow
        ax.set_ylim(0, 112)
        ax.set_ylabel("%")
        ax.set_title(f"{bench}: {title}", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(out: Path, records: Sequence[dict[str, Any]], summary: dict[str, Any],
              meta: dict[str, Any]) -> dict[str, Path]:
    """Write ``results.md``, ``results.json``, ``results.png`` and ``completions.jsonl``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "results.md", "json": out / "results.json",
             "png": out / "results.png", "completions": out / "completions.jsonl"}
    header = "\n".join(f"- {k}: `{v}`" for k, v in meta.items())
    paths["markdown"].write_text(markdown(summary, header), encoding="utf-8")
    paths["json"].write_text(json.dumps({"meta": meta, **summary}, indent=2,
                                        ensure_ascii=False) + "\n", encoding="utf-8")
    with paths["completions"].open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    plot(summary, paths["png"])
    return paths
