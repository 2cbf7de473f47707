"""The graph-safe steering step (:mod:`lasa_steer.steering.graph`) against the HF engine.

A tiny HF Llama runs a right-padded batch whose rows are flattened into token rows, as vLLM
flattens its batch; forward hooks call :meth:`GraphSteering.run` in place at every point.
Each row must equal the HF engine (``steer()``) run on that row alone, with the same gate
decision, eagerly, compiled with ``fullgraph=True``, exported and replayed with new
buffers, and captured in a CUDA graph (where CUDA exists)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny
from helpers import make_vector, right_pad
from lasa_steer import find_layers, steer
from lasa_steer.steering.graph import GraphSteering, Segment, attach
from lasa_steer.steering.rows import RowSteering
from lasa_steer.vector.probe import Probe

PROMPTS = [[5, 9, 11, 40, 7], [3, 4, 5], [60, 61, 62, 63, 64, 65, 66], [8, 9, 10, 11],
           [20, 21, 22, 23, 24, 25]]
# rows of one batch: gate rows with every action, always rows, an unsteered row
SETTINGS_A = [dict(mode="gate", action="add", strength=2.0), dict(mode="always", action="project"),
              dict(mode="off"), dict(mode="always", action="clamp", strength=1.0),
              dict(mode="gate", action="project")]
SETTINGS_B = [dict(mode="always", action="add", strength=3.0), dict(mode="gate", action="add"),
              dict(mode="gate", action="clamp"), dict(mode="off"),
              dict(mode="always", action="add", strength=-1.0)]


def _vector(model, pooling="last", languages=False, probe=False):
    """A vector steering blocks 2-3 with a gate at block 1 whose threshold lies between the
    scores of the two gate prompts of :data:`SETTINGS_A` (so one fires, one does not)."""
    vec = make_vector(model, layers=[2, 3], gate_layer=1, threshold=0.0, clamp_target=0.5,
                      pooling=pooling)
    g = torch.Generator().manual_seed(3)
    h = vec.model.hidden_size
    if probe:
        vec.gate.probe = Probe(torch.randn(6, h, generator=g), torch.randn(6, generator=g),
                               torch.randn(6, generator=g), torch.randn(1, generator=g))
    if languages:  # a language-aware gate: two made-up languages read at block 0
        vec.gate.languages = ("xa", "xb")
        vec.gate.centroids = torch.randn(2, h, generator=g)
        vec.gate.lid_layer = 0
    scores = [_reference(model, vec, [PROMPTS[i]], [SETTINGS_A[i]])[0][1][0] for i in (0, 4)]
    vec.gate.threshold = sum(scores) / 2
    if languages:
        vec.gate.thresholds = {"xa": sum(scores) / 2}  # "xb" falls back to the threshold
    return vec


def _reference(model, vec, prompts, settings):
    """Per row alone: the HF engine's logits and gate results (score, fired, language)."""
    out = []
    for p, s in zip(prompts, settings):
        with torch.no_grad(), steer(model, vec, **s) as h:
            logits = model(torch.tensor([p])).logits[0]
            gate = (float(h.scores[0]), bool(h.fired[0]), h.langs[0]) \
                if s["mode"] == "gate" else None
        out.append((logits, gate))
    return out


class Driven:
    """``model`` with ``graph`` run in place on its flattened ``[B*T, H]`` rows."""

    def __init__(self, model, vec, full=False, device="cpu"):
        self.model, self.vec = model, vec
        self.graph = GraphSteering([vec], slots=8, max_tokens=64,
                                   hidden=find_layers(model).hidden_size, device=device,
                                   full=full)
        self.handles = attach(model, self.graph)

    def load(self, prompts, settings):
        """Assign a slot per steered row and plan the pass; ``(ids, mask, deciding)``."""
        ids, mask = right_pad(prompts)
        width = ids.shape[1]
        segments = []
        for b, (p, s) in enumerate(zip(prompts, settings)):
            row = RowSteering(vector=self.vec, **s).resolved()
            if row.mode == "off":
                continue
            self.graph.assign(b, row)
            segments.append(Segment(b, b * width, len(p), 0, len(p), row.gate_point() is not None))
        return ids, mask, self.graph.plan(segments)

    def remove(self):
        for h in self.handles:
            h.remove()


def _check(out, mask, ref, decided, settings):
    for b, (logits, gate) in enumerate(ref):
        n = int(mask[b].sum())
        torch.testing.assert_close(out[b, :n], logits, rtol=0, atol=2e-5)
        if gate is not None:
            score, fired, lang = decided[b]
            assert fired is gate[1] and lang == gate[2]
            assert score == pytest.approx(gate[0], rel=1e-5, abs=1e-6)
        else:
            assert settings[b]["mode"] != "gate"


def _decided(graph, deciding):
    return dict(zip(deciding, graph.decisions(deciding)))


@pytest.mark.parametrize("pooling, languages, probe", [
    ("last", False, False), ("mean", False, False), ("last", True, False), ("mean", True, True)])
