"""Issue 10.3 for mode ``gate``: a prompt prefilled in chunks gets the gate decision, the
language and the generated tokens of the whole-prompt pass.

The engine adds each chunk's states to running sums while the state's ``more_prompt`` is
set and decides (``gate.decide``) on the last chunk; the server's prefill runs a prompt
once more, decided, when a fired row steers its prompt tokens (a whole pass steers them
from the gate block on, in the same pass)."""

from __future__ import annotations

import inspect
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_tiny  # noqa: E402
from helpers import make_vector  # noqa: E402

from lasa_steer import BatchState, Gate, RowSteering, SteeringEngine  # noqa: E402
from lasa_steer.steering.openers import Openers  # noqa: E402
from lasa_steer.tensors import left_pad, position_ids  # noqa: E402
from lasa_serve.metrics import Metrics  # noqa: E402
from lasa_serve.prefill import MIN_CHUNK  # noqa: E402
from lasa_serve.sampling import make_sampler  # noqa: E402
from lasa_serve.scheduler import Job, Scheduler  # noqa: E402

PROMPTS = [[3 + (7 * i + 3 * k) % 90 for i in range(n)] for k, n in
           enumerate([41, 7, 23, 40, 12, 33])]


def _language_aware(vec, model, lid_layer=0):
    """The vector's gate, language-aware: two random centroids at ``lid_layer``."""
    g = torch.Generator().manual_seed(5)
    h = model.config.hidden_size
    vec.gate = replace(vec.gate, languages=("xa", "xz"), lid_layer=lid_layer,
                       centroids=torch.randn(2, h, generator=g),
                       thresholds={"xa": -1e9, "xz": 1e9})
    return vec


