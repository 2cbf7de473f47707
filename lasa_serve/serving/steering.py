"""A request's ``steering`` field resolved against the server's defaults."""

from __future__ import annotations

from typing import Optional

from lasa_steer import RowSteering, SteeringConfigError
from lasa_steer.steering.rows import OFF, RequestDefaults

from ..errors import APIError
from ..protocol import Steering, SteeringResult
from ..runtime import Runtime


def resolve_steering(rt: Runtime, s: Optional[Steering]) -> tuple[RowSteering, SteeringResult]:
    """The row settings and the response's ``steering`` object (without gate results).
    Actions 'prefix'/'refuse' are the library's: the engine forces the refusal opener of the
    prompt's language through the LM head, in the same passes as every other row."""
    s = s or Steering()
    c = rt.config
    defaults = RequestDefaults(rt.default_vector, c.default_mode, c.default_action,
                               c.default_strength, c.default_operating_point)
    mode = s.mode or c.default_mode
    name = defaults.vector_name(s.vector, s.mode)
    vector = rt.vectors.get(name) if name else None
    if name is not None and vector is None:
        raise APIError(404, f"steering.vector {name!r}: no such vector; loaded: "
                       f"{rt.vectors.names()}", param="steering.vector",
                       code="vector_not_found")
    if s.direction is not None and vector is not None and s.direction not in vector.directions:
        raise APIError(404, f"steering.direction {s.direction!r}: vector {name!r} has no such "
                       f"direction; it has {sorted(vector.directions)}",
                       param="steering.direction", code="direction_not_found")
    if vector is None and mode != "off" and s.model_fields_set:  # no vector at all
        raise APIError(400, f"steering: this server has no steering vector (it was started "
                       f"with --allow-unsteered and no vector fits {rt.model_name}), so it "
                       f"cannot honour steering mode {mode!r}; send steering.mode 'off' or "
                       "no steering field", param="steering", code="steering_unavailable")
    if vector is None or mode == "off":
        return OFF, SteeringResult(vector=name if vector is not None else None, mode="off",
                                   action=None, strength=0.0)
    try:
        row = defaults.row(vector, s.mode, s.action, s.strength, s.direction, rt.openers,
                           s.operating_point)
    except SteeringConfigError as exc:
        if exc.field == "operating_point":
            raise APIError(404, f"steering.operating_point: {exc}",
                           param="steering.operating_point",
                           code="operating_point_not_found") from exc
        raise APIError(400, f"steering: {exc}", param="steering") from exc
    gate = row.vector.gate if row.vector is not None else None
    return row, SteeringResult(vector=name, mode=mode, action=row.action,
                               direction=row.direction, strength=row.strength,
                               operating_point=gate.operating_point if gate else None)
