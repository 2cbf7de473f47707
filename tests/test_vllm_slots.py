"""The vLLM plugin's steering slots (``lasa::steer_`` at every block boundary) without vLLM:
added before torch.compile, they are in the compiled graph, so steering switched on after
compilation runs; with nothing switched on the output is bit-identical to the model
without slots."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest
import torch
from torch import nn

from lasa_steer.engines.vllm.slots import TARGET, add_slots, boundary_points, has_slots

H, N = 8, 3


class Layer(nn.Module):
    """A vLLM-style decoder layer: ``(positions, hidden, residual) -> (hidden, residual)``."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(H, H)

    def forward(self, positions, hidden, residual):
        residual = hidden if residual is None else hidden + residual
        return torch.tanh(self.lin(residual)) * positions[:, None], residual


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Layer() for _ in range(N))

    def forward(self, positions, hidden):
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        return hidden + residual


class Model(nn.Module):
    """Layers at ``model.layers``, as in vLLM's Llama."""

    def __init__(self) -> None:
        super().__init__()
        self.config = NS(hidden_size=H)
        self.model = Inner()

    def forward(self, positions, hidden):
        return self.model(positions, hidden)


@pytest.fixture
def models():
    torch.manual_seed(0)
    plain = Model()
    slotted = Model()
    slotted.load_state_dict(plain.state_dict())
    assert add_slots(slotted) == N and has_slots(slotted) and not has_slots(plain)
    assert add_slots(slotted) == N  # idempotent: no second set of hooks
    yield plain, slotted
    TARGET.fn = None


def test_steering_switched_on_after_compilation_runs_in_the_graph(models):
    plain, slotted = models
    compiled = torch.compile(slotted, backend="aot_eager", fullgraph=True, dynamic=True)
    pos, x = torch.arange(5.0), torch.randn(5, H)
    with torch.no_grad():
        # nothing steers: bit-identical to the model without slots
        assert torch.equal(compiled(pos, x), plain(pos, x))
        calls: list[tuple[int, bool]] = []

        def fn(boundary, hidden, residual):
            calls.append((boundary, residual is None))
            return hidden + 1.0 if boundary == 2 else None
        TARGET.fn = fn  # after compilation, as install() does
        got = compiled(pos, x)
        assert calls == [(0, True), (1, False), (2, False), (3, False)]
        expect = slotted(pos, x)  # eager, same slots
        assert torch.equal(got, expect) and not torch.equal(got, plain(pos, x))
        # another batch size, same graph (vLLM compiles once for every size)
        calls.clear()
        compiled(torch.arange(3.0), torch.randn(3, H))
        assert [b for b, _ in calls] == [0, 1, 2, 3]


def test_boundary_points_are_the_block_output_then_the_next_blocks_input():
    assert boundary_points(2) == (("resid_post", 1), ("resid_pre", 2))


def _runner(num_tokens: int) -> NS:
    """The model runner fields the plugin reads: one request, ``always`` + ``add``."""
    import numpy as np

    xargs = {"lasa_vector": "v", "lasa_mode": "always", "lasa_action": "add"}
    return NS(input_batch=NS(num_reqs=1, req_ids=["r"], num_computed_tokens_cpu=np.zeros(1)),
              query_start_loc=NS(np=np.array([0, num_tokens])),
              requests={"r": NS(sampling_params=NS(extra_args=xargs),
                                num_prompt_tokens=num_tokens)})


def test_the_steering_runs_in_the_compiled_graph_and_a_graph_without_slots_fails_loudly(
        models):
    from helpers import make_vector

    from lasa_steer.engines.vllm.hooks import VllmSteering
    from lasa_steer.engines.vllm.params import Defaults

    plain, slotted = models
    vec = make_vector(plain, layers=[1, 2], gate_layer=0)
    pos, x = torch.arange(5.0), torch.randn(5, H)
    compiled = torch.compile(slotted.model, backend="aot_eager", fullgraph=True, dynamic=True)
    with torch.no_grad():
        before = compiled(pos, x)  # compiled before the steering exists, as in vLLM
        steering = VllmSteering(slotted, _runner(5), {"v": vec}, Defaults())
        slotted.model = compiled  # the outer model is not compiled; its hooks run
        try:
            got = slotted(pos, x)
            assert steering.stats["steered_passes"] == 1 and not torch.equal(got, before)
            steering.remove()
            eager = VllmSteering(slotted, _runner(5), {"v": vec}, Defaults())
            slotted.model = slotted.model._orig_mod
            assert torch.equal(slotted(pos, x), got)  # eager slots: the same update
            eager.remove()
            assert torch.equal(slotted(pos, x), before)  # removed: unsteered again
            # a model whose graph lacks the slots: a pass with work raises, never unsteered
            VllmSteering(plain, _runner(5), {"v": vec}, Defaults())
            with pytest.raises(RuntimeError, match="never called its steering slots"):
                plain(pos, x)
        finally:
            TARGET.fn = None