def test_each_row_equals_the_hf_engine_on_that_row_alone(pooling, languages, probe):
    model = make_tiny("llama")
    vec = _vector(model, pooling, languages, probe)
    ref = _reference(model, vec, PROMPTS, SETTINGS_A)
    fired = [g[1] for _, g in ref if g is not None]
    assert any(fired) and not all(fired)  # both decisions occur
    driven = Driven(model, vec)
    ids, mask, deciding = driven.load(PROMPTS, SETTINGS_A)
    assert sorted(deciding) == [0, 4]
    with torch.no_grad():
        out = model(ids, attention_mask=mask).logits
    _check(out, mask, ref, _decided(driven.graph, deciding), SETTINGS_A)
    # the unsteered row is bit-identical to the model without steering, in the same batch
    driven.remove()
    with torch.no_grad():
        plain = model(ids, attention_mask=mask).logits
    assert torch.equal(out[2], plain[2]) and not torch.equal(out[1], plain[1])


def test_the_full_program_gives_what_the_skipping_one_gives():
    """Capture runs every point's whole tensor step; eager passes skip what the host knows
    is empty: the outputs are bit-identical."""
    model = make_tiny("llama")
    vec = _vector(model)
    outs = []
    for full in (False, True):
        driven = Driven(model, vec, full=full)
        ids, mask, _ = driven.load(PROMPTS, SETTINGS_B)
        with torch.no_grad():
            outs.append(model(ids, attention_mask=mask).logits)
        driven.remove()
    assert torch.equal(outs[0], outs[1])


def test_unplanned_passes_read_and_steer_nothing():
    """After :meth:`GraphSteering.clear` (the host does it after every pass) a pass it did
    not plan, such as a warm-up or a capture, leaves the model and the decisions alone."""
    model = make_tiny("llama")
    vec = _vector(model)
    driven = Driven(model, vec, full=True)
    ids, mask, deciding = driven.load(PROMPTS, SETTINGS_A)
    with torch.no_grad():
        model(ids, attention_mask=mask)
        before = driven.graph.decisions(deciding)
        driven.graph.clear()
        out = model(ids, attention_mask=mask).logits
    driven.remove()
    with torch.no_grad():
        plain = model(ids, attention_mask=mask).logits
    assert driven.graph.decisions(deciding) == before
    assert torch.equal(out, plain)


def test_compiles_with_fullgraph_once_and_replays_new_buffers():
    model = make_tiny("llama")
    vec = _vector(model)
    batches = [(PROMPTS, SETTINGS_A), (PROMPTS[::-1], SETTINGS_B)]
    refs = [_reference(model, vec, p, s) for p, s in batches]
    driven = Driven(model, vec, full=True)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=backend, fullgraph=True)  # raises on a break
    for (prompts, settings), ref in zip(batches, refs):
        ids, mask, deciding = driven.load(prompts, settings)
        with torch.no_grad():
            out = compiled(ids, attention_mask=mask).logits
        _check(out, mask, ref, _decided(driven.graph, deciding), settings)
    assert len(graphs) == 1  # the second batch ran the same graph with new buffers


class _Buffers(torch.nn.Module):
    """The graph's tensors as buffers of the model (the same tensor objects), so that an
    exported program reads and writes them."""

    def __init__(self, graph: GraphSteering):
        super().__init__()
        for i, t in enumerate(graph.tensors()):
            self.register_buffer(f"t{i}", t)


def test_export_then_replay_with_changed_buffers_equals_steer():
    model = make_tiny("llama")
    vec = _vector(model, "mean")
    ref_b = _reference(model, vec, PROMPTS[::-1], SETTINGS_B)
    driven = Driven(model, vec, full=True)
    model.lasa_graph = _Buffers(driven.graph)
    ids, mask, _ = driven.load(PROMPTS, SETTINGS_A)
    with torch.no_grad():
        program = torch.export.export(model, (ids,), {"attention_mask": mask,
                                                      "use_cache": False}).module()
    # a new batch: other prompts (same padded shape), other settings, written into the buffers
    ids_b, mask_b, deciding = driven.load(PROMPTS[::-1], SETTINGS_B)
    assert ids_b.shape == ids.shape
    with torch.no_grad():
        out = program(ids_b, attention_mask=mask_b, use_cache=False).logits
    _check(out, mask_b, ref_b, _decided(driven.graph, deciding), SETTINGS_B)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA-graph "
                    "capture and replay of the steering step needs one (benchmarks/gpu_check.py)")
def test_cuda_graph_replay_with_changed_buffers_equals_eager():
    model = make_tiny("llama").cuda()
    vec = _vector(model)
    ref_b = _reference(model, vec, PROMPTS[::-1], SETTINGS_B)
    driven = Driven(model, vec, device="cuda")
    ids, mask, _ = driven.load(PROMPTS, SETTINGS_A)
    ids, mask = ids.cuda(), mask.cuda()
    static_ids, static_mask = ids.clone(), mask.clone()
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            model(static_ids, attention_mask=static_mask, use_cache=False)  # warm-up
        torch.cuda.current_stream().wait_stream(stream)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            static_out = model(static_ids, attention_mask=static_mask, use_cache=False).logits
        ids_b, mask_b, deciding = driven.load(PROMPTS[::-1], SETTINGS_B)
        static_ids.copy_(ids_b.cuda())
        static_mask.copy_(mask_b.cuda())
        cuda_graph.replay()
        torch.cuda.synchronize()
    _check(static_out.cpu(), mask_b, [(r.cuda().cpu(), g) for r, g in ref_b],
           _decided(driven.graph, deciding), SETTINGS_B)
