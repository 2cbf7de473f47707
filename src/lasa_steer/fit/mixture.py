"""The gate's training data as a *mixture* of sources, each with a role and a weight.

Why: a gate trained on one kind of harmful prompt (AdvBench-style instructions) against one
kind of harmless prompt (Alpaca) learns harm-flavoured words, not harm: it fired on a quarter
of safe look-alikes ("How do I kill a Python process?") and missed most real, conversational
harmful questions. A mixture names several sources, each row with a **role**:

* ``harmful``: the gate must fire;
* ``harmless``: ordinary prompts (it must stay quiet: the ordinary false-positive rate);
* ``lookalike``: safe prompts that share harmful prompts' words or topics (the over-refusal
  that hurts users most; thresholds are calibrated on these, :mod:`.operating_points`).

Every row also gets a **part** -- ``train``, ``calibration`` (choosing and calibrating the
gate) or ``test`` (never read by a fit: the held-out figures) -- from a hash of its source
and *group*, so a seed question and its translations or paraphrases never straddle two parts,
and the same row lands in the same part in every fit and benchmark.

Training weights (:meth:`Mixture.weights`) balance by source and language: within a role,
each source weighs its ``weight``, shared equally by its languages and then by its rows; the
harmful side and the two harmless roles (``lookalike_share`` of it for look-alikes) each sum
to one half. So no one source or language dominates, however many rows it brings.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence, get_args

import torch

from ..datafiles import data_folder, lang_code, read_instructions
from ..errors import DataError, FitConfigError
from ..types import HARMFUL, HARMLESS
from .contrast import CONTRAST_FILE, conv_seed_group
from .data import Example, load_labelled, load_polyrefuse

Role = Literal["harmful", "harmless", "lookalike"]
Part = Literal["train", "calibration", "test"]
ROLES: tuple[str, ...] = get_args(Role)
PARTS: tuple[str, ...] = get_args(Part)
# The share of each row's group hash that goes to each part (train, calibration, test).
PART_SHARES: tuple[float, float, float] = (0.6, 0.2, 0.2)

BUILTIN: dict[str, str] = {
    "polyrefuse": "PolyRefuse instructions, 14 languages (harmful / harmless)",
    "refusal_direction": "refusal_direction's Alpaca pool: harmless prompts mined for "
                         "harmful vocabulary (look-alikes)",
    "safety_mix": "conversational harmful questions (en, ko, zh, ar) and safe look-alikes "
                  "(en, zh, ar)",
    "contrast": "the project's own contrast prompts: look-alikes and minimally different "
                "harmful requests, many languages (src/lasa_steer/fit/contrast_data)",
    "alpaca": "refusal_direction's Alpaca pool, a seeded random sample: ordinary English "
              "instructions (harmless)",
    "mgsm": "MGSM grade-school maths questions, 11 languages, row-parallel: ordinary "
            "*questions* (harmless; without them a gate trained on conversational harmful "
            "questions fires on questions as such)",
}
DEFAULT_MIXTURE: tuple[str, ...] = ("polyrefuse", "refusal_direction", "alpaca", "safety_mix",
                                    "contrast", "mgsm")


@dataclass(frozen=True)
class MixRow:
    """One prompt of a mixture."""

    text: str
    lang: str
    role: Role
    source: str
    group: str
    part: Part

    @property
    def label(self) -> int:
        return HARMFUL if self.role == "harmful" else HARMLESS

    def example(self) -> Example:
        return Example(self.text, self.label, self.lang, self.group)


@dataclass(frozen=True)
class SourceSpec:
    """One source of a mixture: a built-in name or a user's labelled file (JSONL/CSV with
    ``text,label,lang``, optional ``group``; see :func:`lasa_steer.fit.data.load_labelled`)
    whose harmless rows take ``harmless_role``; ``weight`` (see the module docstring) and
    ``limit``, the most rows kept per (language, role), a seeded sample by group."""

    name: str
    weight: float = 1.0
    harmless_role: Role | None = None  # None: the source's own (look-alikes for safety_mix)
    limit: int | None = None

    @classmethod
    def parse(cls, spec: str) -> "SourceSpec":
        """``NAME[:ROLE][*WEIGHT][@LIMIT]``, e.g. ``safety_mix``, ``contrast*2`` or
        ``mine.jsonl:lookalike*0.5@400`` (ROLE: the role of the file's harmless rows)."""
        rest, limit = (spec.rsplit("@", 1) + [""])[:2] if "@" in spec else (spec, "")
        rest, weight = (rest.rsplit("*", 1) + [""])[:2] if "*" in rest else (rest, "")
        name, role = rest, ""
        if ":" in rest and rest.rsplit(":", 1)[1] in ROLES:
            name, role = rest.rsplit(":", 1)
        try:
            return cls(name, float(weight) if weight else 1.0,
                       role or None, int(limit) if limit else None)  # type: ignore[arg-type]
        except ValueError as exc:
            raise FitConfigError(f"mixture source {spec!r}: expected NAME[:ROLE][*WEIGHT]"
                                 f"[@LIMIT] ({exc})") from exc

    def __post_init__(self) -> None:
        if self.harmless_role is None:
            object.__setattr__(self, "harmless_role", _default_harmless_role(self.name))
        if self.harmless_role not in ("harmless", "lookalike"):
            raise FitConfigError(f"mixture source {self.name!r}: the role of harmless rows "
                                 f"is 'harmless' or 'lookalike', not {self.harmless_role!r}")
        if not self.weight > 0:
            raise FitConfigError(f"mixture source {self.name!r}: weight must be > 0")
        if self.limit is not None and self.limit < 1:
            raise FitConfigError(f"mixture source {self.name!r}: limit must be >= 1")


def _default_harmless_role(name: str) -> Role:
    return "lookalike" if name in ("refusal_direction", "safety_mix", "contrast") else "harmless"


# Per-source defaults of the shipped recipe: row limits (per language and role) that keep a
# fit within minutes, and weights (the contrast prompts are the only look-alikes in most
# languages, and minimal pairs: they count double).
DEFAULT_LIMITS: dict[str, int] = {"polyrefuse": 150, "refusal_direction": 300, "alpaca": 300,
                                  "safety_mix": 800, "contrast": 400, "mgsm": 40}
DEFAULT_WEIGHTS: dict[str, float] = {"contrast": 2.0}


def default_specs() -> list[SourceSpec]:
    return [SourceSpec(n, weight=DEFAULT_WEIGHTS.get(n, 1.0), limit=DEFAULT_LIMITS[n])
            for n in DEFAULT_MIXTURE]


def part_of(source: str, group: str, shares: Sequence[float] = PART_SHARES) -> Part:
    """The part of a row: a stable function of its source and group (sha256, no seed), so
    every fit and benchmark holds out the same rows."""
    h = int.from_bytes(hashlib.sha256(f"{source}\x00{group}".encode()).digest()[:8], "big")
    u = h / 2 ** 64
    edge = 0.0
    for part, share in zip(PARTS, shares):
        edge += share
        if u < edge:
            return part  # type: ignore[return-value]
    return "test"


@dataclass
class Mixture:
    """Rows of several sources (module docstring). ``dropped``: exact duplicate texts seen
    in an earlier source (the first source keeps them)."""

    rows: list[MixRow]
    specs: list[SourceSpec]
    lookalike_share: float = 0.5
    dropped: int = 0
    notes: dict[str, str] = field(default_factory=dict)

    def part(self, *parts: str) -> list[MixRow]:
        return [r for r in self.rows if r.part in parts]

    def weights(self, rows: Sequence[MixRow]) -> torch.Tensor:
        """Loss weights for ``rows`` (module docstring); they sum to ``len(rows)``."""
        spec = {s.name: s for s in self.specs}
        cells = Counter((r.role, r.source, r.lang) for r in rows)
        langs: dict[tuple[str, str], set[str]] = {}
        for role, src, lang in cells:
            langs.setdefault((role, src), set()).add(lang)
        role_total: Counter[str] = Counter()
        for role, src in langs:
            role_total[role] += spec[src].weight if src in spec else 1.0
        share = {"harmful": 0.5,
                 "lookalike": 0.5 * (self.lookalike_share if role_total["harmless"] else 1.0),
                 "harmless": 0.5 * ((1 - self.lookalike_share) if role_total["lookalike"]
                                    else 1.0)}
        w = []
        for r in rows:
            sw = spec[r.source].weight if r.source in spec else 1.0
            w.append(share[r.role] * sw / role_total[r.role]
                     / len(langs[(r.role, r.source)]) / cells[(r.role, r.source, r.lang)])
        t = torch.tensor(w, dtype=torch.float64)
        return (t * (len(rows) / t.sum())).float()

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{source: {part: {role/lang: rows}}}``."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for r in self.rows:
            cell = out.setdefault(r.source, {}).setdefault(r.part, {})
            key = f"{r.role}/{r.lang}"
            cell[key] = cell.get(key, 0) + 1
        return {s: {p: dict(sorted(c.items())) for p, c in parts.items()}
                for s, parts in out.items()}

    def provenance(self) -> dict[str, Any]:
        """What the vector file records of its gate's data."""
        return {"sources": [{"name": s.name, "weight": s.weight,
                             "harmless_role": s.harmless_role, "limit": s.limit,
                             "what": BUILTIN.get(s.name, "user file")} for s in self.specs],
                "part_shares": dict(zip(PARTS, PART_SHARES)),
                "lookalike_share": self.lookalike_share,
                "duplicates_dropped": self.dropped,
                "rows": {p: Counter(r.role for r in self.rows if r.part == p)
                         for p in PARTS},
                "notes": dict(self.notes)}


def load_mixture(specs: Sequence[SourceSpec] | None = None,
                 data_dir: str | Path | None = None, seed: int = 0,
                 lookalike_share: float = 0.5) -> Mixture:
    """Load every source of ``specs`` (default: :func:`default_specs`)."""
    specs = list(specs) if specs is not None else default_specs()
    if not specs:
        raise FitConfigError("mixture: no sources")
    if not 0.0 <= lookalike_share <= 1.0:
        raise FitConfigError(f"lookalike_share={lookalike_share}: must be in [0, 1]")
    seen: set[str] = set()
    rows: list[MixRow] = []
    dropped = 0
    notes: dict[str, str] = {}
    for spec in specs:
        got = _limit(_load(spec, data_dir), spec.limit, seed)
        if not got:
            raise DataError(f"mixture source {spec.name!r}: no rows")
        for r in got:
            key = " ".join(r.text.split()).lower()
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            rows.append(r)
    return Mixture(rows, specs, lookalike_share, dropped, notes)


def _limit(rows: list[MixRow], limit: int | None, seed: int) -> list[MixRow]:
    """At most ``limit`` rows per (language, role): whole groups, in a seeded order."""
    if limit is None:
        return rows
    cells: dict[tuple[str, str], list[MixRow]] = {}
    for r in rows:
        cells.setdefault((r.lang, r.role), []).append(r)
    keep: list[MixRow] = []
    for key in sorted(cells):
        items = cells[key]
        groups = sorted({r.group for r in items})
        random.Random(f"{seed}:{key}").shuffle(groups)
        rank = {g: i for i, g in enumerate(groups)}
        keep += sorted(items, key=lambda r: rank[r.group])[:limit]
    return keep


def _row(text: str, lang: str, role: Role, source: str, group: str) -> MixRow:
    return MixRow(text, lang, role, source, group, part_of(source, group))


def _load(spec: SourceSpec, data_dir: str | Path | None) -> list[MixRow]:
    name = spec.name
    if name == "polyrefuse":
        return _polyrefuse(data_dir, spec)
    if name == "refusal_direction":
        return _refusal_direction(data_dir, spec)
    if name == "safety_mix":
        return _safety_mix(data_dir, spec)
    if name == "contrast":
        return _contrast(spec)
    if name == "alpaca":
        return _alpaca(data_dir, spec)
    if name == "mgsm":
        return _mgsm(data_dir, spec)
    path = Path(name)
    if not path.is_file():
        raise DataError(f"mixture source {name!r}: not a built-in source "
                        f"({', '.join(BUILTIN)}) and no such file")
    return _jsonl_rows(path, path.stem, spec)


def _polyrefuse(data_dir: str | Path | None, spec: SourceSpec) -> list[MixRow]:
    out = []
    for split in ("train", "val"):
        for e in load_polyrefuse(data_dir, split):
            role: Role = "harmful" if e.label == HARMFUL else spec.harmless_role
            # harmful rows are aligned across languages (group); harmless ones mostly with
            # English by index, which the split files do not record: text keys them
            group = e.group or f"{split}:{e.lang}:{e.text}"
            out.append(_row(e.text, e.lang, role, "polyrefuse", group))
    return out


def _refusal_direction(data_dir: str | Path | None, spec: SourceSpec) -> list[MixRow]:
    """Harmless Alpaca prompts with the harmful prompts' vocabulary (train splits only:
    the harmful side is PolyRefuse's English)."""
    from .hard_negatives import hard_negatives
    root = data_folder("refusal_direction", data_dir)
    harmful = read_instructions(root / "harmful_train.json")
    harmless = read_instructions(root / "harmless_train.json")
    picked = hard_negatives(harmful, harmless, spec.limit or 400)
    return [_row(t, "en", spec.harmless_role, "refusal_direction", t) for t in picked]


def _alpaca(data_dir: str | Path | None, spec: SourceSpec) -> list[MixRow]:
    """A seeded random sample (``limit``, default 400) of the Alpaca pool's train split."""
    root = data_folder("refusal_direction", data_dir)
    pool = sorted(set(read_instructions(root / "harmless_train.json")))
    picked = random.Random("alpaca").sample(pool, min(len(pool), spec.limit or 400))
    return [_row(t, "en", spec.harmless_role, "alpaca", t) for t in picked]


def _mgsm(data_dir: str | Path | None, spec: SourceSpec) -> list[MixRow]:
    """MGSM questions; a question and its translations share a group (its line number)."""
    root = data_folder("mgsm", data_dir)
    files = sorted(root.glob("mgsm_*.tsv"))
    if not files:
        raise DataError(f"{root}: no mgsm_*.tsv files")
    out = []
    for f in files:
        lang = lang_code(f.stem.removeprefix("mgsm_"))
        for i, line in enumerate(f.read_text(encoding="utf-8").splitlines()):
            text = line.split("\t", 1)[0].strip()
            if text:
                out.append(_row(text, lang, spec.harmless_role, "mgsm", f"mg{i}"))
    return out


def _safety_mix(data_dir: str | Path | None, spec: SourceSpec) -> list[MixRow]:
    root = data_folder("safety_mix", data_dir)  # names how to get it when missing
    out = []
    for fname in ("harmful_train.jsonl", "harmless_train.jsonl"):
        path = root / fname
        if not path.is_file():
            raise DataError(f"{path}: missing (safety_mix is part of the default mixture; "
                            "see `lasa data list safety_mix`, or leave it out with --mixture)")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            rec = json.loads(line)
            role: Role = "harmful" if rec["label"] == "harmful" else spec.harmless_role
            ds = str(rec.get("dataset", ""))
            if ds.endswith("hh-rlhf-harmless-test") and "row" in rec:
                group = f"hh:{rec['row']}"  # en and ko rows are translations
            elif rec.get("group"):
                group = f"{ds}:{rec['group']}"
            else:
                group = f"{ds}:{rec.get('id', rec.get('row', n))}"
            out.append(_row(rec["text"], lang_code(rec["lang"]), role, "safety_mix", group))
    return out


def _contrast(spec: SourceSpec) -> list[MixRow]:
    """The contrast rows; a conversational translation of a safety_mix seed takes its seed's
    part, so a seed and its translations never straddle two parts."""
    out = []
    for r in _jsonl_rows(CONTRAST_FILE, "contrast", spec):
        seed = conv_seed_group(r.group)
        out.append(r if seed is None else replace(r, part=part_of("safety_mix", seed)))
    return out


def _jsonl_rows(path: Path, source: str, spec: SourceSpec) -> list[MixRow]:
    if not path.is_file():
        raise DataError(f"mixture source {spec.name!r}: {path} not found")
    out = []
    for e in load_labelled(path):
        role: Role = "harmful" if e.label == HARMFUL else spec.harmless_role
        out.append(_row(e.text, e.lang, role, source, e.group or f"{e.lang}:{e.text}"))
    return out


def mixture_summary(m: Mixture) -> str:
    """One line per source: rows per part and role."""
    lines = []
    for src, parts in m.counts().items():
        cells = []
        for part in PARTS:
            c = Counter()
            for key, n in parts.get(part, {}).items():
                c[key.split("/")[0]] += n
            cells.append(f"{part} " + "/".join(f"{c.get(r, 0)}" for r in ROLES))
        lines.append(f"{src}: " + ", ".join(cells) + " (harmful/harmless/lookalike)")
    return "\n".join(lines)
