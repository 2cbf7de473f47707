"""A request's ``steering`` field resolved against the server's defaults."""

from __future__ import annotations

from typing import Optional

from lasa_steer import RowSteering, SteeringConfigError
from lasa_steer.steering.rows import OFF

from ..errors import APIError
from ..protocol import Steering, SteeringResult
from ..runtime import Runtime


def resolve_steering(rt: Runtime, s: Optional[Steering]) -> tuple[RowSteering, SteeringResult]:
    """The row settings and the response's ``steering`` object (without gate results).
    Actions 'prefix'/'refuse' are the library's: the engine forces the refusal opener of the
    prompt's language through the LM head, in the same passes as every other row."""
    s = s or Steering()
    c = rt.config
    mode = s.mode or c.default_mode
    name = s.vector or rt.default_vector
    vector = None
    if s.vector is not None or (mode != "off" and name is not None):
        vector = rt.vectors.get(name) if name else None
        if vector is None:
            raise APIError(404, f"steering.vector {name!r}: no such vector; loaded: "
                           f"{rt.vectors.names()}", param="steering.vector",
                           code="vector_not_found")
    if s.direction is not None and vector is not None and s.direction not in vector.directions:
        raise APIError(404, f"steering.direction {s.direction!r}: vector {name!r} has no such "
                       f"direction; it has {sorted(vector.directions)}",
                       param="steering.direction", code="direction_not_found")
    if vector is None or mode == "off":
        return OFF, SteeringResult(vector=name if vector is not None else None, mode="off",
                                   action=None, strength=0.0)
    action = s.action or c.default_action or vector.default_action
    strength = s.strength if s.strength is not None else (
        c.default_strength if action == vector.default_action else None)
    try:
        row = RowSteering(vector=vector, strength=strength, mode=mode, action=action,
                          direction=s.direction, openers=rt.openers).resolved()
    except SteeringConfigError as exc:
        raise APIError(400, f"steering: {exc}", param="steering") from exc
    return row, SteeringResult(vector=name, mode=mode, action=action, direction=row.direction,
                               strength=row.strength)
