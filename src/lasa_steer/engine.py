"""The hook engine: per-row gating and steering with forward hooks.

Hooks are installed with ``register_forward_hook`` / ``register_forward_pre_hook`` through
closure factories and removed through their handles; modules are never replaced. All
per-request state (row settings, gate scores and decisions, prompt tokens) lives in a
:class:`BatchState` outside the modules, one entry per batch row.

Every steering action is the same rank-one update of the residual stream ``h`` of a row::

    h' = h + (alpha + beta * <h, u>) * u

* ``add``:     u = direction (not normalised), alpha = strength, beta = 0
* ``project``: u = unit direction, alpha = 0, beta = -strength (strength 1 removes it)
* ``clamp``:   u = unit direction, alpha = strength * target, beta = -strength
  (strength 1 sets the component to ``target``)

A row whose gate did not fire, or whose strength is 0, gets alpha = beta = 0; when no row of
a batch is active the hook returns its input untouched, so outputs are bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .errors import SteeringConfigError
from .layermap import SITES, LayerMap, find_layers
from .vector import ACTIONS, SteeringVector

MODES = ("gate", "always", "off")
Point = tuple[str, int]  # (site, 0-based block index)


def point_order(point: Point) -> tuple[int, int]:
    """Order of hook points in the forward pass (resid_pre of i < resid_post of i)."""
    site, layer = point
    return (layer, SITES.index(site))


@dataclass(frozen=True)
class RowSteering:
    """How one batch row (one request) is steered."""

    vector: SteeringVector | None = None
    strength: float | None = None
    mode: str = "gate"
    action: str | None = None
    direction: str | None = None
    layers: tuple[int, ...] | None = None

    def resolved(self) -> "RowSteering":
        """Fill defaults from the vector and validate; raise :class:`SteeringConfigError`."""
        if self.mode not in MODES:
            raise SteeringConfigError(f"mode={self.mode!r}: must be one of {MODES}")
        v = self.vector
        if v is None or self.mode == "off":
            return replace(self, mode="off", strength=0.0)
        action = self.action or v.default_action
        if action not in ACTIONS:
            raise SteeringConfigError(f"action={action!r}: must be one of {ACTIONS}")
        if self.strength is None:
            strength = v.default_strength if action == v.default_action else (
                v.default_strength if action == "add" else 1.0)
        else:
            strength = float(self.strength)
        if not math.isfinite(strength):
            raise SteeringConfigError(f"strength={self.strength!r} is not finite")
        dname = self.direction or v.default_direction
        if dname not in v.directions:
            raise SteeringConfigError(
                f"direction={dname!r}: vector {v.name!r} has {sorted(v.directions)}")
        available = sorted(v.directions[dname])
        layers = tuple(sorted(set(int(x) for x in self.layers))) if self.layers is not None \
            else tuple(available)
        missing = [x for x in layers if x not in v.directions[dname]]
        if missing:
            raise SteeringConfigError(
                f"layers={list(self.layers or [])}: vector {v.name!r} direction {dname!r} has "
                f"no direction at block(s) {missing}; available blocks: {available}")
        if action == "clamp":
            targets = v.clamp_targets.get(dname, {})
            lacking = [x for x in layers if x not in targets]
            if lacking:
                raise SteeringConfigError(
                    f"action='clamp': vector {v.name!r} has no clamp target for direction "
                    f"{dname!r} at block(s) {lacking}")
        if self.mode == "gate":
            if v.gate is None:
                raise SteeringConfigError(
                    f"mode='gate': vector {v.name!r} has no gate; use mode='always'")
            gate_point = (v.gate.site, v.gate.layer)
            early = [x for x in layers if point_order((v.site, x)) < point_order(gate_point)]
            if early:
                raise SteeringConfigError(
                    f"mode='gate': steering at block(s) {early} ({v.site}) would run before "
                    f"the gate reads block {v.gate.layer} ({v.gate.site}); steer at later "
                    "blocks or use mode='always'")
        return replace(self, strength=strength, action=action, direction=dname, layers=layers)

    def gate_point(self) -> Point | None:
        if self.mode != "gate" or self.vector is None or self.vector.gate is None:
            return None
        return (self.vector.gate.site, self.vector.gate.layer)

    def steer_points(self) -> list[Point]:
        if self.mode == "off" or self.vector is None or not self.strength:
            return []
        return [(self.vector.site, layer) for layer in (self.layers or ())]


@dataclass
class BatchState:
    """Per-row state of the batch now in flight. Rows are in batch order."""

    rows: list[RowSteering]
    scores: torch.Tensor  # float32 [B]; NaN where not scored
    fired: torch.Tensor  # bool [B]
    decided: torch.Tensor  # bool [B]
    prompt_ids: torch.Tensor | None = None  # the prompt tokens of each row (for continuation)
    # Set for the duration of a fresh (prefill) pass only:
    gate_index: torch.Tensor | None = None  # long [B]: position of the last prompt token
    pool_mask: torch.Tensor | None = None  # [B, T] real-token mask for mean pooling
    _compiled: dict[Point, Any] = field(default_factory=dict, repr=False)

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
        return BatchState(
            rows=[self.rows[i] for i in idx.tolist()],
            scores=self.scores[idx].clone(), fired=self.fired[idx].clone(),
            decided=self.decided[idx].clone(),
            prompt_ids=None if self.prompt_ids is None else self.prompt_ids[idx].clone(),
        )

    @staticmethod
    def concat(states: Sequence["BatchState"]) -> "BatchState":
        """Join the states of several groups (for a scheduler that adds rows)."""
        return BatchState(
            rows=[r for s in states for r in s.rows],
            scores=torch.cat([s.scores for s in states]),
            fired=torch.cat([s.fired for s in states]),
            decided=torch.cat([s.decided for s in states]),
        )

    def points(self) -> set[Point]:
        pts: set[Point] = set()
        for r in self.rows:
            gp = r.gate_point()
            if gp:
                pts.add(gp)
            pts.update(r.steer_points())
        return pts

    # ------------------------------------------------------------- per-point tensors
    def compiled(self, point: Point, hidden: int, device: torch.device) -> Any:
        """Per-row gate and update tensors for one hook point, cached per state."""
        key = point
        if key in self._compiled:
            return self._compiled[key]
        b = len(self.rows)
        gate_rows: list[int] = []
        gdir = torch.zeros(b, hidden)
        thr = torch.zeros(b)
        pooling_mean = torch.zeros(b, dtype=torch.bool)
        u = torch.zeros(b, hidden)
        alpha = torch.zeros(b)
        beta = torch.zeros(b)
        steer_rows: list[int] = []
        for i, r in enumerate(self.rows):
            if r.gate_point() == point:
                g = r.vector.gate  # type: ignore[union-attr]
                gate_rows.append(i)
                gdir[i] = g.direction.float()
                thr[i] = g.threshold
                pooling_mean[i] = g.pooling == "mean"
            if point in r.steer_points():
                vec = r.vector.direction(r.direction)[point[1]].float()  # type: ignore
                steer_rows.append(i)
                s = float(r.strength or 0.0)
                if r.action == "add":
                    u[i], alpha[i] = vec, s
                else:
                    unit = vec / vec.norm()
                    u[i], beta[i] = unit, -s
                    if r.action == "clamp":
                        target = r.vector.clamp_targets[r.direction][point[1]]  # type: ignore
                        alpha[i] = s * target
        comp = None
        if gate_rows or steer_rows:
            comp = {
                "gate_rows": torch.tensor(gate_rows, dtype=torch.long, device=device),
                "gdir": gdir.to(device), "thr": thr.to(device),
                "pool_mean": pooling_mean.to(device),
                "has_steer": bool(steer_rows),
                "steer_rows": torch.tensor(steer_rows, dtype=torch.long),
                "u": u.to(device), "alpha": alpha.to(device), "beta": beta.to(device),
                "needs_proj": bool((beta != 0).any()),
            }
        self._compiled[key] = comp
        return comp


def _split(output: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """Return the hidden states of a block output (tuple or bare tensor) and a rebuilder."""
    if isinstance(output, torch.Tensor):
        return output, lambda h: h
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0], lambda h: (h,) + tuple(output[1:])
    raise TypeError(f"unexpected block output type {type(output).__name__}")


def _cache_length(kwargs: dict[str, Any]) -> int:
    for name in ("cache", "past_key_values"):
        cache = kwargs.get(name)
        if cache is None:
            continue
        if hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
        if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
            return int(cache[0][0].shape[-2])
    return 0


class SteeringEngine:
    """Installs hooks on a model and applies a :class:`BatchState` on every forward pass.

    Automatic use (``model.generate`` or plain forward calls): set the rows' settings with
    :meth:`configure`; on each fresh pass (empty KV cache) the engine starts a new request
    per row, reads the gate at the last real prompt token (left or right padding, from the
    attention mask) and keeps the decision for the rest of the generation. A fresh pass
    whose tokens extend the previous prompt of every row (``use_cache=False`` generation)
    keeps the decisions, so cached and uncached greedy decoding agree.

    Schedulers (the server) may instead manage :attr:`state` themselves, joining and
    splitting rows with :meth:`BatchState.concat` / :meth:`BatchState.select`.
    """

    def __init__(self, model: nn.Module, blocks: str | None = None,
                 layer_map: LayerMap | None = None):
        self.model = model
        self.layer_map = layer_map or find_layers(model, blocks)
        self.state: BatchState | None = None
        self._rows_factory: Callable[[int], list[RowSteering]] | None = None
        self._handles: dict[Point, RemovableHandle] = {}
        self._top: RemovableHandle | None = model.register_forward_pre_hook(
            self._on_model_call, with_kwargs=True)
        self.removed = False

    # ------------------------------------------------------------- configuration
    def configure(self, rows: Callable[[int], list[RowSteering]] | Sequence[RowSteering]) -> None:
        """Settings for the next fresh pass: a list (one per row) or a function of the
        batch size. Validates at once and installs the hooks the settings need."""
        if callable(rows):
            self._rows_factory = rows
            probe = rows(1)
        else:
            fixed = [r.resolved() for r in rows]
            self._rows_factory = lambda b: self._fit_rows(fixed, b)
            probe = fixed
        self.ensure_points(BatchState.new(probe).points())
        self.state = None

    @staticmethod
    def _fit_rows(rows: list[RowSteering], batch: int) -> list[RowSteering]:
        if len(rows) == batch:
            return rows
        if len(rows) == 1:
            return rows * batch
        raise SteeringConfigError(
            f"{len(rows)} per-row steering settings for a batch of {batch} rows")

    def set_state(self, state: BatchState | None) -> None:
        if state is not None:
            self.ensure_points(state.points())
        self.state = state

    def ensure_points(self, points: set[Point]) -> None:
        for point in points:
            if point in self._handles:
                continue
            site, layer = point
            block = self.layer_map.block(layer)
            if site == "resid_pre":
                h = block.register_forward_pre_hook(self._make_pre_hook(point), with_kwargs=True)
            else:
                h = block.register_forward_hook(self._make_post_hook(point))
            self._handles[point] = h

    def remove(self) -> None:
        for h in self._handles.values():
            h.remove()
        self._handles.clear()
        if self._top is not None:
            self._top.remove()
            self._top = None
        self.state = None
        self.removed = True

    # ------------------------------------------------------------- request tracking
    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._rows_factory is None:
            if self.state is not None:
                self.state.gate_index = None
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if _cache_length(kwargs) > 0:
            if self.state is not None:
                self.state.gate_index = None
                if not bool(self.state.decided.all()):
                    self._arm_gate(self.state, ids, mask, kwargs)
            return
        if ids is None:
            embeds = kwargs.get("inputs_embeds")
            batch = int(embeds.shape[0]) if embeds is not None else 1
        else:
            batch = int(ids.shape[0])
        prev = self.state
        if (prev is not None and ids is not None and prev.prompt_ids is not None
                and len(prev) == batch and ids.dim() == 2
                and ids.shape[1] > prev.prompt_ids.shape[1]
                and torch.equal(ids[:, : prev.prompt_ids.shape[1]].cpu(), prev.prompt_ids)
                and bool(prev.decided.all())):
            prev.gate_index = None  # continuation of the same prompts: keep decisions
            return
        state = BatchState.new(self._rows_factory(batch))
        self.ensure_points(state.points())
        state.prompt_ids = ids.detach().cpu().clone() if isinstance(ids, torch.Tensor) else None
        self._arm_gate(state, ids, mask, kwargs)
        self.state = state

    @staticmethod
    def _arm_gate(state: BatchState, ids: Any, mask: Any, kwargs: dict) -> None:
        ref = ids if isinstance(ids, torch.Tensor) else kwargs.get("inputs_embeds")
        if ref is None:
            return
        b, t = int(ref.shape[0]), int(ref.shape[1])
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] >= t:
            m = mask[:, -t:].to(torch.bool)
        else:
            m = torch.ones(b, t, dtype=torch.bool, device=ref.device)
        positions = torch.arange(t, device=m.device).expand(b, t)
        last = torch.where(m, positions, torch.full_like(positions, -1)).max(dim=1).values
        state.gate_index = last.clamp_min(0)
        state.pool_mask = m

    # ------------------------------------------------------------- the update
    def _apply(self, point: Point, hidden: torch.Tensor) -> torch.Tensor:
        state = self.state
        if state is None:
            return hidden
        if hidden.dim() != 3 or hidden.shape[0] != len(state):
            return hidden
        comp = state.compiled(point, hidden.shape[-1], hidden.device)
        if comp is None:
            return hidden
        if comp["gate_rows"].numel() and state.gate_index is not None:
            self._read_gate(state, comp, hidden)
        if not comp["has_steer"]:
            return hidden
        active = state.fired.to(hidden.device)
        alpha = comp["alpha"] * active
        beta = comp["beta"] * active
        if not bool(((alpha != 0) | (beta != 0)).any()):
            return hidden
        u = comp["u"]
        coef = alpha[:, None].expand(-1, hidden.shape[1])
        if comp["needs_proj"]:
            proj = torch.einsum("bth,bh->bt", hidden.float(), u)
            coef = coef + beta[:, None] * proj
        delta = coef[:, :, None] * u[:, None, :]
        return hidden + delta.to(hidden.dtype)

    @staticmethod
    def _read_gate(state: BatchState, comp: dict, hidden: torch.Tensor) -> None:
        rows = comp["gate_rows"]
        pending = rows[~state.decided[rows.cpu()].to(rows.device)]
        if pending.numel() == 0:
            return
        h = hidden[pending].float()
        idx = state.gate_index.to(hidden.device)[pending]  # type: ignore[union-attr]
        last = h[torch.arange(h.shape[0], device=h.device), idx]
        pooled = last
        if bool(comp["pool_mean"][pending].any()) and state.pool_mask is not None:
            m = state.pool_mask.to(hidden.device)[pending].float()[:, :, None]
            mean = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
            pooled = torch.where(comp["pool_mean"][pending][:, None], mean, last)
        scores = (pooled * comp["gdir"][pending]).sum(-1)
        fired = scores > comp["thr"][pending]
        cpu_rows = pending.cpu()
        state.scores[cpu_rows] = scores.detach().cpu()
        state.fired[cpu_rows] = fired.cpu()
        state.decided[cpu_rows] = True

    # ------------------------------------------------------------- hook factories
    def _make_post_hook(self, point: Point):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            hidden, rebuild = _split(output)
            new = self._apply(point, hidden)
            return output if new is hidden else rebuild(new)
        return hook

    def _make_pre_hook(self, point: Point):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if args and isinstance(args[0], torch.Tensor):
                new = self._apply(point, args[0])
                return None if new is args[0] else ((new,) + tuple(args[1:]), kwargs)
            hidden = kwargs.get("hidden_states")
            if isinstance(hidden, torch.Tensor):
                new = self._apply(point, hidden)
                if new is not hidden:
                    return args, {**kwargs, "hidden_states": new}
            return None
        return hook
