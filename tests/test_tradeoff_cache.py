"""benchmarks/tradeoff.py's completion cache: a rerun (a refit vector, more prompts, an
interrupted run) generates only the prompts it lacks, and replies come back in input order."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tradeoff():
    spec = importlib.util.spec_from_file_location("tradeoff", REPO / "benchmarks" / "tradeoff.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_only_missing_prompts_are_generated_and_order_is_kept(tradeoff, tmp_path):
    path = tmp_path / "cache.json"
    calls: list[list[str]] = []

    def make(prompts):
        calls.append(list(prompts))
        return [f"reply to {p}" for p in prompts]

    first = ["a much longer prompt", "b", "cc"]
    got = tradeoff.cached_replies(tradeoff.Cache(path), "none|m|4", first, make)
    assert got == [f"reply to {p}" for p in first]
    assert sorted(p for c in calls for p in c) == sorted(first)
    assert calls[0][0] == "b"  # batches are length-sorted

    calls.clear()
    cache = tradeoff.Cache(path)  # a new run on more prompts reads the saved file
    more = ["cc", "new one", "a much longer prompt", "b"]
    got = tradeoff.cached_replies(cache, "none|m|4", more, make)
    assert got == [f"reply to {p}" for p in more]
    assert calls == [["new one"]] and cache.generated == 1
    # another condition shares nothing
    tradeoff.cached_replies(cache, "system-prompt|m|4", ["b"], make)
    assert calls[-1] == ["b"]


def test_an_interrupted_run_keeps_its_finished_batches(tradeoff, tmp_path):
    path = tmp_path / "cache.json"
    prompts = [f"p{i:02d}" for i in range(20)]  # one length: batches in input order

    def failing(batch_prompts):
        if "p16" in batch_prompts:
            raise KeyboardInterrupt
        return [p.upper() for p in batch_prompts]

    with pytest.raises(KeyboardInterrupt):
        tradeoff.cached_replies(tradeoff.Cache(path), "none|m|4", prompts, failing)
    assert len(json.loads(path.read_text())["none|m|4"]) == 16  # the first batch of 16
    seen: list[str] = []

    def make(batch_prompts):
        seen.extend(batch_prompts)
        return [p.upper() for p in batch_prompts]

    got = tradeoff.cached_replies(tradeoff.Cache(path), "none|m|4", prompts, make)
    assert got == [p.upper() for p in prompts] and seen == prompts[16:]


def test_a_cache_of_another_layout_is_refused(tradeoff, tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"none|m|32|abc": ["reply"]}))
    with pytest.raises(SystemExit, match="per-prompt cache"):
        tradeoff.Cache(path)
