"""How one batch row (one request) is steered, and the one rule that fills its defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..errors import SteeringConfigError
from ..types import ACTIONS, MODES, OPENER_ACTIONS, Mode, Point, point_order
from ..vector.file import SteeringVector
from .gate import lid_point
from .openers import Openers


def default_strength(vector: SteeringVector, action: str) -> float:
    """The file's strength (its calibrated ``add`` strength) for ``add`` and for the file's
    own action; 0.0 (the opener alone, no steering of the continuation) for
    ``prefix``/``refuse``; 1.0 (all of the component) for ``project``/``clamp`` when the file
    was calibrated for another action."""
    if action == "add":
        return vector.default_strength
    if action in OPENER_ACTIONS:
        return 0.0
    return vector.default_strength if action == vector.default_action else 1.0


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise :class:`SteeringConfigError` naming ``name`` unless ``value`` is a choice."""
    if value not in choices:
        raise SteeringConfigError(f"{name}={value!r}: must be one of {choices}", field=name)


@dataclass(frozen=True)
class RequestDefaults:
    """What a served request that names no setting gets, and THE rule that picks its vector,
    action and strength (``lasa serve``'s ``steering`` field and the vLLM plugin's
    ``lasa_*`` keys both go through it)."""

    vector: str | None = None
    mode: str = "gate"
    action: str | None = None
    strength: float | None = None
    operating_point: str | None = None  # None: each vector file's default point

    def vector_name(self, requested: str | None, mode: str | None) -> str | None:
        """The vector the request steers with (the caller looks it up and says when it is
        not loaded): the one it names, else the default unless its mode is ``off``; None
        when it steers with none."""
        name = requested or self.vector
        if requested is None and ((mode or self.mode) == "off" or name is None):
            return None
        return name

    def row(self, vector: SteeringVector | None, mode: str | None, action: str | None,
            strength: float | None, direction: str | None,
            openers: Openers | None = None, operating_point: str | None = None
            ) -> "RowSteering":
        """The request's row (:data:`OFF` without a vector or in mode ``off``); the default
        strength applies only to the default action; the gate at the request's operating
        point, else the default's, else the file's. Raise :class:`SteeringConfigError`."""
        mode = mode or self.mode
        if vector is None or mode == "off":
            return OFF
        vector = vector.at_operating_point(operating_point or self.operating_point)
        action = action or self.action or vector.default_action
        if strength is None and action == vector.default_action:
            strength = self.strength
        return RowSteering(vector=vector, strength=strength, mode=mode,  # type: ignore[arg-type]
                           action=action, direction=direction, openers=openers).resolved()


@dataclass(frozen=True)
class RowSteering:
    """How one batch row (one request) is steered."""

    vector: SteeringVector | None = None
    strength: float | None = None
    mode: Mode = "gate"
    action: str | None = None  # an Action; validated in resolved()
    direction: str | None = None
    layers: tuple[int, ...] | None = None
    openers: Openers | None = None  # token ids of the refusal openers (prefix/refuse)

    def resolved(self) -> "RowSteering":
        """Fill defaults from the vector and validate; raise :class:`SteeringConfigError`."""
        check_choice("mode", self.mode, MODES)
        v = self.vector
        if v is None or self.mode == "off":
            return replace(self, mode="off", strength=0.0)
        action = self.action or v.default_action
        check_choice("action", action, ACTIONS)
        strength = default_strength(v, action) if self.strength is None else float(self.strength)
        if not math.isfinite(strength):
            raise SteeringConfigError(f"strength={self.strength!r} is not finite")
        dname = self.direction or v.default_direction
        if dname not in v.directions:
            raise SteeringConfigError(
                f"direction={dname!r}: vector {v.name!r} has {sorted(v.directions)}")
        layers = self._checked_layers(v, dname)
        if action == "clamp":
            targets = v.clamp_targets.get(dname, {})
            lacking = [x for x in layers if x not in targets]
            if lacking:
                raise SteeringConfigError(
                    f"action='clamp': vector {v.name!r} has no clamp target for direction "
                    f"{dname!r} at block(s) {lacking}")
        if self.mode == "gate":
            self._check_gate_first(v, layers)
        if action in OPENER_ACTIONS and self.openers is None:
            raise SteeringConfigError(
                f"action={action!r} needs the tokenizer (steer(..., tokenizer=tok)) to write "
                "the refusal opener")
        return replace(self, strength=strength, action=action, direction=dname, layers=layers)

    def _checked_layers(self, v: SteeringVector, dname: str) -> tuple[int, ...]:
        available = sorted(v.directions[dname])
        layers = tuple(sorted(set(int(x) for x in self.layers))) if self.layers is not None \
            else tuple(available)
        missing = [x for x in layers if x not in v.directions[dname]]
        if missing:
            raise SteeringConfigError(
                f"layers={list(self.layers or [])}: vector {v.name!r} direction {dname!r} has "
                f"no direction at block(s) {missing}; available blocks: {available}")
        return layers

    @staticmethod
    def _check_gate_first(v: SteeringVector, layers: tuple[int, ...]) -> None:
        if v.gate is None:
            raise SteeringConfigError(
                f"mode='gate': vector {v.name!r} has no gate; use mode='always'")
        gate_at = (v.gate.site, v.gate.layer)
        early = [x for x in layers if point_order((v.site, x)) < point_order(gate_at)]
        if early:
            raise SteeringConfigError(
                f"mode='gate': steering at block(s) {early} ({v.site}) would run before "
                f"the gate reads block {v.gate.layer} ({v.gate.site}); steer at later "
                "blocks or use mode='always'")

    def gate_point(self) -> Point | None:
        if self.mode != "gate" or self.vector is None or self.vector.gate is None:
            return None
        return (self.vector.gate.site, self.vector.gate.layer)

    def lid_point(self) -> Point | None:
        """Where a language-aware gate reads the prompt's language (before the gate)."""
        if self.gate_point() is None:
            return None
        return lid_point(self.vector.gate)  # type: ignore[union-attr, arg-type]

    @property
    def forces_opener(self) -> bool:
        return self.mode != "off" and self.action in OPENER_ACTIONS

    def steer_points(self) -> list[Point]:
        if (self.mode == "off" or self.vector is None or not self.strength
                or self.action == "refuse"):
            return []
        return [(self.vector.site, layer) for layer in (self.layers or ())]


OFF = RowSteering(mode="off")
