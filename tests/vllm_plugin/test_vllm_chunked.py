"""Chunked prefill and prefix caching in real vLLM (CPU, float32, eager, the graph
steering): a token budget of :data:`CHUNK` per step splits every test prompt into at least
3 chunks, 32-token blocks (the CPU attention's smallest) let a prompt's first 32 tokens be
reused, and the mixed batch of ``vllm_cases.MIXED`` (off / always / gate requests, repeated
prompts) runs twice, so its second run finds every prompt's leading block cached.

What holds: steered requests give the HF engine's greedy tokens and gate decisions,
unsteered ones vanilla vLLM's (an engine without the plugin, the same settings); fired
``gate`` requests that steer their prompt had it run again (the scheduler's preemption);
requests found cached prompt tokens, and gate requests never did (their first pass starts
at position 0, which the steering checks).
"""

from __future__ import annotations

import pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here (make setup-vllm)")

from vllm import LLM  # noqa: E402

from lasa_steer.engines import vllm as lasa_vllm  # noqa: E402
from vllm_cases import (MIXED, VECTOR, check_gates, check_steered,  # noqa: E402
                        check_unsteered, params, prompt, run_mixed, shut_down, tokens)

pytestmark = pytest.mark.vllm

CHUNK = 12  # tokens per step (prompts are 37-40 tokens: 4 chunks at least)
SETTINGS = dict(model=None, dtype="float32", max_model_len=512, max_num_seqs=8, seed=0,
                enforce_eager=True, enable_chunked_prefill=True, enable_prefix_caching=True,
                max_num_batched_tokens=CHUNK, block_size=32)


def _engine(**kwargs):
    from lasa_steer.model.embedded import ensure_embedded

    return LLM(**{**SETTINGS, "model": str(ensure_embedded()), **kwargs})


@pytest.fixture(scope="module")
def vanilla(hf):
    """Vanilla vLLM (no plugin in the engine's arguments) with the same settings."""
    _, ids = hf
    assert min(len(x) for x in ids) > 3 * CHUNK
    eng = _engine()
    try:
        assert eng.llm_engine.vllm_config.scheduler_config.enable_chunked_prefill
        return [tokens(o) for o in eng.generate([prompt(x) for x in ids], params(),
                                                use_tqdm=False)]
    finally:
        shut_down(eng)


@pytest.fixture(scope="module")
def runs(hf, vanilla):
    """The plugin's engine (the vector installed at load), its worker in a process of its
    own (vLLM's multiprocessing executor, as ``lasa serve`` runs on the CPU: the request to
    run a prompt again travels on the pickled step output): the mixed batch twice, and the
    worker's counters after each run."""
    eng = _engine(**lasa_vllm.engine_kwargs({"smollm2": VECTOR}, enforce_eager=True,
                                            max_num_batched_tokens=CHUNK,
                                            distributed_executor_backend="mp"))
    try:
        cfg = eng.llm_engine.vllm_config
        assert cfg.scheduler_config.enable_chunked_prefill
        assert cfg.cache_config.enable_prefix_caching and cfg.cache_config.block_size == 32
        assert cfg.parallel_config.distributed_executor_backend == "mp"
        assert eng.collective_rpc("lasa_stats")[0]["steered_passes"] == 0
        import os
        assert eng.collective_rpc(lambda worker: os.getpid())[0] != os.getpid()
        out = []
        for _ in range(2):
            outs, report = run_mixed(eng, hf[1])
            out.append((outs, report, dict(eng.collective_rpc("lasa_stats")[0])))
        yield out
    finally:
        shut_down(eng)


@pytest.mark.parametrize("run", [0, 1])
def test_chunked_and_cached_requests_equal_the_hf_engine_and_vanilla(hf, hf_mixed, vanilla,
                                                                   runs, run):
    outs, report, _ = runs[run]
    base = [vanilla[i] for i, _ in MIXED]
    check_unsteered(outs, report, base)
    check_steered(hf[0], hf_mixed, outs, base)
    check_gates(hf_mixed, outs, report)


def test_fired_prompt_steering_gates_ran_their_prompt_again_and_caches_were_hit(hf_mixed,
                                                                               runs):
    """Every fired gate request whose action steers prompt tokens (add, prefix at a
    strength) was split, so it ran its prompt again, once per run. Cache hits, one 32-token
    block each: none in the first run (the ``always`` request on prompt 1 is salted, so it
    does not read the block the unsteered one before it wrote; the gate requests read
    nothing), and in the second exactly one per non-gate request (its own first-run block,
    ordinary or salted); gate requests never read the cache."""
    need = sum(1 for k, (_, s) in enumerate(MIXED)
               if s.get("mode") == "gate" and s.get("action") in ("add", "prefix")
               and hf_mixed[k][1][1])
    assert need >= 2
    (_, _, first), (_, _, second) = runs[0], runs[1]
    assert first["prompt_recomputes"] == need
    assert second["prompt_recomputes"] == 2 * need
    readers = sum(1 for _, s in MIXED if s.get("mode") != "gate")
    assert first["cached_prompt_tokens"] == 0
    assert second["cached_prompt_tokens"] == 32 * readers


def test_requests_with_the_same_settings_give_the_same_tokens_across_runs(runs):
    (a, _, _), (b, _, _) = runs[0], runs[1]
    assert [tokens(o) for o in a] == [tokens(o) for o in b]
