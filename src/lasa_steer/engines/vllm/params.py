"""A request's steering settings in vLLM: ``SamplingParams.extra_args`` (``vllm_xargs`` in
the OpenAI server's ``extra_body``), resolved against the install's defaults.

The keys mirror the ``steering`` field of ``lasa serve``, flattened because ``vllm_xargs``
holds only scalars: ``lasa_vector``, ``lasa_mode``, ``lasa_action``, ``lasa_strength``,
``lasa_direction``, ``lasa_operating_point``. Without any of them a request gets the defaults given at install
(``mode='off'`` unless a default vector and mode were given).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Collection, Mapping

from ...errors import SteeringConfigError
from ...steering.rows import RequestDefaults, RowSteering, check_choice
from ...steering.openers import Openers
from ...types import ACTIONS, MODES
from ...vector.file import SteeringVector

PREFIX = "lasa_"
KEYS = ("vector", "mode", "action", "strength", "direction", "operating_point")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# What a request that names no setting gets (the install's ``default_*`` arguments), with
# the rule ``lasa serve`` uses for its ``steering`` field.
Defaults = RequestDefaults


@dataclass(frozen=True)
class RequestSettings:
    """The ``lasa_*`` keys of one request (None: not given)."""

    vector: str | None = None
    mode: str | None = None
    action: str | None = None
    strength: float | None = None
    direction: str | None = None
    operating_point: str | None = None


def xargs(vector: str | None = None, mode: str | None = None, action: str | None = None,
          strength: float | None = None, direction: str | None = None,
          operating_point: str | None = None) -> dict[str, Any]:
    """``SamplingParams(extra_args=xargs(...))`` / ``extra_body={"vllm_xargs": xargs(...)}``."""
    given = dict(vector=vector, mode=mode, action=action, strength=strength,
                 direction=direction, operating_point=operating_point)
    out = {PREFIX + k: v for k, v in given.items() if v is not None}
    parse(out)
    return out


def parse(extra_args: Mapping[str, Any] | None) -> RequestSettings:
    """The request's settings, checked for type and vocabulary (not against the loaded
    vectors); raise :class:`SteeringConfigError` naming the key."""
    args = {k[len(PREFIX):]: v for k, v in dict(extra_args or {}).items()
            if isinstance(k, str) and k.startswith(PREFIX)}
    unknown = sorted(set(args) - set(KEYS))
    if unknown:
        raise SteeringConfigError(f"unknown steering key(s) {[PREFIX + k for k in unknown]}; "
                                  f"known: {[PREFIX + k for k in KEYS]}")
    for key in ("vector", "direction", "operating_point"):
        v = args.get(key)
        if v is not None and (not isinstance(v, str) or not NAME_RE.match(v) or len(v) > 128):
            raise SteeringConfigError(f"{PREFIX}{key}={v!r}: a name matching {NAME_RE.pattern}",
                                      field=PREFIX + key)
    if args.get("mode") is not None:
        check_choice(PREFIX + "mode", args["mode"], MODES)
    action = args.get("action")
    if action is not None:
        check_choice(PREFIX + "action", action, ACTIONS)
    strength = args.get("strength")
    if strength is not None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) \
                or not math.isfinite(float(strength)) or abs(float(strength)) > 1000:
            raise SteeringConfigError(
                f"{PREFIX}strength={strength!r}: a finite number in [-1000, 1000]",
                field=PREFIX + "strength")
        strength = float(strength)
    return RequestSettings(args.get("vector"), args.get("mode"), action, strength,
                           args.get("direction"), args.get("operating_point"))


def resolve(s: RequestSettings, vectors: Mapping[str, SteeringVector],
            defaults: Defaults, openers: Openers | None = None) -> RowSteering:
    """The request's :class:`RowSteering` (:class:`RequestDefaults`' rule, as for
    ``lasa serve``'s ``steering`` field); raise :class:`SteeringConfigError` naming the
    setting."""
    name = resolve_names(s, vectors, defaults)
    vector = vectors[name] if name is not None else None
    try:
        return defaults.row(vector, s.mode, s.action, s.strength, s.direction, openers,
                            s.operating_point)
    except SteeringConfigError as exc:
        if exc.field == "operating_point":  # name the request's key
            raise SteeringConfigError(str(exc).replace("operating_point=",
                                                       PREFIX + "operating_point=", 1),
                                      field=PREFIX + "operating_point") from exc
        raise


def check_choice_default(defaults: Defaults, vectors: Mapping[str, Any]) -> None:
    """The install's defaults are valid settings (raise :class:`SteeringConfigError`)."""
    check_choice("default_mode", defaults.mode, MODES)
    if defaults.vector is not None and defaults.vector not in vectors:
        raise SteeringConfigError(f"default_vector={defaults.vector!r}: not among the "
                                  f"vectors {sorted(vectors)}")
    if defaults.action is not None:
        check_choice("default_action", defaults.action, ACTIONS)


def resolve_names(s: RequestSettings, names: Collection[str], defaults: Defaults
                  ) -> str | None:
    """The name of the vector a request resolves to (None: unsteered), checked to be among
    ``names`` (the part of :func:`resolve` that needs no vector file)."""
    name = defaults.vector_name(s.vector, s.mode)
    if name is not None and name not in names:
        raise SteeringConfigError(f"{PREFIX}vector={name!r}: no such vector; loaded: "
                                  f"{sorted(names)}", field=PREFIX + "vector")
    return name
