"""The HF engine's KV budget (lasa_serve.budget): a request that can never fit is refused
alone, one that does not fit now waits and then runs as it would alone, and a decode step
that runs out of memory fails the newest request alone."""

from __future__ import annotations

import functools
import threading

import pytest
import torch

pytest.importorskip("fastapi")

from conftest import make_tiny  # noqa: E402
from test_server_units import CharTok  # noqa: E402
from lasa_serve.budget import KVBudget, kv_bytes_per_token, parse_bytes  # noqa: E402
from lasa_serve.metrics import Metrics  # noqa: E402
from lasa_serve.sampling import make_sampler  # noqa: E402
from lasa_serve.scheduler import Job, Scheduler  # noqa: E402
from lasa_steer import SteeringEngine  # noqa: E402

PER_TOKEN = 2 * 4 * 2 * 8 * 4  # K and V x 4 blocks x 2 KV heads x head_dim 8 x float32


class Recorder:
    """Events of several jobs, in the order the worker emitted them."""

    def __init__(self, n: int):
        self.log: list[tuple[int, dict]] = []
        self.left = n
        self.done = threading.Event()
        self.lock = threading.Lock()

    def emitter(self, k: int):
        def emit(evs):
            with self.lock:
                for e in evs:
                    self.log.append((k, e))
                    if e["type"] in ("done", "error"):
                        self.left -= 1
                        if self.left == 0:
                            self.done.set()
        return emit

    def text(self, k: int) -> str:
        return "".join(e["text"] for j, e in self.log if j == k and e["type"] == "text")

    def errors(self, k: int) -> list[dict]:
        return [e for j, e in self.log if j == k and e["type"] == "error"]

    def first(self, k: int, kind: str) -> int:
        return next(i for i, (j, e) in enumerate(self.log) if j == k and e["type"] == kind)


def _job(k, prompt, max_tokens, rec):
    return Job(id=str(k), prompt_ids=prompt, max_tokens=max_tokens,
               samplers=[make_sampler(0.0, 1.0, None)], emit=rec.emitter(k))


def _run(model, specs, kv_budget=None):
    """Submit ``specs`` ((prompt, max_tokens) each) at once; the events of each."""
    engine = SteeringEngine(model)
    sched = Scheduler(model, CharTok(), engine, Metrics(), max_batch=8, kv_budget=kv_budget)
    rec = Recorder(len(specs))
    try:
        with sched._cv:  # all queued before the worker looks (one admission round)
            for k, (prompt, max_tokens) in enumerate(specs):
                sched.submit(_job(k, prompt, max_tokens, rec))
        assert rec.done.wait(60)
    finally:
        sched.close()
        engine.remove()
    return rec


A = ([5, 6, 7, 8], 24)
B = ([9, 10, 11], 20)


def test_budget_arithmetic():
    model = make_tiny("llama")
    assert kv_bytes_per_token(model) == PER_TOKEN
    budget = KVBudget.for_model(model, 1000 * PER_TOKEN)
    assert budget.row_cost(10, 90) == 100 * PER_TOKEN
    assert budget.refusal(10, 990, 1) is None
    why = budget.refusal(10, 991, 1)
    assert "lower max_tokens to at most 990" in why and "--kv-budget" in why
    assert "or lower n" in budget.refusal(600, 10, 2)
    derived = KVBudget.for_model(model)  # from free memory: positive, says how
    assert derived.limit > 0 and "memory" in derived.source
    assert parse_bytes("2GiB") == 2 << 30 and parse_bytes("512MB") == 512_000_000
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_a_request_over_the_budget_fails_alone_and_one_that_must_wait_runs_later():
    model = make_tiny("llama")
    alone = [_run(model, [spec]).text(0) for spec in (A, B)]
    # room for A (28 tokens) or B (23), not both; the third can never fit
    budget = 40 * PER_TOKEN
    rec = _run(model, [A, ([5, 6, 7], 60), B], kv_budget=budget)
    assert rec.errors(1) and rec.errors(1)[0]["status"] == 400
    assert "KV budget" in rec.errors(1)[0]["message"]
    assert not rec.errors(0) and not rec.errors(2)
    assert [rec.text(0), rec.text(2)] == alone
    assert rec.first(2, "text") > rec.first(0, "done")  # B waited for A to finish
    # with room for both they run together (the budget is what held B back)
    both = _run(model, [A, B], kv_budget=60 * PER_TOKEN)
    assert both.first(1, "text") < both.first(0, "done")
    assert [both.text(0), both.text(1)] == alone


