"""Benchmark readers for ``lasa eval``: one list of :class:`BenchItem` per ``--bench`` spec.

Benchmarks and what their prompts count as:

* ``multijail``: harmful prompts, one CSV column per language after ``id,source,tags``
  (MultiJail format).
* ``xstest``: XSTest prompts CSV (``id,prompt,type,label,...``), English; ``label=safe``
  prompts are harmless (over-refusal), ``label=unsafe`` contrasts are harmful.
* ``polyrefuse-harmless``: PolyRefuse harmless instructions (JSON list of
  ``{"instruction": ...}``; test-split files: ``instruction_translated``), a folder of
  ``harmless_<split>_translated_<lang>.json`` (+ ``en/harmless_<split>.json``; ``val``, else
  the one split present) or one such file.
* ``mgsm``: MGSM maths questions (``question<TAB>answer`` TSV), a folder of
  ``mgsm_<lang>.tsv`` or one such file; harmless, with a gold answer for utility.

A malformed file raises :class:`~lasa_steer.errors.DataError` naming the file and the row.
Files are read with :mod:`lasa_steer.datafiles`, as the fit's loaders read theirs.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..datafiles import MULTIJAIL_META, lang_code, read_instructions, read_language_columns
from ..errors import DataError
from ..types import HARMFUL_KIND, HARMLESS_KIND, Kind
BENCHES = ("multijail", "xstest", "polyrefuse-harmless", "mgsm")
DEFAULT_PATHS = {
    "multijail": "multijail/MultiJail_dev.csv",
    "xstest": "xstest/xstest_prompts.csv",
    "polyrefuse-harmless": "polyrefuse",
    "mgsm": "mgsm",
}


@dataclass(frozen=True)
class BenchItem:
    """One evaluation prompt. ``kind``: harmful or harmless; ``answer``: MGSM gold number."""

    bench: str
    lang: str
    kind: Kind
    id: str
    prompt: str
    answer: str | None = None


def parse_spec(spec: str, data_dir: Path) -> tuple[str, Path]:
    """``name`` or ``name:PATH`` -> (name, path); without a path, the shared-data default."""
    name, _, path = spec.partition(":")
    name = name.strip().lower()
    if name not in BENCHES:
        raise DataError(f"--bench {spec!r}: unknown benchmark {name!r}; use one of {BENCHES}")
    return name, Path(path).expanduser() if path else data_dir / DEFAULT_PATHS[name]


def read_multijail(path: Path) -> list[BenchItem]:
    if not path.is_file():
        raise DataError(f"{path}: no such MultiJail CSV file")
    cols, rows = read_language_columns(path, MULTIJAIL_META)
    return [BenchItem("multijail", lang, HARMFUL_KIND, row["id"] if "id" in row else str(n), row[c])
            for n, row in enumerate(rows) for c, lang in cols]


def read_xstest(path: Path) -> list[BenchItem]:
    if not path.is_file():
        raise DataError(f"{path}: no such XSTest prompts CSV file")
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"prompt", "label"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: row 1 (header) lacks column(s) {sorted(missing)}")
        items = []
        for n, rec in enumerate(reader, start=2):
            label = (rec.get("label") or "").strip()
            prompt = rec.get("prompt")
            if label not in ("safe", "unsafe") or not prompt or not prompt.strip():
                raise DataError(f"{path}: row {n}: needs a non-empty 'prompt' and label "
                                f"'safe' or 'unsafe' (got label {label!r})")
            kind = HARMLESS_KIND if label == "safe" else HARMFUL_KIND
            items.append(BenchItem("xstest", "en", kind, rec.get("id") or str(n - 2), prompt))
    return items


def _lang_from_name(path: Path, pattern: str) -> str:
    m = re.fullmatch(pattern, path.name)
    if not m:
        raise DataError(f"{path}: cannot tell the language from the file name "
                        f"(expected a name matching {pattern})")
    return lang_code(m.group(1))


_POLYREFUSE_NAME = re.compile(r"harmless_(\w+?)_translated_([\w-]+)\.json")


def _polyrefuse_split(folder: Path, split: str) -> str:
    """``split`` if the folder has its files, else the one split it has files of (published
    PolyRefuse test files are ``harmless_test_translated_<lang>.json``)."""
    found = {m.group(1) for p in folder.glob("harmless_*_translated_*.json")
             if (m := _POLYREFUSE_NAME.fullmatch(p.name))}
    if split in found or (folder / "en" / f"harmless_{split}.json").is_file():
        return split
    if len(found) == 1:
        return found.pop()
    raise DataError(f"{folder}: no harmless_{split}_translated_<lang>.json files"
                    + (f" (splits present: {sorted(found)}; name one in the path)"
                       if found else ""))


def read_polyrefuse_harmless(path: Path, split: str = "val") -> list[BenchItem]:
    if path.is_file():
        m = _POLYREFUSE_NAME.fullmatch(path.name)
        split = m.group(1) if m else path.stem.rpartition("_")[2]
        lang = "en" if path.parent.name == "en" else \
            _lang_from_name(path, r"harmless_\w+?_translated_([\w-]+)\.json")
        files = [(lang, path)]
        english_path = path.parent / "en" / f"harmless_{split}.json"
    elif path.is_dir():
        split = _polyrefuse_split(path, split)
        files = [(lang_code(m.group(2)), p)
                 for p in sorted(path.glob(f"harmless_{split}_translated_*.json"))
                 if (m := _POLYREFUSE_NAME.fullmatch(p.name))]
        english_path = path / "en" / f"harmless_{split}.json"
        if english_path.is_file():
            files.insert(0, ("en", english_path))
    else:
        raise DataError(f"{path}: no such PolyRefuse file or folder")
    english = read_instructions(english_path) if english_path.is_file() else None
    return [BenchItem("polyrefuse-harmless", lang, HARMLESS_KIND, str(i), text)
            for lang, p in files
            for i, text in enumerate(read_instructions(p, lang, english))]


def _read_mgsm_file(path: Path, lang: str) -> list[BenchItem]:
    items = []
    with path.open(encoding="utf-8", newline="") as fh:
        for n, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0].strip() or not _NUMBER.fullmatch(
                    parts[1].strip().replace(",", "")):
                raise DataError(f"{path}: row {n}: expected 'question<TAB>number', got "
                                f"{len(parts)} field(s): {line[:80]!r}")
            items.append(BenchItem("mgsm", lang, HARMLESS_KIND, str(n - 1), parts[0],
                                   parts[1].strip().replace(",", "")))
    return items


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def read_mgsm(path: Path) -> list[BenchItem]:
    if path.is_file():
        return _read_mgsm_file(path, _lang_from_name(path, r"mgsm_([\w-]+)\.tsv"))
    if not path.is_dir():
        raise DataError(f"{path}: no such MGSM file or folder")
    files = sorted(path.glob("mgsm_*.tsv"))
    if not files:
        raise DataError(f"{path}: no mgsm_<lang>.tsv files")
    out: list[BenchItem] = []
    for p in sorted(files, key=lambda p: (p.name != "mgsm_en.tsv", p.name)):
        out += _read_mgsm_file(p, _lang_from_name(p, r"mgsm_([\w-]+)\.tsv"))
    return out


READERS = {"multijail": read_multijail, "xstest": read_xstest,
           "polyrefuse-harmless": read_polyrefuse_harmless, "mgsm": read_mgsm}


def select(items: list[BenchItem], languages: Sequence[str] | None, limit: int | None,
           seed: int = 0) -> list[BenchItem]:
    """Keep ``languages`` and, per (bench, language), a seeded sample of ``limit`` items.
    The sample is drawn by row position, so row-parallel benchmarks keep the same rows in
    every language."""
    keep = {lang_code(x) for x in languages} if languages else None
    groups: dict[tuple[str, str], list[BenchItem]] = {}
    for it in items:
        if keep is None or it.lang in keep:
            groups.setdefault((it.bench, it.lang), []).append(it)
    out: list[BenchItem] = []
    for (bench, _), group in groups.items():
        rows = list(range(len(group)))
        if limit is not None and limit < len(rows):
            rows = sorted(random.Random(f"{seed}:{bench}:{len(group)}").sample(rows, limit))
        out += [group[i] for i in rows]
    return out


def load_benches(specs: Sequence[str], data_dir: Path, languages: Sequence[str] | None = None,
                 limit: int | None = None, seed: int = 0) -> list[BenchItem]:
    """Read every ``--bench`` spec and apply the language filter and per-language limit."""
    items: list[BenchItem] = []
    for spec in specs:
        name, path = parse_spec(spec, data_dir)
        items += READERS[name](path)
    chosen = select(items, languages, limit, seed)
    if not chosen:
        have = sorted({it.lang for it in items})
        raise DataError(f"--languages {' '.join(languages or [])}: no prompt of --bench "
                        f"{' '.join(specs)} is in these languages; they have {have}")
    return chosen


def mgsm_correct(completion: str, answer: str | None) -> bool | None:
    """Whether the last number in ``completion`` equals the gold ``answer`` (None: no gold)."""
    if answer is None:
        return None
    numbers = _NUMBER.findall(completion.replace(",", ""))
    if not numbers:
        return False
    try:
        return abs(float(numbers[-1]) - float(answer)) < 1e-6
    except ValueError:
        return False
