"""lasa steering in vLLM's default compiled mode (CPU: Dynamo traced once, Inductor).

The steering slots (``lasa::steer_`` at every block boundary) are added when vLLM loads the
model, before it compiles it, so the compiled graph calls them. In one batch with the eager
tests' mixed settings: unsteered requests equal vanilla compiled vLLM (an engine without
slots, same scheduling), steered ones equal the HF engine, and gates fire on the HF gate's
rows. Two engines, one after the other, in-process.
"""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here (make setup-vllm)")

from vllm.config import CompilationMode  # noqa: E402

from lasa_steer.engines import vllm as lasa_vllm  # noqa: E402
from lasa_steer.engines.vllm.slots import has_slots  # noqa: E402
from vllm_cases import (MIXED, VECTOR, check_gates, check_steered,  # noqa: E402
                        check_unsteered, params, prompt, run_mixed, shut_down, start_engine,
                        tokens)

pytestmark = pytest.mark.vllm
PLAIN = dict(enable_chunked_prefill=False, enable_prefix_caching=False)


def _compiled(llm) -> bool:
    comp = llm.llm_engine.vllm_config.compilation_config
    return comp.mode == CompilationMode.DYNAMO_TRACE_ONCE and comp.backend == "inductor"


@pytest.fixture(scope="module")
def vanilla(hf):
    """Vanilla compiled vLLM (no plugin config: no slots) on the mixed batch's prompts."""
    _, ids = hf
    llm = start_engine(**PLAIN)
    try:
        assert _compiled(llm)
        assert llm.apply_model(has_slots) == [False]
        outs = llm.generate([prompt(ids[i]) for i, _ in MIXED], params(), use_tqdm=False)
        return [tokens(o) for o in outs]
    finally:
        shut_down(llm)


@pytest.fixture(scope="module")
def compiled(hf, vanilla):
    """The plugin's engine, compiled, the vector installed after compilation; the mixed
    batch's outputs and report."""
    _, ids = hf
    llm = start_engine(**lasa_vllm.engine_kwargs())
    try:
        assert _compiled(llm)
        assert llm.apply_model(has_slots) == [True]
        lasa_vllm.install(llm, {"smollm2": VECTOR})
        outs, report = run_mixed(llm, ids)
        yield llm, outs, report
    finally:
        shut_down(llm)


def test_the_compiled_graph_runs_the_steering(compiled):
    llm, _, _ = compiled
    stats = llm.collective_rpc("lasa_stats")[0]
    assert stats["steered_passes"] >= 16 and stats["gate_reads_beside_running"] >= 1


def test_unsteered_requests_equal_vanilla_compiled_vllm(vanilla, compiled):
    _, outs, report = compiled
    check_unsteered(outs, report, vanilla)


def test_steered_requests_equal_the_hf_engine(hf, hf_mixed, vanilla, compiled):
    _, outs, _ = compiled
    check_steered(hf[0], hf_mixed, outs, vanilla)


def test_gates_fire_on_exactly_the_hf_gates_rows(hf_mixed, compiled):
    _, outs, report = compiled
    check_gates(hf_mixed, outs, report)
