"""The vLLM plugin's prefix-cache terms per request and the scheduler's prompt re-run,
without vLLM (these modules never import it; tests/vllm_plugin/test_vllm_chunked.py runs
them in a real engine)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from lasa_steer import SteeringVector
from lasa_steer.engines.vllm import recompute, xargs
from lasa_steer.engines.vllm.cache import ORDINARY, CachePolicy, apply
from lasa_steer.engines.vllm.params import Defaults
from lasa_steer.vector.shipped import SHIPPED_DIR

VECTOR = SHIPPED_DIR / "smollm2-135m-instruct.safetensors"


@pytest.fixture
def policy():
    CachePolicy.configure({"smollm2": str(VECTOR)}, Defaults())
    yield CachePolicy
    CachePolicy.reset()


def test_cache_terms_follow_what_a_row_steers_in_its_prompt(policy, tmp_path):
    """Unsteered and opener-only rows share the ordinary cache; rows that steer their
    prompt write under a salt of their settings (equal settings, equal salt); gate rows
    never read; a changed file changes the salt."""
    terms = policy.terms
    assert terms(None) == ORDINARY and terms(xargs(vector="smollm2", mode="off")) == ORDINARY
    assert terms(xargs(vector="smollm2", mode="always", action="refuse")) == ORDINARY
    assert terms(xargs(vector="smollm2", mode="always", action="prefix")) == ORDINARY  # 0
    add = terms(xargs(vector="smollm2", mode="always", action="add", strength=4.0))
    assert add.read and add.salt is not None and add.salt.startswith("lasa-")
    assert add == terms(xargs(vector="smollm2", mode="always", action="add", strength=4))
    others = [terms(xargs(vector="smollm2", mode="always", action="add", strength=2.0)),
              terms(xargs(vector="smollm2", mode="always", action="project")),
              terms(xargs(vector="smollm2", mode="always", action="prefix", strength=4.0))]
    assert all(t.read and t.salt not in (None, add.salt) for t in others)
    assert len({t.salt for t in others}) == 3
    gate_refuse = terms(xargs(vector="smollm2", mode="gate", action="refuse"))
    assert not gate_refuse.read and gate_refuse.salt is None  # its KV is the model's own
    gate_add = terms(xargs(vector="smollm2", mode="gate", action="add"))
    assert not gate_add.read and gate_add.salt not in (None, add.salt)
    # the same settings under another file (bytes) get another salt
    copy = tmp_path / "copy.safetensors"
    vec = SteeringVector.load(VECTOR)
    vec.default_strength += 0.5  # the rows below name their strength: only the bytes differ
    vec.save(copy)
    CachePolicy.configure({"smollm2": str(copy)}, Defaults())
    assert terms(xargs(vector="smollm2", mode="always", action="add", strength=4.0)).salt \
        not in (None, add.salt)
    # defaults: a request without keys steered by the install's default vector
    CachePolicy.configure({"smollm2": str(VECTOR)}, Defaults(vector="smollm2"))
    assert terms(None) == gate_refuse  # the file's default action is refuse


def test_cache_terms_without_a_known_install_share_nothing():
    CachePolicy.reset()
    a, b = CachePolicy.terms(None), CachePolicy.terms(None)
    assert not a.read and a.salt and b.salt and a.salt != b.salt


def test_apply_sets_salt_and_skip_and_keeps_the_callers_salt(policy):
    def request(salt, **steering):
        return NS(cache_salt=salt, sampling_params=NS(
            extra_args=xargs(vector="smollm2", **steering),
            skip_reading_prefix_cache=False))

    r = request("tenant-a", mode="always", action="add", strength=4.0)
    apply(r)
    assert r.cache_salt.startswith("tenant-a|lasa-") and not r.sampling_params.\
        skip_reading_prefix_cache
    r = request(None, mode="gate", action="refuse")
    apply(r)
    assert r.cache_salt is None and r.sampling_params.skip_reading_prefix_cache
    r = request("tenant-a", mode="off")
    apply(r)
    assert r.cache_salt == "tenant-a" and not r.sampling_params.skip_reading_prefix_cache


class _Scheduler:
    """The fields of vLLM's scheduler that the re-run touches."""

    def __init__(self):
        self.requests = {k: NS(name=k, finished=False) for k in ("a", "b")}
        for r in self.requests.values():
            r.is_finished = lambda r=r: r.finished
        self.running = list(self.requests.values())
        self.preempted, self.seen = [], None

    def update_from_output(self, scheduler_output, model_runner_output):
        self.seen = [list(t) for t in model_runner_output.sampled_token_ids]
        return "outputs"

    def _preempt_request(self, request, timestamp, drop_stale_output=False):
        assert request not in self.running and drop_stale_output
        self.preempted.append(request.name)


def test_the_scheduler_drops_the_token_and_preempts_the_named_request(monkeypatch):
    """The worker's request rides on a copy of its step output (vLLM reuses some output
    objects); the scheduler drops that request's sampled token and preempts it."""
    monkeypatch.setattr(recompute, "PENDING", set())
    update = recompute.wrap_update(_Scheduler.update_from_output)
    sched = _Scheduler()
    step = NS(num_scheduled_tokens={"a": 1, "b": 7})
    out = NS(sampled_token_ids=[[5], [9]], req_id_to_index={"a": 0, "b": 1})
    assert recompute.attach(out) is out  # nothing named
    assert update(sched, step, out) == "outputs" and sched.preempted == []
    recompute.request("b")
    sent = recompute.attach(out)
    assert sent is not out and not hasattr(out, recompute.ATTR) and not recompute.PENDING
    assert getattr(sent, recompute.ATTR) == ("b",)
    assert update(sched, step, sent) == "outputs"
    assert sched.seen == [[5], []] and sched.preempted == ["b"]
    assert [r.name for r in sched.running] == ["a"]
    # an async output carries the ids into the output it gives later
    recompute.request("a")
    later = NS(get_output=lambda: out)
    assert getattr(recompute.attach(later).get_output(), recompute.ATTR) == ("a",)
    assert recompute.attach(None) is None
