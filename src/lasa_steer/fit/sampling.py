"""Which rows the fit reads where: seeded per-language samples, translation groups, the
search subset, and checks and counts of the data."""

from __future__ import annotations

import random
from typing import Any, Sequence

from ..errors import FitConfigError
from ..types import HARMFUL, HARMLESS, KINDS
from .data import Example


def check_labels(examples: Sequence[Example], what: str) -> None:
    """Both labels must occur (``what`` names the data set in the error)."""
    labels = {e.label for e in examples}
    if labels != {HARMFUL, HARMLESS}:
        raise FitConfigError(f"{what} data needs harmful and harmless examples; it has "
                             f"labels {sorted(labels)}")


def by_lang(examples: Sequence[Example], label: int, per_lang: int, seed: int) -> list[Example]:
    """A seeded sample of ``per_lang`` rows with ``label`` in every language."""
    rng = random.Random(seed)
    out = []
    for lang in sorted({e.lang for e in examples}):
        pool = [e for e in examples if e.lang == lang and e.label == label]
        out += rng.sample(pool, min(per_lang, len(pool)))
    return out


def aligned_groups(train: Sequence[Example], seed: int) -> tuple[dict[str, list[int]], list[str]]:
    """Harmful rows by translation group, and the groups present in at least two languages
    in a seeded order (its head is the silhouette / search sample)."""
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(train):
        if e.group is not None and e.label == HARMFUL:
            groups.setdefault(e.group, []).append(i)
    multi = sorted(g for g, rows in groups.items() if len({train[r].lang for r in rows}) > 1)
    random.Random(seed).shuffle(multi)
    return groups, multi


def search_rows(train: Sequence[Example], n_groups: int, seed: int) -> list[int]:
    """Indices of the search subset: the harmful rows of ``n_groups`` seeded groups aligned
    across at least two languages, plus as many seeded harmless rows per language as that
    language has harmful rows in it. Falls back to a seeded per-language sample when the
    data has no aligned groups (then the bottleneck layer must be given)."""
    groups, multi = aligned_groups(train, seed)
    harmful = sorted(r for g in multi[:n_groups] for r in groups[g])
    rng = random.Random(f"{seed}:search")
    per_lang: dict[str, int] = {}
    for r in harmful:
        per_lang[train[r].lang] = per_lang.get(train[r].lang, 0) + 1
    rows = list(harmful)
    for lang in sorted({e.lang for e in train}):
        pool = [i for i, e in enumerate(train) if e.lang == lang and e.label == HARMLESS]
        want = per_lang.get(lang, 0)
        if not harmful:  # no aligned groups: a plain per-language sample of both labels
            want = n_groups
            hpool = [i for i, e in enumerate(train) if e.lang == lang and e.label == HARMFUL]
            rows += rng.sample(hpool, min(want, len(hpool)))
        rows += rng.sample(pool, min(want, len(pool)))
    return sorted(rows)


def label_counts(train: Sequence[Example], val: Sequence[Example]) -> dict[str, Any]:
    """Rows per language and label of both splits (for the report and provenance)."""
    def table(xs: Sequence[Example]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for e in xs:
            d = out.setdefault(e.lang, {"harmful": 0, "harmless": 0})
            d[KINDS[e.label]] += 1
        return dict(sorted(out.items()))
    return {"train": table(train), "val": table(val), "train_total": len(train),
            "val_total": len(val)}
