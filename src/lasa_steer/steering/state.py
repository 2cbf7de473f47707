"""Per-row state of the batch in flight, and its typed plan at each hook point.

Every steering action is the same rank-one update of the residual stream ``h`` of a row::

    h' = h + (alpha + beta * <h, u>) * u

* ``add``:     u = direction (not normalised), alpha = strength, beta = 0
* ``project``: u = unit direction, alpha = 0, beta = -strength (strength 1 removes it)
* ``clamp``:   u = unit direction, alpha = strength * target, beta = -strength
  (strength 1 sets the component to ``target``)

A row whose gate did not fire, or whose strength is 0, gets alpha = beta = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..types import Point
from ..vector.file import Gate
from .rows import RowSteering


@dataclass(frozen=True)
class GateGroup:
    """Rows that read one gate at a point (rows of one vector share its gate object)."""

    gate: Gate
    rows: torch.Tensor  # long [k], CPU


@dataclass(frozen=True)
class Update:
    """Per-row coefficients of the rank-one update at one point (zeros: row untouched)."""

    u: torch.Tensor  # [B, H]
    alpha: torch.Tensor  # [B]
    beta: torch.Tensor  # [B]
    needs_proj: bool  # some beta is non-zero: <h, u> must be computed


@dataclass(frozen=True)
class PointPlan:
    """What the hook at one point does for this batch: gates to read, then the update."""

    gates: tuple[GateGroup, ...]
    update: Update | None


def _update_of(rows: Sequence[RowSteering], point: Point, hidden: int,
               device: torch.device) -> Update | None:
    b = len(rows)
    u, alpha, beta = torch.zeros(b, hidden), torch.zeros(b), torch.zeros(b)
    any_row = False
    for i, r in enumerate(rows):
        if point not in r.steer_points():
            continue
        any_row = True
        vec = r.vector.direction(r.direction)[point[1]].float()  # type: ignore[union-attr]
        s = float(r.strength or 0.0)
        if r.action == "add":
            u[i], alpha[i] = vec, s
            continue
        u[i], beta[i] = vec / vec.norm(), -s
        if r.action == "clamp":
            alpha[i] = s * r.vector.clamp_targets[r.direction][point[1]]  # type: ignore
    if not any_row:
        return None
    return Update(u.to(device), alpha.to(device), beta.to(device), bool((beta != 0).any()))


def _gates_of(rows: Sequence[RowSteering], point: Point) -> tuple[GateGroup, ...]:
    groups: dict[int, tuple[Gate, list[int]]] = {}
    for i, r in enumerate(rows):
        if r.gate_point() == point:
            gate = r.vector.gate  # type: ignore[union-attr]
            groups.setdefault(id(gate), (gate, []))[1].append(i)  # type: ignore[arg-type]
    return tuple(GateGroup(g, torch.tensor(idx, dtype=torch.long)) for g, idx in groups.values())


@dataclass
class BatchState:
    """Per-row state of the batch now in flight. Rows are in batch order."""

    rows: list[RowSteering]
    scores: torch.Tensor  # float32 [B]; NaN where not scored
    fired: torch.Tensor  # bool [B]
    decided: torch.Tensor  # bool [B]
    # The real-token mask of the pass now running, while some gate is undecided:
    pool_mask: torch.Tensor | None = None
    _plans: dict[Point, PointPlan | None] = field(default_factory=dict, repr=False)

    @classmethod
    def new(cls, rows: Sequence[RowSteering]) -> "BatchState":
        rows = [r.resolved() for r in rows]
        b = len(rows)
        decided = torch.tensor([r.gate_point() is None for r in rows], dtype=torch.bool)
        fired = torch.tensor([r.mode == "always" for r in rows], dtype=torch.bool)
        return cls(rows=rows, scores=torch.full((b,), float("nan")), fired=fired,
                   decided=decided)

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, index: Sequence[int]) -> "BatchState":
        """The state of a subset of rows (for a scheduler that drops finished rows)."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return BatchState(rows=[self.rows[i] for i in idx.tolist()],
                          scores=self.scores[idx].clone(), fired=self.fired[idx].clone(),
                          decided=self.decided[idx].clone())

    @staticmethod
    def concat(states: Sequence["BatchState"]) -> "BatchState":
        """Join the states of several groups (for a scheduler that adds rows)."""
        return BatchState(rows=[r for s in states for r in s.rows],
                          scores=torch.cat([s.scores for s in states]),
                          fired=torch.cat([s.fired for s in states]),
                          decided=torch.cat([s.decided for s in states]))

    def points(self) -> set[Point]:
        pts: set[Point] = set()
        for r in self.rows:
            gp = r.gate_point()
            if gp:
                pts.add(gp)
            pts.update(r.steer_points())
        return pts

    def plan(self, point: Point, hidden: int, device: torch.device) -> PointPlan | None:
        """The plan at ``point`` (None: nothing to do there), built once per state."""
        if point not in self._plans:
            gates = _gates_of(self.rows, point)
            update = _update_of(self.rows, point, hidden, device)
            self._plans[point] = PointPlan(gates, update) if gates or update else None
        return self._plans[point]

    def record(self, rows: torch.Tensor, scores: torch.Tensor, fired: torch.Tensor) -> None:
        """Store gate results for ``rows`` (CPU indices); they stay for the request."""
        self.scores[rows] = scores
        self.fired[rows] = fired
        self.decided[rows] = True
