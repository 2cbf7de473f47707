"""The project's own contrast prompts (``contrast_data/contrast.jsonl``): safe prompts that
merely look unsafe ("How do I kill a Python process?") and minimally different harmful
requests ("How do I kill my neighbour?"), in many languages.

Why: a gate fitted on harmful-vs-Alpaca prompts learns harm-flavoured *words*; these rows
teach it the difference that matters, outside English too. Rows of one ``group`` are
translations of one seed and share its label, so a split by group keeps a seed's translations
on one side. The file is written by the project (never derived from XSTest or MultiJail,
which stay test sets); ``contrast_data/README.md`` says how, and its count tables are the
output of ``python -m lasa_steer.fit.contrast``.

Some rows are *conversational* translations: casual harmful questions and safe look-alikes
from the train part of ``safety_mix`` (English only there) translated into languages that
have no conversational data. Their English seed stays in safety_mix (not repeated here), so
such a row carries ``kind="conversational"``, ``seed_source="safety_mix"`` and the group
``conv:<the seed's safety_mix group>``; the mixture gives it its seed's part.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

from ..datafiles import lang_code
from ..errors import DataError
from ..types import HARMFUL, HARMFUL_KIND, HARMLESS, HARMLESS_KIND
from .data import Example

CONTRAST_FILE = Path(__file__).parent / "contrast_data" / "contrast.jsonl"
FIELDS = ("text", "label", "lang", "category", "group", "source")
# the extra fields of a conversational translation, with their only value
CONV_FIELDS = {"kind": "conversational", "seed_source": "safety_mix"}
CONV_PREFIX = "conv:"
SOURCE = "lasa-contrast"
_LABELS = {HARMLESS_KIND: HARMLESS, HARMFUL_KIND: HARMFUL}
_GROUP = re.compile(r"c\d{4,}")
_CONV_GROUP = re.compile(re.escape(CONV_PREFIX) + r"\S+")


def conv_seed_group(group: str) -> str | None:
    """The safety_mix group a conversational translation's ``group`` names, else None."""
    return group[len(CONV_PREFIX):] if group.startswith(CONV_PREFIX) else None


def read_contrast(path: str | os.PathLike[str] = CONTRAST_FILE) -> list[dict[str, str]]:
    """Every row of a contrast file, checked: the fields above as non-empty strings, a label
    name, a normalised language code, a group id ``c0001`` (or, for a conversational
    translation, :data:`CONV_FIELDS`, a ``conv:`` group and a language other than English),
    one label and category per group, one row per (group, language), no text twice. A defect
    raises :class:`DataError` naming the row."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    rows: list[dict[str, str]] = []
    seen_text: dict[str, int] = {}
    seen_member: set[tuple[str, str]] = set()
    group_kind: dict[str, tuple[str, str, int]] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        where = f"{p}: row {n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} is not valid JSON ({exc.msg})") from exc
        conv = isinstance(rec, dict) and any(k in rec for k in CONV_FIELDS)
        fields = FIELDS + tuple(CONV_FIELDS) if conv else FIELDS
        if not isinstance(rec, dict) or sorted(rec) != sorted(fields):
            raise DataError(f"{where}: expected an object with exactly the fields {FIELDS}"
                            f" (a conversational translation also {tuple(CONV_FIELDS)})")
        if not all(isinstance(rec[k], str) and rec[k].strip() for k in fields):
            raise DataError(f"{where}: every field must be a non-empty string")
        if rec["label"] not in _LABELS:
            raise DataError(f"{where}: label {rec['label']!r} is not one of {tuple(_LABELS)}")
        if lang_code(rec["lang"]) != rec["lang"]:
            raise DataError(f"{where}: language {rec['lang']!r} is not a normalised code "
                            f"(write {lang_code(rec['lang'])!r})")
        if conv:
            for k, v in CONV_FIELDS.items():
                if rec[k] != v:
                    raise DataError(f"{where}: {k} {rec[k]!r} is not {v!r}")
            if not _CONV_GROUP.fullmatch(rec["group"]):
                raise DataError(f"{where}: group {rec['group']!r} of a conversational "
                                f"translation is not like 'conv:hh:123'")
            if rec["lang"] == "en":
                raise DataError(f"{where}: a conversational translation is not English (its "
                                "English seed is in safety_mix)")
        elif not _GROUP.fullmatch(rec["group"]):
            raise DataError(f"{where}: group {rec['group']!r} is not like 'c0001'")
        if rec["source"] != SOURCE:
            raise DataError(f"{where}: source {rec['source']!r} is not {SOURCE!r}")
        text = rec["text"]
        if text != text.strip():
            raise DataError(f"{where}: text has leading or trailing whitespace")
        if text in seen_text:
            raise DataError(f"{where}: same text as row {seen_text[text]}")
        seen_text[text] = n
        member = (rec["group"], rec["lang"])
        if member in seen_member:
            raise DataError(f"{where}: group {rec['group']} has two rows in {rec['lang']!r}")
        seen_member.add(member)
        first = group_kind.setdefault(rec["group"], (rec["label"], rec["category"], n))
        if first[:2] != (rec["label"], rec["category"]):
            raise DataError(f"{where}: group {rec['group']} is {rec['label']}/{rec['category']}"
                            f" here but {first[0]}/{first[1]} in row {first[2]}")
        rows.append(rec)
    if not rows:
        raise DataError(f"{p}: no rows")
    return rows


def contrast_examples(path: str | os.PathLike[str] = CONTRAST_FILE,
                      langs: set[str] | None = None) -> list[Example]:
    """The rows as fit examples (group ids kept), optionally only those of ``langs``."""
    return [Example(r["text"], _LABELS[r["label"]], r["lang"], r["group"])
            for r in read_contrast(path) if langs is None or r["lang"] in langs]


def count_tables(rows: list[dict[str, str]]) -> str:
    """Markdown tables of the rows per language and label, and per label and category (the
    README's tables are this function's output, which its test checks)."""
    by_lang = Counter((r["lang"], r["label"]) for r in rows)
    langs = sorted({r["lang"] for r in rows}, key=lambda c: (c != "en", c))
    out = ["| lang | harmless | harmful | rows |", "|---|---:|---:|---:|"]
    for lang in langs:
        a, b = by_lang[(lang, HARMLESS_KIND)], by_lang[(lang, HARMFUL_KIND)]
        out.append(f"| {lang} | {a} | {b} | {a + b} |")
    a = sum(v for (_, lab), v in by_lang.items() if lab == HARMLESS_KIND)
    b = sum(v for (_, lab), v in by_lang.items() if lab == HARMFUL_KIND)
    groups = len({r["group"] for r in rows})
    out.append(f"| all {len(langs)} | {a} | {b} | {a + b} |")
    out += ["", f"{groups} groups (seeds), per label and category with their rows in all "
            "languages:", "", "| label | category | seeds | rows |", "|---|---|---:|---:|"]
    seeds = Counter((lab, cat) for _, lab, cat in {(r["group"], r["label"], r["category"])
                                                   for r in rows})
    cat_rows = Counter((r["label"], r["category"]) for r in rows)
    for key in sorted(cat_rows, key=lambda k: (k[0] != HARMLESS_KIND, -cat_rows[k], k[1])):
        out.append(f"| {key[0]} | {key[1]} | {seeds[key]} | {cat_rows[key]} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(count_tables(read_contrast()), end="")
