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

from ..tensors import PooledSum, pool
from ..types import Point
from ..vector.file import Gate
from .gate import GateDecision
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

    def rows(self, index: torch.Tensor) -> "Update":
        """The coefficients of the rows ``index`` (e.g. one per token of a flattened batch)."""
        return Update(self.u[index], self.alpha[index], self.beta[index], self.needs_proj)

    def apply(self, hidden: torch.Tensor, active: torch.Tensor,
              ref: torch.Tensor | None = None) -> torch.Tensor | None:
        """THE steering update, for every engine: ``hidden [B, T, H] + (alpha + beta *
        <ref, u>) * u`` on the rows where ``active [B]`` is set, with ``ref`` the residual
        stream the component is read from (default ``hidden``; vLLM passes the block output
        when ``hidden`` is only its first part). None when no active row has a non-zero
        coefficient (the caller leaves the hidden states untouched)."""
        alpha = self.alpha * active
        beta = self.beta * active
        if not bool(((alpha != 0) | (beta != 0)).any()):
            return None
        return hidden + rank_one_delta(hidden, self.u, alpha, beta, ref,
                                       self.needs_proj).to(hidden.dtype)


def rank_one_delta(hidden: torch.Tensor, u: torch.Tensor, alpha: torch.Tensor,
                   beta: torch.Tensor, ref: torch.Tensor | None, needs_proj: bool
                   ) -> torch.Tensor:
    """Float32 ``(alpha + beta * <ref, u>) * u`` for ``hidden [B, T, H]``, per-row ``u
    [B, H]``, ``alpha``/``beta [B]`` (``ref`` defaults to ``hidden``). Tensor work only,
    no branch on values: the HF engine (:meth:`Update.apply`) and the graph-safe step
    (:mod:`lasa_steer.steering.graph`) both add this, so their updates are bit for bit
    the same. A row with ``alpha = beta = 0`` gets zeros."""
    coef = alpha[:, None].expand(-1, hidden.shape[1])
    if needs_proj:
        src = hidden if ref is None else ref
        proj = torch.einsum("bth,bh->bt", src.float(), u)
        coef = coef + beta[:, None] * proj
    return coef[:, :, None] * u[:, None, :]


@dataclass(frozen=True)
class PointPlan:
    """What the hook at one point does for this batch: languages and gates to read, then
    the update."""

    gates: tuple[GateGroup, ...]
    update: Update | None
    lid_rows: torch.Tensor | None = None  # long [k], CPU: rows whose language is read here


def update_of(rows: Sequence[RowSteering], point: Point, hidden: int,
               device: torch.device) -> Update | None:
    """The update at ``point`` of each of ``rows`` (the one mapping of actions to
    coefficients; None when no row steers there)."""
    b = len(rows)
    u, alpha, beta = torch.zeros(b, hidden), torch.zeros(b), torch.zeros(b)
    any_row = False
    for i, r in enumerate(rows):
        coef = coefficients(r, point)
        if coef is None:
            continue
        any_row = True
        u[i], alpha[i], beta[i] = coef
    if not any_row:
        return None
    return Update(u.to(device), alpha.to(device), beta.to(device), bool((beta != 0).any()))


def coefficients(row: RowSteering, point: Point) -> tuple[torch.Tensor, float, float] | None:
    """``(u, alpha, beta)`` of ``row``'s update at ``point`` (None: it does not steer
    there): THE mapping of actions to coefficients, for every engine."""
    if point not in row.steer_points():
        return None
    vec = row.vector.direction(row.direction)[point[1]].float()  # type: ignore[union-attr]
    s = float(row.strength or 0.0)
    if row.action in ("add", "prefix"):  # a prefix row's continuation is steered by add
        return vec, s, 0.0
    alpha = 0.0
    if row.action == "clamp":
        alpha = s * row.vector.clamp_targets[row.direction][point[1]]  # type: ignore
    return vec / vec.norm(), alpha, -s


def _gates_of(rows: Sequence[RowSteering], point: Point) -> tuple[GateGroup, ...]:
    groups: dict[int, tuple[Gate, list[int]]] = {}
    for i, r in enumerate(rows):
        if r.gate_point() == point:
            gate = r.vector.gate  # type: ignore[union-attr]
            groups.setdefault(id(gate), (gate, []))[1].append(i)  # type: ignore[arg-type]
    return tuple(GateGroup(g, torch.tensor(idx, dtype=torch.long)) for g, idx in groups.values())


def _lid_rows_of(rows: Sequence[RowSteering], point: Point) -> torch.Tensor | None:
    idx = [i for i, r in enumerate(rows) if r.lid_point() == point]
    return torch.tensor(idx, dtype=torch.long) if idx else None


