"""The shape of a vector file's ``lasa`` metadata, checked before any field is read.

The metadata is JSON that any tool may have written: a list where an object belongs, or a
string where a number does, would otherwise surface as a bare ``AttributeError`` or
``TypeError`` deep in the loader. :func:`check_metadata` raises
:class:`~lasa_steer.errors.VectorFileError` naming the field's path instead. Unknown keys
are allowed (newer writers may add some); values are checked, not converted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

from ..errors import VectorFileError

Check = Union["Obj", "MapOf", "ListOf", "Scalar"]


@dataclass(frozen=True)
class Scalar:
    """A JSON scalar: ``test`` decides, ``name`` is what the error says was expected."""

    name: str
    test: Callable[[Any], bool]


@dataclass(frozen=True)
class ListOf:
    item: Check


@dataclass(frozen=True)
class MapOf:
    """An object with arbitrary keys, all values of one shape."""

    value: Check


@dataclass(frozen=True)
class Obj:
    """An object with known keys; ``required`` must be present."""

    fields: dict[str, Check]
    required: frozenset[str] = field(default_factory=frozenset)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


STR = Scalar("a string", lambda v: isinstance(v, str))
INT = Scalar("an integer", _is_int)
NUM = Scalar("a number", lambda v: _is_int(v) or isinstance(v, float))
ANY = Scalar("any value", lambda v: True)
VERSION = Scalar("an integer or a string", lambda v: _is_int(v) or isinstance(v, str))


def nullable(check: Scalar) -> Scalar:
    return Scalar(f"{check.name} or null", lambda v: v is None or check.test(v))


MODEL = Obj({"name": STR, "architecture": STR, "hidden_size": INT, "num_layers": INT,
             "config_fingerprint": STR, "weight_stats": ListOf(NUM)},
            frozenset({"name", "architecture", "hidden_size", "num_layers"}))
GATE = Obj({"layer": INT, "threshold": NUM, "site": STR, "pooling": STR,
            "languages": ListOf(STR), "thresholds": MapOf(NUM), "fpr": nullable(NUM),
            "lid_layer": nullable(INT), "probe": Obj({"hidden": INT, "activation": STR}),
            "operating_points": MapOf(Obj({"threshold": NUM, "thresholds": MapOf(NUM),
                                           "targets": MapOf(NUM), "rule": STR,
                                           "measured": MapOf(ANY)},
                                          frozenset({"threshold"}))),
            "operating_point": nullable(STR), "probability_scale": nullable(NUM)},
           frozenset({"layer", "threshold", "site"}))
METADATA = Obj({"format_version": VERSION, "model": MODEL, "gate": GATE, "site": STR,
                "directions": MapOf(ListOf(INT)), "default_direction": STR,
                "default_action": STR, "default_strength": NUM,
                "clamp_targets": MapOf(MapOf(NUM)), "provenance": MapOf(ANY),
                "extra": MapOf(ANY)},
               frozenset({"model", "site", "directions"}))
NULLABLE_KEYS = {"gate"}  # ``"gate": null`` (or ``{}``) is a vector without a gate


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(v), "a number")


def _expected(check: Check) -> str:
    if isinstance(check, Scalar):
        return check.name
    return "a list" if isinstance(check, ListOf) else "an object"


def _walk(value: Any, check: Check, path: str) -> str | None:
    """The first defect below ``path`` as a message, or None."""
    if isinstance(check, Scalar):
        ok = check.test(value)
    else:
        ok = isinstance(value, list if isinstance(check, ListOf) else dict)
    if not ok:
        return f"{path} must be {_expected(check)}, not {_kind(value)}"
    if isinstance(check, ListOf):
        children = [(f"{path}[{i}]", v, check.item) for i, v in enumerate(value)]
    elif isinstance(check, MapOf):
        children = [(f"{path}.{k}", v, check.value) for k, v in value.items()]
    elif isinstance(check, Obj):
        missing = sorted(check.required - set(value))
        if missing:
            return f"{path} lacks the field {missing[0]!r}"
        children = [(f"{path}.{k}", value[k], c) for k, c in check.fields.items()
                    if k in value and not (k in NULLABLE_KEYS and value[k] in (None, {}))]
    else:
        children = []
    for child_path, child, child_check in children:
        problem = _walk(child, child_check, child_path)
        if problem:
            return problem
    return None


def check_metadata(meta: Any, source: str) -> dict[str, Any]:
    """``meta`` unchanged if it has the shape of lasa metadata, else a
    :class:`VectorFileError` that names ``source`` and the faulty field."""
    problem = _walk(meta, METADATA, "lasa")
    if problem:
        raise VectorFileError(f"{source}: malformed metadata: {problem}")
    return meta
