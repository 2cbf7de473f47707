"""Loaders for the fit's data: labelled prompts (harmful/harmless per language) and parallel
text (the same sentence in several languages), from the shared data formats and users' files.

Every loader returns language codes from one set: ISO 639-1 where the language has one
(``sw``, ``jv``, ``zh``), else ISO 639-3 (``ace``, ``ban``). A malformed file raises
:class:`~lasa_steer.errors.DataError` naming the file and the row, so a user's typo never
surfaces later as a shape error inside the fit.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..datafiles import (MULTIJAIL_META, data_folder, default_data_dir,  # noqa: F401
                         lang_code, read_csv, read_instructions, read_language_columns)
from ..errors import DataError
from ..types import HARMFUL, HARMLESS


@dataclass(frozen=True)
class Example:
    """One prompt. ``label``: 1 harmful, 0 harmless. ``group``: rows sharing a group are
    translations of one another (``None`` when unknown)."""

    text: str
    label: int
    lang: str
    group: str | None = None


@dataclass
class Parallel:
    """Row-aligned sentences: ``sentences[lang][i]`` are translations of each other."""

    sentences: dict[str, list[str]]
    source: str = ""

    @property
    def langs(self) -> list[str]:
        return list(self.sentences)

    def __len__(self) -> int:
        return len(next(iter(self.sentences.values()))) if self.sentences else 0

    def select(self, langs: Sequence[str] | None = None, limit: int | None = None,
               seed: int = 0) -> "Parallel":
        """Keep ``langs`` (codes) and a seeded random ``limit`` of rows."""
        keep = [lang_code(x) for x in langs] if langs else self.langs
        missing = [x for x in keep if x not in self.sentences]
        if missing:
            raise DataError(f"{self.source}: no language(s) {missing}; it has {self.langs}")
        rows = list(range(len(self)))
        if limit is not None and limit < len(rows):
            rows = sorted(random.Random(seed).sample(rows, limit))
        return Parallel({x: [self.sentences[x][i] for i in rows] for x in keep}, self.source)



# ------------------------------------------------------------------ PolyRefuse
def polyrefuse_langs(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Languages present in a PolyRefuse-style folder (``en`` first)."""
    folder = _polyrefuse_root(root)
    langs = sorted({p.stem.rsplit("_", 1)[1] for p in folder.glob("harmful_*_translated_*.json")})
    return (["en"] if (folder / "en").is_dir() else []) + [x for x in langs if x != "en"]


def _polyrefuse_root(root: str | os.PathLike[str] | None) -> Path:
    if root is not None and Path(root).is_dir() and not (Path(root) / "polyrefuse").is_dir():
        return Path(root)
    return data_folder("polyrefuse", root)


def polyrefuse_file(root: Path, kind: str, split: str, lang: str) -> Path:
    if lang == "en" and (root / "en").is_dir():
        return root / "en" / f"{kind}_{split}.json"
    return root / f"{kind}_{split}_translated_{lang}.json"


def load_polyrefuse(root: str | os.PathLike[str] | None = None, split: str = "train",
                    langs: Sequence[str] | None = None, limit: int | None = None,
                    seed: int = 0) -> list[Example]:
    """Harmful and harmless prompts of one split for each language. Harmful rows keep their
    index as ``group`` (they are index-aligned across languages); ``limit`` keeps the same
    seeded rows per language and label."""
    folder = _polyrefuse_root(root)
    chosen = [lang_code(x) for x in langs] if langs else polyrefuse_langs(folder)
    out: list[Example] = []
    for lang in chosen:
        for kind, label in (("harmful", HARMFUL), ("harmless", HARMLESS)):
            path = polyrefuse_file(folder, kind, split, lang)
            source = polyrefuse_file(folder, kind, split, "en")
            english = read_instructions(source) if lang != "en" and source.is_file() else None
            texts = read_instructions(path, lang, english)
            rows = list(range(len(texts)))
            if limit is not None and limit < len(rows):
                rows = sorted(random.Random(f"{seed}:{kind}").sample(rows, limit))
            aligned = kind == "harmful"
            out += [Example(texts[i], label, lang, f"{kind}-{split}:{i}" if aligned else None)
                    for i in rows]
    return out


# ------------------------------------------------------------------ parallel text
def _columns(path: Path, skip: tuple[str, ...], source: str) -> Parallel:
    cols, rows = read_language_columns(path, skip)
    return Parallel({code: [row[c] for row in rows] for c, code in cols}, source)


