"""Reading the shared data files: one language-code set, CSV/JSON readers that name the
file and row of any defect, and the MultiJail table, for the fit's loaders and the eval's
benchmarks alike.

Language codes: ISO 639-1 where the language has one (``sw``, ``jv``, ``zh``), else ISO
639-3 (``ace``, ``ban``).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .errors import DataError

# NTREX three-letter codes (ISO 639-3 plus script/region tags) and NusaX column names.
_CODE_MAP: dict[str, str] = {
    "eng": "en", "eng-us": "en", "eng-gb": "en", "arb": "ar", "ara": "ar", "ben": "bn",
    "deu": "de", "fra": "fr", "hin": "hi", "ind": "id", "ita": "it", "jpn": "ja",
    "kor": "ko", "msa": "ms", "zsm": "ms", "nld": "nl", "pol": "pl", "rus": "ru",
    "spa": "es", "swa": "sw", "swh": "sw", "tha": "th", "vie": "vi", "yor": "yo",
    "zho": "zh", "zho-cn": "zh", "zho-hans": "zh", "cmn": "zh", "jav": "jv", "sun": "su",
    "por": "pt", "tur": "tr", "ukr": "uk", "ces": "cs", "tel": "te", "tam": "ta",
    "urd": "ur", "fas": "fa", "heb": "he", "ell": "el", "hun": "hu", "ron": "ro",
    "swe": "sv", "dan": "da", "fin": "fi", "nob": "nb", "bul": "bg", "cat": "ca",
    # NusaX column names
    "english": "en", "indonesian": "id", "javanese": "jv", "sundanese": "su",
    "acehnese": "ace", "balinese": "ban", "banjarese": "bjn", "buginese": "bug",
    "madurese": "mad", "minangkabau": "min", "ngaju": "nij", "toba_batak": "bbc",
}


# Codes that benchmarks use but ISO 639-1 does not have (XSafety writes ``sp`` for Spanish).
# None of them is an ISO 639-1 code (``kr`` is, Kanuri, so it is not mapped to Korean).
_ALIASES: dict[str, str] = {"sp": "es", "jp": "ja", "cn": "zh", "cz": "cs", "gr": "el",
                            "ua": "uk", "vn": "vi", "dk": "da"}
# Every ISO 639-1 code: a two-letter code outside it is a typo or an alias to add above.
_ISO639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv
cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr
ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw
ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv
ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr
ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi
yo za zh zu""".split())


def lang_code(code: str) -> str:
    """Normalise a language code or name to the project's code set (see module doc).
    Aliases (``sp`` -> ``es``) are mapped; an unknown code raises :class:`DataError`, as a
    silently kept typo would put a language's prompts under a label no other data shares."""
    key = code.strip().lower()
    if key not in _CODE_MAP:
        key = key.replace("_", "-")
    if key in _CODE_MAP:
        return _CODE_MAP[key]
    base = key.split("-")[0]
    base = _ALIASES.get(base, base)
    if base in _ISO639_1 or base in _CODE_MAP.values():
        return base
    if len(base) == 3 and base.isalpha():
        return _CODE_MAP.get(base, base)  # ISO 639-3
    raise DataError(f"unknown language code {code!r}: use an ISO 639-1 code (en, es, zh), "
                    "an ISO 639-3 code (ace) or a known alias "
                    f"({', '.join(f'{a}={c}' for a, c in sorted(_ALIASES.items()))})")


# the data folder beside a source checkout (the repository's ../shared/data)
CHECKOUT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _roots(path: str | os.PathLike[str] | None) -> tuple[list[Path], bool]:
    """Where data is looked for, and whether that place was given explicitly."""
    if path:
        return [Path(path)], True
    if os.environ.get("LASA_DATA"):
        return [Path(os.environ["LASA_DATA"])], True
    from .datasets.manifest import cache_data_dir

    return [cache_data_dir(), Path.cwd() / ".." / "shared" / "data", CHECKOUT_DATA], False


def default_data_dir(path: str | os.PathLike[str] | None = None, required: bool = True
                     ) -> Path | None:
    """The data folder: ``path``, else ``$LASA_DATA``, else ``$LASA_CACHE/data`` (what
    ``lasa data fetch`` fills), else ``../shared/data`` relative to the working directory
    or to the repository (a source checkout)."""
    candidates, _ = _roots(path)
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    if required:
        raise DataError(f"data folder not found (tried {[str(c) for c in candidates]}); "
                        "fetch the fit data with `lasa data fetch` (see `lasa data list`), "
                        "pass a path or set LASA_DATA")
    return None