@dataclass
class BatchState:
    """Per-row state of the batch now in flight. Rows are in batch order."""

    rows: list[RowSteering]
    scores: torch.Tensor  # float32 [B]; NaN where not scored
    fired: torch.Tensor  # bool [B]
    decided: torch.Tensor  # bool [B]
    langs: list[str | None] = field(default_factory=list)  # identified prompt language
    # Forced reply openers (prefix/refuse) and how many tokens each row has produced:
    forced: list[tuple[int, ...] | None] = field(default_factory=list)
    steps: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    # The real-token mask of the pass now running, while some gate is undecided, and the
    # language-identification states read in it:
    pool_mask: torch.Tensor | None = None
    lid_states: torch.Tensor | None = None
    # A prompt run in several passes (chunked prefill): while ``more_prompt`` is set, the
    # undecided rows' gate and language reads add the pass's tokens to ``reads`` and do not
    # decide; the pass run with it unset decides from the whole prompt, as one pass would.
    more_prompt: bool = False
    reads: dict[tuple[Point, str], PooledSum] = field(default_factory=dict, repr=False)
    _continued: bool = field(default=False, repr=False)  # the previous pass had more_prompt
    _plans: dict[Point, PointPlan | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        b = len(self.rows)
        self.langs = self.langs or [None] * b
        self.forced = self.forced or [None] * b
        if len(self.steps) != b:
            self.steps = torch.zeros(b, dtype=torch.long)

    @classmethod
    def new(cls, rows: Sequence[RowSteering]) -> "BatchState":
        rows = [r.resolved() for r in rows]
        b = len(rows)
        decided = torch.tensor([r.gate_point() is None for r in rows], dtype=torch.bool)
        fired = torch.tensor([r.mode == "always" for r in rows], dtype=torch.bool)
        state = cls(rows=rows, scores=torch.full((b,), float("nan")), fired=fired,
                    decided=decided)
        state._set_openers(range(b))
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, index: Sequence[int]) -> "BatchState":
        """The state of a subset of rows (for a scheduler that drops finished rows)."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        keep = idx.tolist()
        return BatchState(rows=[self.rows[i] for i in keep],
                          scores=self.scores[idx].clone(), fired=self.fired[idx].clone(),
                          decided=self.decided[idx].clone(),
                          langs=[self.langs[i] for i in keep],
                          forced=[self.forced[i] for i in keep], steps=self.steps[idx].clone())

    @staticmethod
    def concat(states: Sequence["BatchState"]) -> "BatchState":
        """Join the states of several groups (for a scheduler that adds rows)."""
        return BatchState(rows=[r for s in states for r in s.rows],
                          scores=torch.cat([s.scores for s in states]),
                          fired=torch.cat([s.fired for s in states]),
                          decided=torch.cat([s.decided for s in states]),
                          langs=[x for s in states for x in s.langs],
                          forced=[x for s in states for x in s.forced],
                          steps=torch.cat([s.steps for s in states]))

    def points(self) -> set[Point]:
        pts: set[Point] = set()
        for r in self.rows:
            for p in (r.gate_point(), r.lid_point()):
                if p:
                    pts.add(p)
            pts.update(r.steer_points())
        return pts

    def plan(self, point: Point, hidden: int, device: torch.device) -> PointPlan | None:
        """The plan at ``point`` (None: nothing to do there), built once per state."""
        if point not in self._plans:
            gates = _gates_of(self.rows, point)
            update = update_of(self.rows, point, hidden, device)
            lid = _lid_rows_of(self.rows, point)
            self._plans[point] = PointPlan(gates, update, lid) \
                if gates or update or lid is not None else None
        return self._plans[point]

    def begin_pass(self) -> None:
        """A pass that reads gates starts: a new prompt unless the last pass said more of
        its prompt follows (then the reads so far are kept)."""
        if not self._continued:
            self.reads.clear()
        self._continued = self.more_prompt

    def pooled(self, point: Point, pooling: str, rows: torch.Tensor, hidden: torch.Tensor,
               mask: torch.Tensor) -> torch.Tensor | None:
        """The pooled states of ``rows`` (CPU indices) at ``point`` over their prompt, from
        this pass's ``hidden [k, T, H]`` and ``mask [k, T]`` of those rows and, for a prompt
        run in several passes, the earlier ones; None while more of the prompt follows."""
        if not self.more_prompt and not self.reads:  # the whole prompt is in this pass
            return pool(hidden, mask, pooling)
        acc = self.reads.get((point, pooling))
        if acc is None:
            acc = self.reads[(point, pooling)] = PooledSum(len(self), hidden.shape[-1], pooling)
        acc.add(rows, hidden, mask)
        return None if self.more_prompt else acc.result(rows)

    def record(self, rows: torch.Tensor, decision: GateDecision) -> None:
        """Store gate results for ``rows`` (CPU indices); they stay for the request."""
        self.scores[rows] = decision.scores
        self.fired[rows] = decision.fired
        self.decided[rows] = True
        for i, lang in zip(rows.tolist(), decision.langs):
            self.langs[i] = lang
        self._set_openers(rows.tolist())

    def _set_openers(self, rows: Sequence[int]) -> None:
        for i in rows:
            r = self.rows[i]
            if r.forces_opener and bool(self.fired[i]) and r.openers is not None:
                self.forced[i] = r.openers.sequence(self.langs[i], r.action == "refuse")

    @property
    def any_opener(self) -> bool:
        """Whether some row may get a forced opener (the LM-head hook is needed)."""
        return any(r.forces_opener for r in self.rows)

    def take_forced(self) -> tuple[list[int], list[int]]:
        """Rows whose next token is forced, with those tokens; then every row advances one
        token (called once per model pass, at the LM head)."""
        rows, tokens = [], []
        for i, seq in enumerate(self.forced):
            step = int(self.steps[i])
            if seq is not None and step < len(seq):
                rows.append(i)
                tokens.append(seq[step])
        self.steps += 1
        return rows, tokens
