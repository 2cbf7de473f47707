"""Graph-safe steering: gates, decisions and updates as tensor work on persistent buffers.

An engine that captures its forward pass (torch.compile with ``fullgraph``, CUDA graphs)
cannot run Python that branches on values inside the pass. So the work is split:

* the host, before each pass, writes small buffers (:meth:`GraphSteering.plan`): which
  request slot every token row belongs to, the weight of each row in each gate or language
  read, and which slots decide their gate in this pass; a slot's settings (the update's
  coefficients at every steered point, its gate, ``always`` = already fired) are written
  once, when a request takes it (:meth:`GraphSteering.assign`);
* inside the pass, :meth:`GraphSteering.run` at each point does tensor work only, in place
  on ``hidden``: add this pass's rows to the per-slot sums of the reads at that point, score
  the slots that decide (the gate's probe or direction, the language's nearest centroid and
  threshold), set their fired flags, and add the rank-one update to every row, scaled by its
  slot's fired flag (zero for rows of unsteered requests and for padding);
* after the pass the host reads the decisions back (:meth:`GraphSteering.decisions`).

The buffers never move or change shape, so a captured graph replays with the new values.
The maths is the HF engine's: :func:`~lasa_steer.steering.state.coefficients` and
:func:`~lasa_steer.steering.state.rank_one_delta` for the update,
:func:`~lasa_steer.vector.probe.probe_score` and the gate's thresholds for the decision.
Pooled reads are sums over the prompt's rows divided by their count, so a prompt may come in
several passes (chunked prefill); a slot decides in the pass holding its last prompt token.

Without capture (``full=False``) a point whose work the host knows to be empty in this pass
is skipped; the results are the same either way (an unsteered row gets ``+ 0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..types import Point
from ..vector.file import Gate, SteeringVector
from ..vector.probe import probe_score
from .gate import LID_POOLING, gate_point, lid_point
from .rows import RowSteering
from .state import coefficients, rank_one_delta

ReadKey = tuple[Point, str]  # (point, pooling)


@dataclass(frozen=True)
class Segment:
    """One request's rows in a pass: ``rows`` rows from ``start``, the first at sequence
    position ``first``; ``prompt`` prompt tokens in all; ``reads``: its gate is undecided
    (the rows that are prompt tokens are read)."""

    slot: int
    start: int
    rows: int
    first: int
    prompt: int
    reads: bool


class _GateTensors:
    """One gate's tensors on the device: score, language centroids, thresholds."""

    def __init__(self, gate: Gate, device: torch.device):
        f32 = dict(dtype=torch.float32, device=device)
        self.gate = gate
        self.point = gate_point(gate)
        self.key: ReadKey = (self.point, gate.pooling)
        self.lid_key: ReadKey | None = None
        lp = lid_point(gate)
        if lp is not None:
            self.lid_key = (lp, LID_POOLING)
            self.centroids = gate.centroids.to(**f32)  # type: ignore[union-attr]
            self.thresholds = torch.tensor([gate.threshold_for(lang) for lang in gate.languages],
                                           **f32)
        else:
            self.thresholds = torch.tensor([gate.threshold], **f32)
        p = gate.probe
        self.probe = None if p is None else tuple(t.to(**f32) for t in (p.w1, p.b1, p.w2, p.b2))
        self.direction = gate.direction.to(**f32)

    def score(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.probe is not None:
            return probe_score(pooled, *self.probe)
        return pooled @ self.direction


class GraphSteering:
    """Persistent buffers for ``slots`` requests and ``max_tokens`` token rows per pass, and
    the in-place step at each point. Slot ``slots`` is the empty slot (padding rows)."""

    def __init__(self, vectors: Sequence[SteeringVector] | Mapping[str, SteeringVector],
                 slots: int, max_tokens: int, hidden: int,
                 device: torch.device | str = "cpu", full: bool = False):
        vecs = list(vectors.values()) if isinstance(vectors, Mapping) else list(vectors)
        dev = torch.device(device)
        self.device, self.full, self.empty = dev, full, slots
        self.max_tokens, self.hidden = max_tokens, hidden
        n = slots + 1
        f32 = dict(dtype=torch.float32, device=dev)
        # gates (one per vector file that has one) and the reads they make
        self._gates: list[_GateTensors] = []
        self._gate_of: dict[int, int] = {}  # id(Gate) -> index
        for v in vecs:
            if v.gate is not None and id(v.gate) not in self._gate_of:
                self._gate_of[id(v.gate)] = len(self._gates)
                self._gates.append(_GateTensors(v.gate, dev))
        keys: list[ReadKey] = []
        for g in self._gates:
            for k in (g.lid_key, g.key):
                if k is not None and k not in keys:
                    keys.append(k)
        self.keys = keys
        self.acc = {k: torch.zeros(n, hidden, **f32) for k in keys}
        self.count = {k: torch.zeros(n, **f32) for k in keys}
        self.weight = {k: torch.zeros(max_tokens, **f32) for k in keys}
        # the directions each point may add: row 0 zeros, then raw and unit rows
        self._table: dict[Point, torch.Tensor] = {}
        self._row_of: dict[tuple[Point, int, bool], int] = {}
        for v in vecs:
            for dname, by_layer in v.directions.items():
                for layer, vec in by_layer.items():
                    p = (v.site, int(layer))
                    rows = self._table.setdefault(p, torch.zeros(1, hidden))
                    f = vec.detach().float().cpu()
                    for unit, u in ((False, f), (True, f / f.norm())):
                        self._row_of[(p, id(vec), unit)] = int(rows.shape[0])
                        rows = torch.cat([rows, u[None]])
                    self._table[p] = rows
        self.table = {p: t.to(**f32) for p, t in self._table.items()}
        self.alpha = {p: torch.zeros(n, **f32) for p in self.table}
        self.beta = {p: torch.zeros(n, **f32) for p in self.table}
        self.urow = {p: torch.zeros(n, dtype=torch.long, device=dev) for p in self.table}
        # per slot: fired (0/1), and the last decision's score and language index
        self.fired = torch.zeros(n, **f32)
        self.score = torch.full((n,), float("nan"), **f32)
        self.lang = torch.zeros(n, dtype=torch.long, device=dev)
        self.member = torch.zeros(len(self._gates), n, dtype=torch.bool, device=dev)
        self.deciding = torch.zeros(len(self._gates), n, dtype=torch.bool, device=dev)
        # per token row: its slot
        self.token_slot = torch.full((max_tokens,), slots, dtype=torch.long, device=dev)
        # what the host knows of this pass (used to skip empty work when not capturing)
        self._slot_gate: dict[int, int] = {}
        self._slot_proj: dict[int, set[Point]] = {}
        self._slot_steers: dict[int, set[Point]] = {}
        self._reading: set[ReadKey] = set()
        self._deciding: set[int] = set()
        self._steering: set[Point] = set()
        self._proj: set[Point] = set()
        self._planned = 0
        self._reads_at: dict[Point, list[ReadKey]] = {}
        for k in keys:
            self._reads_at.setdefault(k[0], []).append(k)
        self._gates_at: dict[Point, list[int]] = {}
        for i, g in enumerate(self._gates):
            self._gates_at.setdefault(g.point, []).append(i)
        self.points = sorted(set(self._reads_at) | set(self.table))

    def tensors(self) -> list[torch.Tensor]:
        """Every persistent tensor (what a captured or exported graph reads and writes)."""
        out = [self.token_slot, self.fired, self.score, self.lang, self.member, self.deciding]
        for k in self.keys:
            out += [self.acc[k], self.count[k], self.weight[k]]
        for p in self.table:
            out += [self.table[p], self.alpha[p], self.beta[p], self.urow[p]]
        return out

    # ------------------------------------------------------------- host side
    def gate_index(self, gate: Gate) -> int:
        return self._gate_of[id(gate)]

    def assign(self, slot: int, row: RowSteering) -> None:
        """A request (``row``, resolved) takes ``slot``: its coefficients at every point,
        fired for ``always``, its gate's membership; its read sums start from zero."""
        if not 0 <= slot < self.empty:
            raise ValueError(f"slot {slot} is not in 0..{self.empty - 1}")
        steers: set[Point] = set()
        proj: set[Point] = set()
        for p in self.table:
            coef = coefficients(row, p)
            a = b = 0.0
            r = 0
            if coef is not None:
                vec = row.vector.direction(row.direction)[p[1]]  # type: ignore[union-attr]
                _, a, b = coef
                r = self._row_of[(p, id(vec), b != 0.0)]
                if a != 0.0 or b != 0.0:
                    steers.add(p)
                if b != 0.0:
                    proj.add(p)
            self.alpha[p][slot], self.beta[p][slot], self.urow[p][slot] = a, b, r
        self._slot_steers[slot], self._slot_proj[slot] = steers, proj
        self.fired[slot] = 1.0 if row.mode == "always" else 0.0
        self.score[slot] = float("nan")
        self.lang[slot] = 0
        self.member[:, slot] = False
        self._slot_gate.pop(slot, None)
        gp = row.gate_point()
        if gp is not None:
            g = self.gate_index(row.vector.gate)  # type: ignore[union-attr, arg-type]
            self.member[g, slot] = True
            self._slot_gate[slot] = g
        for k in self.keys:
            self.acc[k][slot] = 0.0
            self.count[k][slot] = 0.0

    def release(self, slot: int) -> None:
        """The slot's request ended: it steers nothing until assigned again."""
        for p in self.table:
            self.alpha[p][slot] = self.beta[p][slot] = 0.0
        self.fired[slot] = 0.0
        self.member[:, slot] = False
        self._slot_gate.pop(slot, None)
        self._slot_steers.pop(slot, None)
        self._slot_proj.pop(slot, None)

    def plan(self, segments: Sequence[Segment]) -> list[int]:
        """Write the per-row buffers of the pass about to run; returns the slots that decide
        their gate in it (its last prompt token is in the pass)."""
        self.clear()
        total = max((s.start + s.rows for s in segments), default=0)
        if total > self.max_tokens:
            raise ValueError(f"a pass of {total} token rows exceeds the buffers' "
                             f"{self.max_tokens}")
        slot_rows = torch.full((total,), self.empty, dtype=torch.long)
        weights = {k: torch.zeros(total) for k in self.keys}
        deciding = torch.zeros(self.deciding.shape, dtype=torch.bool)
        decide: list[int] = []
        for s in segments:
            slot_rows[s.start:s.start + s.rows] = s.slot
            self._steering |= self._slot_steers.get(s.slot, set())
            self._proj |= self._slot_proj.get(s.slot, set())
            g = self._slot_gate.get(s.slot)
            if not s.reads or g is None:
                continue
            gate = self._gates[g]
            in_prompt = max(0, min(s.rows, s.prompt - s.first))  # prompt rows in the pass
            for key in (gate.lid_key, gate.key):
                if key is None:
                    continue
                w = weights[key]
                if key[1] == "mean":
                    w[s.start:s.start + in_prompt] = 1.0
                elif s.first <= s.prompt - 1 < s.first + s.rows:  # "last"
                    w[s.start + s.prompt - 1 - s.first] = 1.0
                if in_prompt:
                    self._reading.add(key)
            if s.first + s.rows >= s.prompt:
                deciding[g, s.slot] = True
                self._deciding.add(g)
                decide.append(s.slot)
        self.token_slot[:total].copy_(slot_rows)
        for k in self.keys:
            self.weight[k][:total].copy_(weights[k])
        self.deciding.copy_(deciding)
        self._planned = total
        return decide

    def clear(self) -> None:
        """Back to "no request in the pass" (a pass the host did not plan, e.g. a warm-up or
        a capture, then reads and steers nothing)."""
        n = self._planned
        if n:
            self.token_slot[:n].fill_(self.empty)
            for k in self.keys:
                self.weight[k][:n].zero_()
        if self._deciding:
            self.deciding.zero_()
        self._reading, self._deciding = set(), set()
        self._steering, self._proj = set(), set()
        self._planned = 0

    def decisions(self, slots: Sequence[int]) -> list[tuple[float, bool, str | None]]:
        """``(score, fired, language)`` of ``slots`` after the pass that decided them."""
        if not slots:
            return []
        idx = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        score = self.score[idx].cpu().tolist()
        fired = self.fired[idx].cpu().tolist()
        lang = self.lang[idx].cpu().tolist()
        out = []
        for s, sc, f, li in zip(slots, score, fired, lang):
            gate = self._gates[self._slot_gate[s]].gate
            out.append((float(sc), bool(f), gate.languages[li] if gate.language_aware else None))
        return out

    # ------------------------------------------------------------- inside the pass
    def run(self, point: Point, hidden: torch.Tensor, residual: torch.Tensor | None) -> None:
        """The work at ``point`` on ``hidden [N, H]`` (the residual stream is ``hidden +
        residual``), in place; tensor work only."""
        full = self.full or (hidden.is_cuda and torch.cuda.is_current_stream_capturing())
        n = hidden.shape[0]
        slot = self.token_slot[:n]
        stream: torch.Tensor | None = None
        for key in self._reads_at.get(point, ()):
            if full or key in self._reading:
                stream = _stream(hidden, residual) if stream is None else stream
                w = self.weight[key][:n]
                self.acc[key].index_add_(0, slot, stream * w[:, None])
                self.count[key].index_add_(0, slot, w)
        for g in self._gates_at.get(point, ()):
            if full or g in self._deciding:
                self._decide(g)
        if point in self.table and (full or point in self._steering):
            f = self.fired[slot]
            proj = full or point in self._proj
            if proj and stream is None:
                stream = _stream(hidden, residual)
            delta = rank_one_delta(hidden[:, None, :], self.table[point][self.urow[point][slot]],
                                   self.alpha[point][slot] * f, self.beta[point][slot] * f,
                                   None if stream is None else stream[:, None, :], proj)
            hidden.add_(delta[:, 0, :].to(hidden.dtype))

    def _decide(self, g: int) -> None:
        gate = self._gates[g]
        pooled = self.acc[gate.key] / self.count[gate.key].clamp_min(1.0)[:, None]
        score = gate.score(pooled)
        if gate.lid_key is not None:
            lid = self.acc[gate.lid_key] / self.count[gate.lid_key].clamp_min(1.0)[:, None]
            lang = torch.cdist(lid, gate.centroids).argmin(1)
        else:
            lang = torch.zeros_like(self.lang)
        fired = (score > gate.thresholds[lang]).float()
        now = self.deciding[g]
        self.fired.copy_(torch.where(now, fired, self.fired))
        self.score.copy_(torch.where(now, score, self.score))
        self.lang.copy_(torch.where(now, lang, self.lang))


def attach(model: nn.Module, graph: GraphSteering, blocks: str | None = None
           ) -> list[RemovableHandle]:
    """Run ``graph`` inside an HF model whose block outputs are the residual stream: each
    block's input (``resid_pre``) and output (``resid_post``) ``[B, T, H]`` is steered in
    place as ``B*T`` token rows (row ``b*T + t``; padding rows belong to no slot). For
    tests and ``benchmarks/gpu_check.py``; the vLLM plugin calls :meth:`GraphSteering.run`
    from its slots."""
    from ..model.layers import find_layers
    from ..tensors import hidden_of

    layers = find_layers(model, blocks)

    def rows(h: torch.Tensor) -> torch.Tensor:
        return h.view(-1, h.shape[-1])

    def post(layer: int) -> Any:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            graph.run(("resid_post", layer), rows(hidden_of(output)), None)
        return hook

    def pre(layer: int) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            h = args[0] if args else kwargs["hidden_states"]
            graph.run(("resid_pre", layer), rows(h), None)
        return hook

    handles = []
    for i in range(layers.num_layers):
        block = layers.block(i)
        if ("resid_pre", i) in graph.points:
            handles.append(block.register_forward_pre_hook(pre(i), with_kwargs=True))
        if ("resid_post", i) in graph.points:
            handles.append(block.register_forward_hook(post(i)))
    return handles


def _stream(hidden: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """The float32 residual stream: ``hidden + residual`` (vLLM layers), or ``hidden``."""
    return (hidden if residual is None else hidden + residual).float()