def _graph_runner(model, chunks, xargs, prompt):
    """A runner whose passes run ``chunks`` rows of one request's prompt in turn."""
    import numpy as np

    state = NS(input_batch=NS(num_reqs=1, req_ids=["r"], num_computed_tokens_cpu=np.zeros(1)),
               query_start_loc=NS(np=np.array([0, chunks[0]])),
               requests={"r": NS(sampling_params=NS(extra_args=xargs),
                                 num_prompt_tokens=prompt)},
               max_num_reqs=4, max_num_tokens=16)
    state._model_forward = lambda positions, hidden: model(positions, hidden)
    return state


def _run_chunks(runner, pos, x, chunks):
    outs, done = [], 0
    for n in chunks:
        runner.input_batch.num_computed_tokens_cpu[0] = done
        runner.query_start_loc.np[1] = n
        outs.append(runner._model_forward(pos[done:done + n], x[done:done + n]))
        done += n
    return torch.cat(outs)


@pytest.mark.parametrize("mode", ["always", "gate"])
def test_the_graph_steering_equals_the_host_steering_in_the_compiled_graph(models, mode,
                                                                         monkeypatch):
    """Same request, same compiled slots: the graph steering (tensor work on buffers, the
    default) gives the host steering's output bit for bit, and its gate the same score and
    decision; then a prompt run in three passes reads its gate across them and decides in
    the last one, with the score of the single pass; it fired with ``add``, so its earlier
    passes were unsteered: the steering asks the scheduler to run the prompt again, and
    that run (the decision kept, no new read) gives the single pass's output."""
    from lasa_steer.engines.vllm import recompute

    from helpers import make_vector

    from lasa_steer.engines.vllm.graph import VllmGraphSteering
    from lasa_steer.engines.vllm.hooks import VllmSteering
    from lasa_steer.engines.vllm.params import Defaults

    plain, slotted = models
    vec = make_vector(plain, layers=[1, 2], gate_layer=0, pooling="mean", threshold=-10.0)
    xargs = {"lasa_vector": "v", "lasa_mode": mode, "lasa_action": "add"}
    pos, x = torch.arange(5.0), torch.randn(5, H)
    slotted.model = torch.compile(slotted.model, backend="aot_eager", fullgraph=True,
                                  dynamic=True)
    with torch.no_grad():
        host = VllmSteering(slotted, _runner(5), {"v": vec}, Defaults())
        host.runner.requests["r"].sampling_params.extra_args = xargs
        want = slotted(positions=pos, hidden=x)  # the host pre-hook reads positions
        host_report = host.report()["r"]
        host.remove()
        runner = _graph_runner(slotted, [5], xargs, 5)
        graph = VllmGraphSteering(slotted, runner, {"v": vec}, Defaults())
        got = runner._model_forward(pos, x)
        assert torch.equal(got, want) and not torch.equal(got, plain(pos, x))
        report = graph.report()["r"]
        assert report["fired"] is host_report["fired"] is True
        if mode == "gate":
            assert report["gate_score"] == pytest.approx(host_report["gate_score"], rel=1e-6)
            # chunked: a new request whose prompt comes in passes of 2, 2 and 1 rows
            graph.remove()
            runner = _graph_runner(slotted, [2, 2, 1], xargs, 5)
            graph = VllmGraphSteering(slotted, runner, {"v": vec}, Defaults())
            seen = []
            original = graph._after_pass

            def after():
                original()
                seen.append(graph.requests["r"].decided)
            graph._after_pass = after
            monkeypatch.setattr(recompute, "PENDING", set())
            first = _run_chunks(runner, pos, x, [2, 2, 1])
            assert seen == [False, False, True]
            assert graph.report()["r"]["gate_score"] == pytest.approx(
                host_report["gate_score"], rel=1e-6)
            assert not torch.allclose(first, want)  # chunks 1-2 ran before the decision
            assert recompute.PENDING == {"r"} and graph.stats["prompt_recomputes"] == 1
            again = _run_chunks(runner, pos, x, [2, 2, 1])  # the scheduler's second run
            torch.testing.assert_close(again, want, rtol=1e-6, atol=1e-6)
            assert seen == [False, False, True, True, True, True]
            assert graph.stats["prompt_recomputes"] == 1
        graph.remove()
        assert "_model_forward" in vars(runner)  # the runner's own, restored
        assert torch.equal(runner._model_forward(pos, x), plain(pos, x))
