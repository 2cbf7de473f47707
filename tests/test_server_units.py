"""Fast tests of the server's parts on a tiny random Llama: KV merging, the scheduler's
batch-invariance with per-row steering, text streaming with stop strings, sampling."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_tiny  # noqa: E402
from helpers import make_vector  # noqa: E402

from lasa_steer import RowSteering, SteeringEngine  # noqa: E402
from lasa_serve import kv  # noqa: E402
from lasa_serve.metrics import Metrics  # noqa: E402
from lasa_serve.sampling import make_sampler, pick_all  # noqa: E402
from lasa_serve.scheduler import Job, Scheduler  # noqa: E402
from lasa_serve.textstream import TextStream  # noqa: E402


class CharTok:
    """Token id i decodes to chr(ord('a') + i % 26); id 2 is EOS, 0 is padding."""

    pad_token_id = 0
    eos_token_id = 2

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i % 26) for i in ids if i not in (0, 2))


def _prefill(model, seqs):
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    cache = DynamicCache()
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                cache=cache, use_cache=True)
    return cache, mask, out.logits[:, -1]


def _step(model, cache, mask, tokens):
    ids = torch.tensor(tokens).view(-1, 1)
    pos = mask.sum(-1, keepdim=True)
    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
    return mask, out.logits[:, -1]


@torch.inference_mode()
def test_kv_merge_and_select_match_separate_runs():
    model = make_tiny("llama")
    a, b = [5, 6, 7, 8, 9, 10, 11], [20, 21, 22]
    ca, ma, _ = _prefill(model, [a])
    cb, mb, _ = _prefill(model, [b])
    cache, mask = kv.merge(ca, ma, cb, mb)
    assert mask.tolist() == [[1] * 7, [0] * 4 + [1] * 3]
    mask, merged = _step(model, cache, mask, [30, 31])
    _, la = _step(model, *_prefill(model, [a])[:2], [30])
    _, lb = _step(model, *_prefill(model, [b])[:2], [31])
    torch.testing.assert_close(merged, torch.cat([la, lb]), rtol=1e-4, atol=1e-4)
    # dropping the long row trims the padding columns no remaining row needs
    cache, mask = kv.select(cache, mask, [1])
    assert mask.tolist() == [[1] * 4] and cache.get_seq_length() == 4
    _, after = _step(model, cache, mask, [32])
    cb2, mb2, _ = _prefill(model, [b])
    mb2, _ = _step(model, cb2, mb2, [31])
    _, ref = _step(model, cb2, mb2, [32])
    torch.testing.assert_close(after, ref, rtol=1e-4, atol=1e-4)


def _run_jobs(sched, specs, join_after=None):
    """Submit (prompt, steering, max_tokens) jobs; return generated text per job. Jobs from
    index ``join_after`` on are submitted when job 0 has produced text, so they join a
    running batch."""
    out, done = {}, threading.Event()
    later: list = []
    left = [len(specs)]
    lock = threading.Lock()

    def emitter(k):
        def emit(evs):
            for e in evs:
                if k == 0 and later and e["type"] == "text":
                    while later:
                        sched.submit(later.pop(0))
                if e["type"] == "text":
                    out[k] = out.get(k, "") + e["text"]
                if e["type"] in ("done", "error"):
                    assert e["type"] == "done", e
                    with lock:
                        left[0] -= 1
                        if left[0] == 0:
                            done.set()
        return emit

    jobs = [Job(id=str(k), prompt_ids=prompt, max_tokens=max_tokens,
                samplers=[make_sampler(0.0, 1.0, None)], emit=emitter(k), steering=steering)
            for k, (prompt, steering, max_tokens) in enumerate(specs)]
    if join_after:
        later.extend(jobs[join_after:])
        jobs = jobs[:join_after]
    for job in jobs:
        sched.submit(job)
    assert done.wait(60)
    return [out.get(k, "") for k in range(len(specs))]


def test_scheduler_batch_invariance_with_mixed_steering():
    model = make_tiny("llama")
    vec = make_vector(model, gate_layer=1, threshold=-1e9, norm=20.0)
    engine = SteeringEngine(model)
    sched = Scheduler(model, CharTok(), engine, Metrics(), max_batch=8)
    try:
        settings = [RowSteering(mode="off"), RowSteering(vec, 1.0, "gate"),
                    RowSteering(vec, 0.5, "always"), RowSteering(vec, 1.0, "gate", "project")]
        specs = [([3 + i, 4 + 2 * i, 5 + i][: 2 + i % 2] * (1 + i % 3), settings[i % 4],
                  6 + i % 5) for i in range(12)]
        specs[0] = (specs[0][0], specs[0][1], 20)  # long-running first row
        alone = [_run_jobs(sched, [s])[0] for s in specs]
        assert _run_jobs(sched, specs) == alone  # one prefill group
        assert _run_jobs(sched, specs, join_after=4) == alone  # 8 rows join a running batch
        # steering changes the output (the vector is strong), so rows did not share it
        assert alone[0] != _run_jobs(sched, [(specs[0][0], settings[2], specs[0][2])])[0]
        for _ in range(200):  # 'done' is sent just before the row leaves the batch
            if sched.load() == {"running": 0, "waiting": 0}:
                break
            time.sleep(0.01)
        assert sched.load() == {"running": 0, "waiting": 0}
    finally:
        sched.close()
        engine.remove()


def test_text_stream_holds_back_possible_stop():
    ts = TextStream(CharTok(), stop=["cde"])  # holds back len("cde") - 1 = 2 characters
    for t in (1, 24, 25):  # 'b', 'y', 'z'
        assert ts.add(t) is False
    assert ts.release() == "b"
    assert ts.add(28) is False  # 'c'
    assert ts.add(3) is False  # 'd'
    assert ts.release() == "yz"  # "cd" is held: it may become "cde"
    assert ts.add(4) is True  # 'e' completes the stop string
    assert ts.text == "byz"
    assert ts.release(final=True) == ""
    plain = TextStream(CharTok())
    plain.add(1)
    assert plain.release() == "b"  # no stop strings: nothing held back


def test_sampling_seeded_and_degenerate():
    logits = torch.randn(3, 40)
    a = pick_all([make_sampler(1.0, 0.9, 5) for _ in range(3)], logits)
    b = pick_all([make_sampler(1.0, 0.9, 5) for _ in range(3)], logits)
    assert a == b
    best = torch.argmax(logits, -1).tolist()
    assert pick_all([make_sampler(0.0, 1.0, None)] * 3, logits) == best
    assert pick_all([make_sampler(1e-300, 1e-300, 1)] * 3, logits) == best
    nan = torch.full((1, 40), float("nan"))
    assert pick_all([make_sampler(1.0, 1.0, 1)], nan) == [0]


def test_metrics_render():
    m = Metrics()
    m.request("/v1/chat/completions", 200, 0.3)
    m.gate(True, evaluated=True)
    m.completion_tokens(7)
    text = m.render()
    assert 'lasa_requests_total{path="/v1/chat/completions",status="200"} 1' in text
    assert "lasa_gate_fires_total 1" in text and "lasa_completion_tokens_total 7" in text
    assert 'lasa_request_duration_seconds_bucket{path="/v1/chat/completions",le="0.5"} 1' in text


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))


def test_chunked_prefill_matches_whole_prefill():
    """A prompt longer than the step budget is prefilled in chunks between decode steps:
    greedy outputs are those of a whole prefill (steering 'always' steers every chunk, a
    forced 'prefix' opener starts at its first token, a fired gate row is decided on the
    last chunk and prefilled again, steered: tests/test_chunked_gate.py has more)."""
    from lasa_steer.steering.openers import Openers
    from lasa_serve.prefill import MIN_CHUNK

    model = make_tiny("llama")
    vec = make_vector(model, gate_layer=1, threshold=-1e9, norm=20.0)
    openers = Openers({"en": (7, 8, 9)}, None)
    settings = [RowSteering(mode="off"), RowSteering(vec, 0.5, "always"),
                RowSteering(vec, 0.5, "always", "prefix", openers=openers),
                RowSteering(vec, 1.0, "gate")]
    long = [3 + (i * 7) % 40 for i in range(5 * MIN_CHUNK + 3)]
    specs = [([5, 6, 7], settings[0], 30)] + [(long, s, 6) for s in settings]
    outs = []
    for budget in (10_000, MIN_CHUNK):
        engine = SteeringEngine(model)
        sched = Scheduler(model, CharTok(), engine, Metrics(), max_batch=8,
                          max_batch_tokens=budget)
        try:
            outs.append(_run_jobs(sched, specs, join_after=1))
        finally:
            sched.close()
            engine.remove()
    assert outs[0] == outs[1]
    assert outs[1][3].startswith("hij")  # the forced opener 7, 8, 9


def test_unusable_steering_fails_its_request_alone():
    """A job whose steering cannot be resolved gets an error; the running stream goes on."""
    model = make_tiny("llama")
    vec = make_vector(model, gate_layer=1, threshold=-1e9, norm=20.0)
    engine = SteeringEngine(model)
    sched = Scheduler(model, CharTok(), engine, Metrics(), max_batch=8, max_batch_tokens=16)
    events: dict[int, list[str]] = {0: [], 1: []}
    finished = threading.Event()

    def emitter(k):
        def emit(evs):
            events[k].extend(e["type"] for e in evs)
            if all(set(v) & {"done", "error"} for v in events.values()):
                finished.set()
        return emit

    bad = RowSteering(vec, 1.0, "always", direction="nope")
    jobs = [Job(id=str(k), prompt_ids=prompt, max_tokens=8,
                samplers=[make_sampler(0.0, 1.0, None)], emit=emitter(k), steering=s)
            for k, (prompt, s) in enumerate([([5, 6, 7], RowSteering(mode="off")),
                                             ([5] * 40, bad)])]
    try:
        sched.submit(jobs[0])
        sched.submit(jobs[1])
        assert finished.wait(60)
        assert events[1] == ["error"] and events[0][-1] == "done"
    finally:
        sched.close()
        engine.remove()
