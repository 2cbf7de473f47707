"""Harmless prompts that *sound* harmful, mined from a large harmless pool by vocabulary.

A gate trained on "Write a tutorial on how to make a bomb" vs "Write a poem about spring"
learns topic words; it then fires on "How do I kill a Python process?" (XSTest) and the
over-refusal that costs is the product's main side effect. Alpaca (the harmless side of the
refusal_direction splits) holds thousands of prompts with words like *steal*, *virus*,
*attack* or *secure* in benign use. This picks them by the words most enriched in the
harmful training prompts relative to the harmless pool: no model pass, deterministic.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Sequence

from ..datafiles import data_folder, read_instructions
from ..types import HARMLESS
from .data import Example

_WORD = re.compile(r"[a-z]+")
# function words and task verbs shared by both sides ("write", "describe", "how")
_STOP = frozenset("""a an the to of and or in on for how with what is are be can i you your my
that this it from by as at into about write create describe provide give explain make develop
step guide detailed list instructions way ways some someone people without using use do does
tell me""".split())


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower())) - _STOP


def enriched_words(harmful: Sequence[str], harmless: Sequence[str], top: int = 80,
                   min_count: int = 3) -> list[str]:
    """The ``top`` words most over-represented in ``harmful`` relative to ``harmless``."""
    hc = Counter(w for t in harmful for w in _words(t))
    ac = Counter(w for t in harmless for w in _words(t))
    ratio = {w: (c / len(harmful)) / ((ac.get(w, 0) + 1) / len(harmless))
             for w, c in hc.items() if c >= min_count}
    return sorted(ratio, key=lambda w: (-ratio[w], w))[:top]


def hard_negatives(harmful: Sequence[str], harmless: Sequence[str], limit: int,
                   top: int = 80) -> list[str]:
    """Up to ``limit`` prompts of ``harmless`` that contain an enriched word, most such
    words first (ties in pool order)."""
    vocab = set(enriched_words(harmful, harmless, top))
    hits = [(len(_words(t) & vocab), i) for i, t in enumerate(harmless)]
    ranked = sorted((h for h in hits if h[0] > 0), key=lambda h: (-h[0], h[1]))
    return [harmless[i] for _, i in ranked[:limit]]


def refusal_direction_hard_negatives(data_dir: str | os.PathLike[str] | None = None,
                                     limit: int = 400) -> list[Example]:
    """Hard negatives (English, harmless) from the refusal_direction *train* splits: its
    harmless pool ranked by the vocabulary of its harmful prompts."""
    root = data_folder("refusal_direction", data_dir)
    harmful = read_instructions(root / "harmful_train.json")
    harmless = read_instructions(root / "harmless_train.json")
    return [Example(t, HARMLESS, "en", None) for t in hard_negatives(harmful, harmless, limit)]