def load_multijail(path: str | os.PathLike[str] | None = None) -> Parallel:
    """MultiJail CSV: columns ``id,source,tags`` then one column per language (harmful)."""
    p = Path(path) if path and Path(path).is_file() else \
        data_folder("multijail", path) / "MultiJail_dev.csv"
    return _columns(p, MULTIJAIL_META, "multijail")


def load_ntrex(root: str | os.PathLike[str] | None = None) -> Parallel:
    """NTREX-128: ``newstest2019-src.eng.txt`` and ``newstest2019-ref.<code>.txt``,
    line-aligned. The English source is used for ``en`` (the ``eng-US`` reference is a
    second English version and is skipped)."""
    folder = Path(root) if root and list(Path(root).glob("newstest2019-*.txt")) else \
        data_folder("ntrex128", root)
    sentences: dict[str, list[str]] = {}
    files = sorted(folder.glob("newstest2019-*.txt"))
    if not files:
        raise DataError(f"{folder}: no newstest2019-*.txt files")
    for f in files:
        code = f.name[len("newstest2019-"):-len(".txt")].split(".", 1)[1]
        if code.lower().startswith("eng") and "src" not in f.name:
            continue
        lines = f.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for i, line in enumerate(lines):
            if not line.strip():
                raise DataError(f"{f}: row {i + 1} is empty")
        sentences[lang_code(code)] = lines
    lengths = {k: len(v) for k, v in sentences.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"{folder}: files are not line-aligned (line counts {lengths})")
    return Parallel(sentences, "ntrex")


def load_nusax(path: str | os.PathLike[str] | None = None, split: str = "test") -> Parallel:
    """NusaX-MT CSV: an index column then one column per language name."""
    p = Path(path) if path and Path(path).is_file() else \
        data_folder("nusax_mt", path) / f"{split}.csv"
    return _columns(p, (), "nusax")


def load_parallel(spec: str, data_dir: str | os.PathLike[str] | None = None) -> Parallel:
    """``ntrex``, ``nusax``, ``multijail`` or a path to a CSV with one column per language."""
    if spec == "ntrex":
        return load_ntrex(data_dir)
    if spec == "nusax":
        return load_nusax(data_dir)
    if spec == "multijail":
        return load_multijail(data_dir)
    p = Path(spec)
    if p.is_dir():
        return load_ntrex(p)
    header, _ = read_csv(p)
    if "id" in header and "tags" in header:
        return load_multijail(p)
    return load_nusax(p)


# ------------------------------------------------------------------ users' labelled files
_LABELS = {"1": HARMFUL, "harmful": HARMFUL, "true": HARMFUL, "unsafe": HARMFUL,
           "0": HARMLESS, "harmless": HARMLESS, "false": HARMLESS, "safe": HARMLESS}


def _label(value: object, where: str) -> int:
    key = str(value).strip().lower()
    if key not in _LABELS:
        raise DataError(f"{where}: label {value!r} is not one of 1/0/harmful/harmless")
    return _LABELS[key]


def _example(rec: dict, where: str) -> Example:
    for key in ("text", "label", "lang"):
        if key not in rec or rec[key] is None or str(rec[key]).strip() == "":
            raise DataError(f"{where}: missing field {key!r}")
    group = rec.get("group")
    return Example(str(rec["text"]), _label(rec["label"], where), lang_code(str(rec["lang"])),
                   str(group) if group not in (None, "") else None)


def load_labelled(path: str | os.PathLike[str]) -> list[Example]:
    """A user's labelled prompts: JSONL (one object a line) or CSV with columns
    ``text,label,lang`` (optional ``group``: rows that are translations of each other)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    if p.suffix.lower() in (".jsonl", ".json"):
        out = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}: row {n} is not valid JSON ({exc.msg})") from exc
            if not isinstance(rec, dict):
                raise DataError(f"{p}: row {n} is not a JSON object")
            out.append(_example(rec, f"{p}: row {n}"))
    else:
        _, rows = read_csv(p)
        out = [_example(r, f"{p}: row {n}") for n, r in enumerate(rows, start=2)]
    if not out:
        raise DataError(f"{p}: no rows")
    return out


def split_examples(examples: Iterable[Example], val_fraction: float = 0.2, seed: int = 0
                   ) -> tuple[list[Example], list[Example]]:
    """Seeded split per (language, label) so both parts cover every language."""
    buckets: dict[tuple[str, int], list[Example]] = {}
    for e in examples:
        buckets.setdefault((e.lang, e.label), []).append(e)
    train, val = [], []
    rng = random.Random(seed)
    for key in sorted(buckets):
        items = buckets[key][:]
        rng.shuffle(items)
        k = max(1, round(len(items) * val_fraction)) if len(items) > 1 else 0
        val += items[:k]
        train += items[k:]
    return train, val