def _cache_kw(model) -> str:
    """transformers >= 5.24 names the KV-cache argument ``cache`` (as the scheduler does)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"


def _gate_results(model, engine, rows, chunk):
    """Scores, decisions and languages of one prompt pass over ``PROMPTS`` (left-padded),
    whole (``chunk`` None) or in chunks of ``chunk`` columns."""
    ids, mask = left_pad(PROMPTS, 0)
    state = BatchState.new(rows)
    engine.use(state)
    cache = DynamicCache()
    width = ids.shape[1]
    step = width if chunk is None else chunk
    with torch.inference_mode():
        for a in range(0, width, step):
            b = min(width, a + step)
            state.more_prompt = b < width
            model(input_ids=ids[:, a:b], attention_mask=mask[:, :b],
                  position_ids=position_ids(mask)[:, a:b], use_cache=True,
                  **{_cache_kw(model): cache})
            assert bool(state.decided.all()) == (b == width)  # decided on the last chunk
    state.more_prompt = False
    engine.use(None)
    return state.scores.clone(), state.fired.clone(), list(state.langs)


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("aware", [False, True], ids=["plain", "language-aware"])
def test_engine_chunked_gate_equals_whole_pass(pooling, aware):
    model = make_tiny("llama")
    vec = make_vector(model, gate_layer=2, pooling=pooling)
    if aware:
        vec = _language_aware(vec, model)
    engine = SteeringEngine(model)
    try:
        rows = [RowSteering(vec, 1.0, "gate")] * len(PROMPTS)
        scores, _, langs = _gate_results(model, engine, rows, None)
        if not aware:  # a threshold between the scores: some rows fire, some do not
            mid = scores.sort().values[len(PROMPTS) // 2 - 1: len(PROMPTS) // 2 + 1].mean()
            vec.gate = replace(vec.gate, threshold=float(mid))
        whole = _gate_results(model, engine, rows, None)
        assert 0 < int(whole[1].sum()) < len(PROMPTS)
        for chunk in (5, 16, 17):  # some chunks are padding only for the short rows
            chunked = _gate_results(model, engine, rows, chunk)
            torch.testing.assert_close(chunked[0], whole[0], rtol=1e-5, atol=1e-5)
            assert chunked[1].tolist() == whole[1].tolist()
            assert chunked[2] == whole[2]
        if aware:
            assert set(whole[2]) == {"xa", "xz"}
    finally:
        engine.remove()


def _serve(model, budget, specs):
    """(steering event, generated text) per job of ``specs`` [(prompt, steering, max_tokens)],
    all submitted together to a scheduler with step budget ``budget``."""
    engine = SteeringEngine(model)
    sched = Scheduler(model, _CharTok(), engine, Metrics(), max_batch=16,
                      max_batch_tokens=budget)
    out: dict[int, dict] = {k: {"text": ""} for k in range(len(specs))}
    done = threading.Event()
    left = [len(specs)]
    lock = threading.Lock()

    def emitter(k):
        def emit(evs):
            for e in evs:
                if e["type"] == "steering":
                    out[k].update(score=e["score"], fired=e["fired"], language=e["language"])
                elif e["type"] == "text":
                    out[k]["text"] += e["text"]
                elif e["type"] in ("done", "error"):
                    assert e["type"] == "done", e
                    with lock:
                        left[0] -= 1
                        if not left[0]:
                            done.set()
        return emit

    try:
        for k, (prompt, steering, max_tokens) in enumerate(specs):
            sched.submit(Job(id=str(k), prompt_ids=prompt, max_tokens=max_tokens,
                             samplers=[make_sampler(0.0, 1.0, None)], emit=emitter(k),
                             steering=steering))
        assert done.wait(120)
    finally:
        sched.close()
        engine.remove()
    return [out[k] for k in range(len(specs))]


class _CharTok:
    pad_token_id = 0
    eos_token_id = 2

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i % 26) for i in ids if i not in (0, 2))


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_server_chunked_gate_rows_equal_whole_prefill(pooling):
    """Long gate-mode prompts (fired and not, add/clamp/prefix/refuse, a language-aware
    gate) prefilled in chunks of MIN_CHUNK tokens between the decode steps of a running
    short request: the same scores, decisions, languages and greedy tokens as whole."""
    model = make_tiny("llama")
    low = make_vector(model, gate_layer=1, threshold=-1e9, norm=20.0, pooling=pooling,
                      clamp_target=3.0)  # fires on everything
    high = make_vector(model, gate_layer=1, threshold=1e9, norm=20.0, pooling=pooling)
    aware = _language_aware(make_vector(model, gate_layer=2, norm=20.0, pooling=pooling),
                            model, lid_layer=1)
    openers = Openers({"en": (7, 8, 9)}, None)
    long = [3 + (i * 7) % 40 for i in range(5 * MIN_CHUNK + 3)]
    other = [3 + (i * 11) % 50 for i in range(3 * MIN_CHUNK + 9)]
    specs = [([5, 6, 7], RowSteering(mode="off"), 40),  # running while the others prefill
             (long, RowSteering(low, 1.0, "gate"), 6),
             (other, RowSteering(high, 1.0, "gate"), 6),
             (long, RowSteering(low, 1.0, "gate", "clamp"), 6),
             (other, RowSteering(low, 0.7, "gate", "prefix", openers=openers), 6),
             (long, RowSteering(low, None, "gate", "refuse", openers=openers), 6),
             (other, RowSteering(aware, 1.0, "gate"), 6),
             (long, RowSteering(aware, 1.0, "gate"), 6)]
    whole = _serve(model, 10_000, specs)
    chunked = _serve(model, MIN_CHUNK, specs)
    assert [r["fired"] for r in whole] == [False, True, False, True, True, True,
                                           whole[6]["fired"], whole[7]["fired"]]
    assert [r["language"] for r in whole[6:]] == [r["language"] for r in chunked[6:]]
    for w, c in zip(whole, chunked):
        assert (w["fired"], w["text"]) == (c["fired"], c["text"])
        if w["score"] is None:
            assert c["score"] is None
        else:
            assert c["score"] == pytest.approx(w["score"], rel=1e-4, abs=1e-4)
    assert chunked[4]["text"].startswith("hij") and chunked[5]["text"].startswith("hij")
    # the steering shows: a fired 'add' row differs from the same prompt unsteered
    assert whole[1]["text"] != _serve(model, MIN_CHUNK, [(long, RowSteering(mode="off"), 6)])[0][
        "text"]


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_prefill_chunks_give_the_whole_pass_cache_and_logits(pooling):
    """The prompt pass itself: after chunked prefill, the KV cache and the last logits of
    fired and unfired gate rows (one batch, left-padded) are those of the whole pass. A
    fired row's earlier chunks ran before its decision, so they are run again decided."""
    from lasa_serve.prefill import Prefill

    model = make_tiny("llama")
    vec = make_vector(model, gate_layer=1, norm=20.0, pooling=pooling)
    ids, mask = left_pad(PROMPTS, 0)
    state = BatchState.new([RowSteering(vec, 1.0, "gate")] * len(PROMPTS))
    engine = SteeringEngine(model)
    engine.use(state)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask))
    mid = state.scores.sort().values[len(PROMPTS) // 2 - 1: len(PROMPTS) // 2 + 1].mean()
    vec.gate = replace(vec.gate, threshold=float(mid))
    rows = [RowSteering(vec, 1.0, "gate")] * len(PROMPTS)
    jobs = [Job(id=str(k), prompt_ids=p, max_tokens=1, samplers=[], emit=lambda evs: None,
                steering=r) for k, (p, r) in enumerate(zip(PROMPTS, rows))]
    kw = _cache_kw(model)
    try:
        whole = Prefill.start(jobs, 0, torch.device("cpu"))
        assert whole.step(model, engine, kw)
        chunked = Prefill.start(jobs, 0, torch.device("cpu"))
        passes = 0
        while not chunked.step(model, engine, kw, budget=9):
            passes += 1
    finally:
        engine.remove()
    assert 0 < int(whole.state.fired.sum()) < len(PROMPTS)
    assert chunked.state.fired.tolist() == whole.state.fired.tolist()
    assert chunked.replay and passes == 2 * 5 - 1  # 41 columns: 5 chunks, run twice
    torch.testing.assert_close(chunked.logits, whole.logits, rtol=1e-4, atol=1e-4)
    for layer in range(model.config.num_hidden_layers):
        for got, want in zip(_kv(chunked.cache, layer), _kv(whole.cache, layer)):
            torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-4,
                                       atol=1e-4)


def _kv(cache, layer):
    """(keys, values) of one layer as [B, T, ...] (heads moved after the positions)."""
    if hasattr(cache, "layers"):
        k, v = cache.layers[layer].keys, cache.layers[layer].values
    else:
        k, v = cache.key_cache[layer], cache.value_cache[layer]
    return k.transpose(1, 2), v.transpose(1, 2)
