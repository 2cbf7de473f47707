"""Finding the semantic bottleneck: the layer where last-token states cluster by meaning
rather than by language (the LASA paper's silhouette rule), checked against how well a
harmfulness direction fit on some languages transfers to languages it never saw.

Choice rule (robust): the raw argmax of ``silhouette(meaning) - silhouette(language)`` can
land on the first blocks, where the last token is the same template or punctuation token for
every prompt and all states nearly coincide. So we only consider blocks in a depth band
(default 30%-80% of the stack), smooth the curve over 3 neighbouring blocks, min-max
normalise it within the band and, when transfer AUROCs are available, add their min-max
normalised curve with equal weight. The chosen block is the argmax of that score within the
band (earliest on ties): a block that is both semantic and carries a transferable harm signal.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import FitConfigError
from .directions import auroc, harm_direction
from .sampling import aligned_groups

DEFAULT_BAND = (0.3, 0.8)


def cosine_distances(x: torch.Tensor) -> torch.Tensor:
    xn = x.double() / x.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (1.0 - xn @ xn.T).clamp_min(0.0)


def silhouette(x: torch.Tensor, labels: Sequence[Any]) -> float:
    """Mean silhouette coefficient with cosine distance (sklearn conventions: a point in a
    singleton cluster scores 0)."""
    names = sorted(set(labels), key=str)
    if len(names) < 2:
        raise ValueError("silhouette needs at least two groups")
    idx = torch.tensor([names.index(v) for v in labels])
    d = cosine_distances(x)
    onehot = torch.nn.functional.one_hot(idx, len(names)).double()   # [N, K]
    sums = d @ onehot                                                 # [N, K]
    counts = onehot.sum(0)                                            # [K]
    own = counts[idx]
    a = sums[torch.arange(len(idx)), idx] / (own - 1).clamp_min(1)
    other = sums / counts
    other[torch.arange(len(idx)), idx] = math.inf
    b = other.min(1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-30)
    s = torch.where(own > 1, s, torch.zeros_like(s))
    s = torch.where(torch.maximum(a, b) > 0, s, torch.zeros_like(s))
    return float(s.mean())


def transfer_auroc(states: torch.Tensor, labels: Sequence[int], langs: Sequence[str]
                   ) -> dict[str, float]:
    """Leave-one-language-out: fit the gate direction on the other languages, AUROC of
    harmful vs harmless on the held-out one."""
    out: dict[str, float] = {}
    lab = torch.as_tensor(list(labels))
    names = sorted(set(langs))
    for held in names:
        test = torch.tensor([x == held for x in langs])
        if not (bool((lab[test] == 1).any()) and bool((lab[test] == 0).any())):
            continue
        train = ~test
        tr_langs = [x for x, t in zip(langs, train.tolist()) if t]
        try:
            hd = harm_direction(states[train], lab[train].tolist(), tr_langs)
        except ValueError:
            continue
        s = states[test] @ hd.direction
        out[held] = auroc(s[lab[test] == 1], s[lab[test] == 0])
    return out


def _smooth(v: list[float]) -> list[float]:
    out = []
    for i in range(len(v)):
        win = [v[j] for j in (i - 1, i, i + 1) if 0 <= j < len(v) and math.isfinite(v[j])]
        out.append(sum(win) / len(win) if win else float("nan"))
    return out


def _minmax(v: list[float]) -> list[float]:
    fin = [x for x in v if math.isfinite(x)]
    lo, hi = (min(fin), max(fin)) if fin else (0.0, 0.0)
    return [((x - lo) / (hi - lo) if hi > lo else 0.0) if math.isfinite(x) else 0.0 for x in v]


def band_layers(num_layers: int, band: tuple[float, float] = DEFAULT_BAND) -> list[int]:
    lo = int(math.floor(band[0] * (num_layers - 1)))
    hi = int(math.ceil(band[1] * (num_layers - 1)))
    # the last block is never a candidate: the refusal direction goes on the blocks after
    return list(range(max(0, min(lo, num_layers - 2)), max(1, min(num_layers - 2, hi) + 1)))


def choose_bottleneck(diff: Sequence[float], transfer: Sequence[float] | None = None,
                      band: tuple[float, float] = DEFAULT_BAND) -> int:
    """The robust choice described in the module docstring; returns a 0-based block."""
    n = len(diff)
    cand = band_layers(n, band)
    sm = _smooth(list(diff))
    score = _minmax([sm[i] for i in cand])
    if transfer is not None and any(math.isfinite(x) for x in transfer):
        tsm = _smooth(list(transfer))
        score = [a + b for a, b in zip(score, _minmax([tsm[i] for i in cand]))]
    best = max(range(len(cand)), key=lambda j: (score[j], -j))
    return cand[best]


@dataclass
class LayerReport:
    """Per-block curves and the chosen bottleneck (0-based block, resid_post)."""

    model: str
    num_layers: int
    site: str
    chat: bool
    data: dict[str, Any]
    sil_meaning: list[float]
    sil_language: list[float]
    sil_diff: list[float]
    transfer_auroc: list[float] | None
    transfer_per_language: list[dict[str, float]] | None
    band: tuple[float, float]
    chosen: int
    raw_argmax: int
    rule: str = ("argmax over blocks in the depth band of minmax(smooth3(sil_meaning - "
                 "sil_language)) + minmax(smooth3(transfer_auroc)) (transfer term only when "
                 "harm data was given)")
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["band"] = list(self.band)
        return d

    def save(self, json_path: str | Path, png_path: str | Path | None = None) -> None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(self.to_json(), indent=2) + "\n")
        if png_path:
            plot_layers(self, png_path)


def analyze_states(states: dict[int, torch.Tensor], meaning: Sequence[Any],
                   language: Sequence[str], harm_states: dict[int, torch.Tensor] | None = None,
                   harm_labels: Sequence[int] | None = None,
                   harm_langs: Sequence[str] | None = None,
                   band: tuple[float, float] = DEFAULT_BAND, **info: Any) -> LayerReport:
    """Silhouettes per block of parallel-text states (``meaning``: sentence id, ``language``:
    code per row) and, optionally, transfer AUROC per block of labelled harm states."""
    layers = sorted(states)
    sm = [silhouette(states[i], meaning) for i in layers]
    sl = [silhouette(states[i], language) for i in layers]
    diff = [a - b for a, b in zip(sm, sl)]
    tr = trl = None
    if harm_states is not None and harm_labels is not None and harm_langs is not None:
        trl = [transfer_auroc(harm_states[i], harm_labels, harm_langs) for i in layers]
        tr = [sum(d.values()) / len(d) if d else float("nan") for d in trl]
    chosen = choose_bottleneck(diff, tr, band)
    raw = max(range(len(diff)), key=lambda i: diff[i])
    return LayerReport(model=str(info.pop("model", "")), num_layers=len(layers),
                       site=str(info.pop("site", "resid_post")), chat=bool(info.pop("chat", False)),
                       data=dict(info.pop("data", {})), sil_meaning=sm, sil_language=sl,
                       sil_diff=diff, transfer_auroc=tr, transfer_per_language=trl, band=band,
                       chosen=chosen, raw_argmax=raw, extra=info)


def bottleneck_of(states: dict[int, torch.Tensor], train: Sequence[Any],
                  band: tuple[float, float], silhouette_groups: int, seed: int,
                  name: str) -> LayerReport:
    """Silhouettes on the aligned harmful rows (a seeded subset of groups present in at
    least two languages), transfer AUROC on all rows."""
    groups, multi = aligned_groups(train, seed)
    rows = [r for g in sorted(multi[:silhouette_groups]) for r in groups[g]]
    if len(multi) < 2 or len({train[r].lang for r in rows}) < 2:
        raise FitConfigError("choosing the bottleneck needs harmful prompts aligned across at "
                             "least two languages (Example.group); pass layer= instead")
    idx = torch.tensor(rows)
    sub = {i: s[idx] for i, s in states.items()}
    return analyze_states(sub, [train[r].group for r in rows], [train[r].lang for r in rows],
                          states, [e.label for e in train], [e.lang for e in train], band,
                          model=name, chat=True,
                          data={"silhouette_rows": len(rows), "silhouette_groups":
                                min(len(multi), silhouette_groups),
                                "transfer_rows": len(train)})


def analyze_layers(model: torch.nn.Module, tokenizer: Any, parallel: Any,
                   harm: Sequence[Any] | None = None, chat: bool = False,
                   band: tuple[float, float] = DEFAULT_BAND, batch_size: int = 16,
                   progress: bool = True, model_name: str = "") -> LayerReport:
    """Capture last-token states at every block for parallel text (one or several
    :class:`~lasa_steer.fit.data.Parallel` sets) and optional labelled harm examples, then
    :func:`analyze_states`."""
    from ..capture import capture
    from ..model.layers import find_layers

    lm = find_layers(model)
    points = [("resid_post", i) for i in range(lm.num_layers)]
    sets = [parallel] if hasattr(parallel, "sentences") else list(parallel)
    texts, meaning, language = [], [], []
    for par in sets:  # one meaning group per (set, row); sets may cover other languages
        for lang in par.langs:
            for i, t in enumerate(par.sentences[lang]):
                texts.append(t)
                meaning.append(f"{par.source}:{i}")
                language.append(lang)
    got = capture(model, tokenizer, texts, points, batch_size=batch_size, chat=chat,
                  progress="parallel text" if progress else False, layer_map=lm)
    states = {p[1]: got[p] for p in points}
    harm_states = labels = hl = None
    if harm:
        hg = capture(model, tokenizer, [e.text for e in harm], points, batch_size=batch_size,
                     chat=None, progress="harm prompts" if progress else False, layer_map=lm)
        harm_states = {p[1]: hg[p] for p in points}
        labels = [e.label for e in harm]
        hl = [e.lang for e in harm]
    data = {"parallel": "+".join(p.source for p in sets),
            "languages": sorted({x for p in sets for x in p.langs}),
            "sentences": {p.source: {"rows": len(p), "languages": p.langs} for p in sets},
            "states": len(texts)}
    if harm:
        data["harm_examples"] = len(harm)
        data["harm_languages"] = sorted(set(hl or []))
    return analyze_states(states, meaning, language, harm_states, labels, hl, band,
                          model=model_name, chat=chat, data=data)


def plot_layers(report: LayerReport, path: str | Path, title: str | None = None) -> None:
    from ..plots import pyplot

    plt = pyplot()

    x = list(range(report.num_layers))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.plot(x, report.sil_meaning, "o-", ms=3, label="silhouette by meaning")
    ax.plot(x, report.sil_language, "s-", ms=3, label="silhouette by language")
    ax.plot(x, report.sil_diff, "k-", lw=2, label="meaning - language (LASA)")
    lo, hi = band_layers(report.num_layers, report.band)[0], band_layers(report.num_layers,
                                                                         report.band)[-1]
    ax.axvspan(lo - 0.5, hi + 0.5, color="0.92", zorder=0, label="candidate band")
    ax.set_xlabel("block (0-based, resid_post)")
    ax.set_ylabel("silhouette (cosine)")
    if report.transfer_auroc is not None:
        ax2 = ax.twinx()
        ax2.plot(x, report.transfer_auroc, "^-", color="tab:red", ms=3,
                 label="harm transfer AUROC (held-out langs)")
        ax2.set_ylabel("AUROC", color="tab:red")
        ax2.set_ylim(0.4, 1.01)
        ax2.legend(loc="lower right", fontsize=8)
    ax.axvline(report.chosen, color="tab:green", ls="--", lw=2)
    ax.annotate(f"bottleneck {report.chosen}", (report.chosen, ax.get_ylim()[1]),
                xytext=(4, -12), textcoords="offset points", color="tab:green")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or f"{report.model}: semantic bottleneck ({report.data.get('parallel', '')})")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