def data_folder(name: str, path: str | os.PathLike[str] | None = None) -> Path:
    """The folder of data set ``name`` (``polyrefuse``, ``ntrex128``, ... as in ``lasa data
    list``; or a plain folder name such as ``multijail``) in the first data root that holds
    it: ``path`` or ``$LASA_DATA`` when given, else ``$LASA_CACHE/data`` (where all of
    its files must be: a fetch cut short does not count) and ``../shared/data``. Raise
    :class:`DataError` naming the command that fetches it when none does."""
    from .datasets.manifest import cache_data_dir, dataset

    ds = dataset(name)
    sub = ds.dir if ds else name
    candidates, explicit = _roots(path)
    for root in candidates:
        folder = root / sub
        if folder.is_dir() and (explicit or ds is None or all(
                ds.destination(root, f).is_file() for f in ds.files)):
            return folder.resolve()
    tried = ", ".join(str(c / sub) for c in candidates)
    if ds is None:
        raise DataError(f"data set {name!r} not found (tried {tried}); it is not in `lasa "
                        "data list`: pass its folder or set LASA_DATA")
    hint = "" if explicit else ", or pass --data-dir / set LASA_DATA to a folder " \
        f"holding {sub}/"
    raise DataError(f"{ds.missing_message(cache_data_dir())} (tried {tried}){hint}")


def read_json(path: Path) -> object:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise DataError(f"{path}: empty file (no header row)")
            rows = []
            for n, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}: row {n} has {len(row)} fields, the header has "
                                    f"{len(header)}")
                rows.append(dict(zip(header, row)))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable CSV ({exc})") from exc
    return header, rows


def read_instructions(path: Path, lang: str | None = None,
                      english: list[str] | None = None) -> list[str]:
    """The prompts of a PolyRefuse-style JSON list of ``{"instruction": ...}`` objects.

    Test-split files keep the English source in ``instruction`` and the translation in
    ``instruction_translated`` (train/val files put the translation in ``instruction``), so
    the translation is taken when present. For a ``lang`` other than English the texts are
    compared with their source (the row's ``instruction``, else ``english``, the English
    file's rows): see :func:`check_translated`."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {{\"instruction\": ...}} objects")
    out, sources = [], []
    for i, item in enumerate(data):
        key = "instruction_translated" if isinstance(item, dict) and \
            "instruction_translated" in item else "instruction"
        text = item.get(key) if isinstance(item, dict) else item
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}: row {i} (0-based list index) has no non-empty "
                            f"{key!r} string")
        out.append(text)
        if key == "instruction_translated" and isinstance(item.get("instruction"), str):
            sources.append(item["instruction"])
    if lang is not None and lang != "en":
        source = sources if len(sources) == len(out) else english
        if source is not None and len(source) == len(out):
            check_translated(out, source, path)
    return out


def check_translated(texts: list[str], english: list[str], path: Path) -> None:
    """Refuse a "translated" file whose texts are mostly its English source (the wrong
    field read, or an untranslated copy): evaluated as another language it would silently
    score English text."""
    same = sum(a.strip() == b.strip() for a, b in zip(texts, english))
    if texts and 2 * same > len(texts):
        raise DataError(f"{path}: {same} of {len(texts)} texts are identical to their English "
                        "source; this is not a translation (for test-split files the "
                        "translation is 'instruction_translated')")


MULTIJAIL_META = ("id", "source", "tags")  # MultiJail's columns before the languages


def read_language_columns(path: Path, skip: tuple[str, ...] = ()
                          ) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """A CSV with one column per language (MultiJail, NusaX; unnamed and ``skip`` columns
    are not languages). Returns the ``(column, language code)`` pairs and the rows; an
    empty cell raises :class:`DataError` naming the file, row and column."""
    header, rows = read_csv(path)
    cols = [(c, lang_code(c)) for c in header if c.strip() and c not in skip]
    if not cols:
        raise DataError(f"{path}: no language columns in header {header}")
    for n, row in enumerate(rows, start=2):
        for c, _ in cols:
            if not row[c].strip():
                raise DataError(f"{path}: row {n} column {c!r} is empty")
    return cols, rows