def test_out_of_memory_in_a_decode_step_fails_the_newest_request_alone(monkeypatch):
    model = make_tiny("llama")
    alone = _run(model, [A]).text(0)
    real = type(model).forward
    failed = []

    @functools.wraps(real)
    def forward(self, *args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape == (2, 1) and not failed:  # a decode of both
            failed.append(True)
            # the first blocks have written this step's KV before the allocation fails
            real(self, *args, **kwargs)
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", forward)
    rec = _run(model, [A, B])
    assert failed
    assert rec.errors(1) and rec.errors(1)[0]["status"] == 503
    assert not rec.errors(0) and rec.text(0) == alone  # cache cut back: the same tokens


def test_other_errors_still_fail_the_step():
    from lasa_serve.scheduler import out_of_memory

    assert out_of_memory(torch.OutOfMemoryError("x"))
    assert out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you "
                                      "tried to allocate 10 bytes"))
    assert not out_of_memory(RuntimeError("shape mismatch"))


def test_http_a_request_over_the_kv_budget_is_a_400_and_the_others_are_served(smollm2,
                                                                              tmp_path):
    """``lasa serve --kv-budget``: over HTTP, a request whose worst case exceeds the budget
    is a 400 ``kv_budget_exceeded`` while two others (one waiting for room) are served."""
    import concurrent.futures as cf

    import httpx

    from conftest_server import LiveServer, write_vectors
    from lasa_serve.routes import create_app
    from lasa_serve.runtime import Runtime, ServerConfig

    model, tok = smollm2
    write_vectors(tmp_path, model, tok)
    per_token = kv_bytes_per_token(model)
    rt = Runtime(ServerConfig(model="smollm2-135m-instruct", vectors=tmp_path,
                              default_vector="test-gate", max_model_len=512,
                              kv_budget=120 * per_token), model, tok)

    def ask(client, max_tokens):
        return client.post("/v1/chat/completions", json={
            "model": "smollm2-135m-instruct", "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a poem about the sea."}]})

    try:
        with LiveServer(create_app(rt)) as srv, httpx.Client(base_url=srv.base,
                                                             timeout=120) as client:
            with cf.ThreadPoolExecutor(3) as pool:
                small = [pool.submit(ask, client, 40) for _ in range(2)]
                big = pool.submit(ask, client, 400)
                done = [f.result() for f in small]
                refused = big.result()
    finally:
        rt.close()
    assert refused.status_code == 400, refused.text
    err = refused.json()["error"]
    assert err["code"] == "kv_budget_exceeded" and err["param"] == "max_tokens"
    assert "KV budget" in err["message"]
    for r in done:
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] > 0


def test_a_joint_prefill_out_of_memory_is_retried_one_request_at_a_time(monkeypatch):
    model = make_tiny("llama")
    alone = [_run(model, [spec]).text(0) for spec in (A, B)]
    real = type(model).forward
    failed = []

    @functools.wraps(real)
    def forward(self, *args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[0] == 2 and ids.shape[1] > 1:
            failed.append(True)  # any prefill of both prompts together
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", forward)
    rec = _run(model, [A, B])
    assert len(failed) == 1  # then one prefill each
    assert not rec.errors(0) and not rec.errors(1)
    assert [rec.text(0), rec.text(1)] == alone


def test_sampling_draws_from_the_distribution_and_its_nucleus():
    """The on-device draw (softmax, top-p, inverse CDF of the row's seeded uniform)
    samples the softmax's distribution, and never a token outside the top-p nucleus."""
    from lasa_serve.sampling import make_sampler as sampler

    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -30.0])
    probs = torch.softmax(logits.double(), -1)
    s = sampler(1.0, 1.0, 3)
    counts = torch.bincount(torch.tensor([s.pick(logits) for _ in range(4000)]), minlength=5)
    assert torch.allclose(counts.double() / 4000, probs, atol=0.03), counts
    nucleus = sampler(1.0, 0.8, 4)  # p = .64, .24, .09, ...: the first two reach 0.8
    picks = {nucleus.pick(logits) for _ in range(500)}
    assert picks == {0, 1}
    hot = sampler(2.0, 1.0, 5)  # temperature flattens: the rarer tokens show up
    assert len({hot.pick(logits) for _ in range(500)}) >= 4
