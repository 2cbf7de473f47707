"""lasa vectors inside real vLLM (CPU, float32) on the embedded SmolLM2-135M-Instruct, in
eager mode (``enforce_eager=True``) with the host steering (``steering="host"``; the
compiled default with the graph steering: test_vllm_compiled.py).

Runs in the ``.venv-vllm`` environment (``make test-vllm``); skipped where vLLM is not
installed. One ``vllm.LLM`` for the module, in-process (conftest.py), max 16 new tokens.
"""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here (make setup-vllm)")

from vllm import SamplingParams  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402

from lasa_steer import SteeringVector, VectorMismatchError  # noqa: E402
from lasa_steer.engines import vllm as lasa_vllm  # noqa: E402
from lasa_steer.steering.api import end_of_turn  # noqa: E402
from lasa_steer.steering.openers import Openers  # noqa: E402
from vllm_cases import (MIXED, NEW, VECTOR, check_gates, check_steered,  # noqa: E402
                        check_unsteered, params, prompt, run_mixed, shut_down, start_engine,
                        tokens)

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def llm(hf):
    """The engine, its greedy outputs before install (slots idle), then the vector
    installed."""
    # the host steering (Python per pass), kept as a switch; the compiled module runs the
    # default graph steering
    eng = start_engine(**lasa_vllm.engine_kwargs(enforce_eager=True, steering="host"))
    try:
        _, ids = hf
        vanilla = [tokens(o) for o in eng.generate([prompt(x) for x in ids], params(),
                                                   use_tqdm=False)]
        lasa_vllm.install(eng, {"smollm2": VECTOR})
        yield eng, vanilla
    finally:
        shut_down(eng)


@pytest.fixture(scope="module")
def mixed(llm, hf):
    engine, _ = llm
    before = engine.collective_rpc("lasa_stats")[0]
    outs, report = run_mixed(engine, hf[1])
    after = engine.collective_rpc("lasa_stats")[0]
    # 14 requests, 8 at a time: later ones join a running batch, so some passes read new
    # prompts' gates beside rows that are decoding (continuous batching is exercised)
    assert after["gate_reads_beside_running"] > before["gate_reads_beside_running"]
    return outs, report


def test_unsteered_requests_equal_vanilla_vllm(llm, mixed):
    outs, report = mixed
    check_unsteered(outs, report, [llm[1][i] for i, _ in MIXED])


def test_steered_requests_equal_the_hf_engine(hf, hf_mixed, llm, mixed):
    outs, _ = mixed
    check_steered(hf[0], hf_mixed, outs, [llm[1][i] for i, _ in MIXED])


def test_gate_fires_on_exactly_the_rows_the_hf_gate_fires_on(hf_mixed, mixed):
    outs, report = mixed
    check_gates(hf_mixed, outs, report)


def test_finished_requests_leave_the_live_state(hf, llm, mixed):
    engine, _ = llm
    outs, _ = mixed
    again = engine.generate([prompt(hf[1][0])], params(), use_tqdm=False)
    report = lasa_vllm.report(engine)
    assert all(report[o.request_id]["live"] is False for o in outs)
    assert again[0].request_id in report


@pytest.mark.parametrize("bad, needle", [
    ({"lasa_mode": "sometimes"}, "lasa_mode"),
    ({"lasa_vector": "nope"}, "no such vector"),
    ({"lasa_action": "shout"}, "lasa_action"),
    ({"lasa_strength": "big"}, "lasa_strength"),
    ({"lasa_strenght": 1.0}, "unknown steering key"),
])
def test_bad_request_settings_are_refused_at_admission(hf, llm, bad, needle):
    engine, _ = llm
    with pytest.raises(VLLMValidationError, match=needle):
        engine.generate([prompt(hf[1][0])],
                        SamplingParams(max_tokens=2, extra_args=bad), use_tqdm=False)


def test_a_sampled_refusal_is_the_opener_exactly(hf, llm):
    """Forced through the logits, the opener survives temperature sampling and penalties."""
    model, ids = hf
    engine, _ = llm
    params = SamplingParams(max_tokens=NEW, temperature=1.0, seed=1, repetition_penalty=1.3,
                            extra_args=lasa_vllm.xargs(vector="smollm2", mode="always",
                                                       action="refuse"))
    out = engine.generate([prompt(ids[1])], params, use_tqdm=False)[0]
    openers = Openers.for_tokenizer(model.lasa_tokenizer, end_of_turn(model))
    expect = list(openers.sequence(None, True))[:NEW]
    assert tokens(out) == expect
    assert lasa_vllm.report(engine, [out.request_id])[out.request_id]["opener"] == \
        list(openers.sequence(None, True))


def test_install_refuses_a_vector_of_another_model(hf, llm, mixed, tmp_path):
    engine, _ = llm
    vec = SteeringVector.load(VECTOR)
    vec.model.num_layers = 24
    bad = vec.save(tmp_path / "other.safetensors")
    with pytest.raises(VectorMismatchError, match="num_layers"):
        lasa_vllm.install(engine, {"other": str(bad)})
    # the earlier install keeps serving: the always-add row steers as before
    k = next(k for k, (_, s) in enumerate(MIXED) if s.get("mode") == "always")
    again = engine.generate([prompt(hf[1][MIXED[k][0]])],
                            params(vector="smollm2", **MIXED[k][1]), use_tqdm=False)
    assert tokens(again[0]) == tokens(mixed[0][k])


def test_the_running_engine_config_passes_and_others_are_refused(llm):
    from types import SimpleNamespace as NS

    from lasa_steer.engines.vllm.checks import problems

    engine, _ = llm
    vc = engine.llm_engine.vllm_config
    assert problems(vc, vllm.__version__) == []

    def cfg(**changes):
        base = dict(compilation_config=vc.compilation_config,
                    scheduler_config=vc.scheduler_config, cache_config=vc.cache_config,
                    parallel_config=vc.parallel_config, speculative_config=None,
                    use_v2_model_runner=False, additional_config=vc.additional_config,
                    model_config=vc.model_config)
        return NS(**{**base, **changes})

    assert problems(cfg(compilation_config=NS(mode=2, cudagraph_mode="NONE")),
                    vllm.__version__) == []  # compiled without CUDA graphs: fine
    assert "CUDA graphs" in problems(cfg(compilation_config=NS(mode=3,
                                                               cudagraph_mode="PIECEWISE")),
                                     vllm.__version__)[0]
    assert "steering slots" in problems(cfg(additional_config={}), vllm.__version__)[0]
    assert "logits processor" in problems(cfg(model_config=NS(logits_processors=None)),
                                          vllm.__version__)[0]
    # this engine runs the host steering: chunked prefill is refused, prefix caching exact
    assert "chunked prefill is on with the host steering" in problems(
        cfg(scheduler_config=NS(enable_chunked_prefill=True)), vllm.__version__)[0]
    assert vc.cache_config.enable_prefix_caching
    assert problems(cfg(cache_config=NS(enable_prefix_caching=True)), vllm.__version__) == []
    assert "pipeline" in problems(cfg(parallel_config=NS(pipeline_parallel_size=2)),
                                  vllm.__version__)[0]
    assert "not a tested release" in problems(vc, "0.40.0")[0]
