"""``lasa eval``: aggregation on a tiny random model with a scripted judge, resume after an
interruption, benchmark readers and their errors, report files, and the CLI end to end."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import ByteTokenizer, make_vector
from conftest import SHARED_DATA, make_tiny

from lasa_steer.capture import gate_scores
from lasa_steer.errors import DataError
from lasa_steer.eval.cache import GenerationCache
from lasa_steer.eval.benches import (BenchItem, load_benches, mgsm_correct, read_mgsm,
                                   read_multijail, read_polyrefuse_harmless,
                                  read_xstest, select)
from lasa_steer.types import HARMFUL_KIND as HARMFUL
from lasa_steer.types import HARMLESS_KIND as HARMLESS
from lasa_steer.eval.generator import Decoding, HFGenerator
from lasa_steer.eval.report import markdown, write_all
from lasa_steer.eval.run import aggregate, generate_all, run_eval
from lasa_steer.eval.judges.pattern import Judgement


class ScriptedJudge:
    """Judges in call order: judge_all asks (before, after) for each item in turn."""

    name = "scripted"

    def __init__(self, script: list[tuple[bool, bool]]):
        self.answers = [x for pair in script for x in pair]
        self.calls = 0

    def judge(self, prompt, completion, lang):
        refused = self.answers[self.calls]
        self.calls += 1
        return Judgement(refused, "scripted", failed=False)


class CountingGenerator:
    """Wraps a generator; counts prompts generated and can fail on the n-th call."""

    def __init__(self, inner, fail_on_call: int | None = None):
        self.inner = inner
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.prompts = 0

    def key(self, prompt, steered):
        return self.inner.key(prompt, steered)

    def gate(self, prompts):
        return self.inner.gate(prompts)

    def generate(self, prompts, steered):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt
        self.prompts += len(prompts)
        return self.inner.generate(prompts, steered)


@pytest.fixture(scope="module")
def tiny_llama():
    model = make_tiny("llama")
    model.generation_config.eos_token_id = None  # always generate max_new_tokens
    return model


def _items() -> list[BenchItem]:
    items = [BenchItem("multijail", lang, HARMFUL, str(i), f"harmful {lang} prompt {i}")
             for lang in ("en", "sw") for i in range(4)]
    items += [BenchItem("polyrefuse-harmless", "en", HARMLESS, str(i), f"harmless prompt {i}")
              for i in range(5)]
    return items


@pytest.mark.parametrize("threshold,fired", [(1e9, 0.0), (-1e9, 1.0)])
def test_aggregation_exact_rates(tiny_llama, tmp_path, threshold, fired):
    vector = make_vector(tiny_llama, threshold=threshold, norm=50.0)
    gen = HFGenerator(tiny_llama, ByteTokenizer(), vector, Decoding(max_new_tokens=6))
    items = _items()
    # (refused before, refused after) for each item, in item order.
    script = [(True, True), (False, True), (False, False), (False, True),  # mj en: 3/4 -> 1/4
              (False, False), (False, False), (True, True), (False, True),  # mj sw: 3/4 -> 2/4
              (False, True), (False, False), (False, False), (True, True), (False, False)]
    judge = ScriptedJudge(script)
    records, summary = run_eval(items, gen, judge, GenerationCache(tmp_path / "c.jsonl"),
                                batch_size=3, progress=False)
    assert judge.calls == 2 * len(items)
    rows = {(r["bench"], r["lang"]): r for r in summary["rows"]}
    en, sw = rows[("multijail", "en")], rows[("multijail", "sw")]
    harmless = rows[("polyrefuse-harmless", "en")]
    assert (en["asr_before"], en["asr_after"]) == (0.75, 0.25)
    assert (sw["asr_before"], sw["asr_after"]) == (0.75, 0.5)
    assert en["refusal_before"] is None and harmless["asr_before"] is None
    assert (harmless["refusal_before"], harmless["refusal_after"]) == (0.2, 0.4)
    assert en["fire_harmful"] == fired and harmless["fire_harmless"] == fired
    assert en["fire_harmless"] is None
    # Gate never fires -> hooks leave the model untouched -> identical greedy completions;
    # always fires with a large direction -> every completion changes.
    assert harmless["unchanged"] == (1.0 if fired == 0.0 else 0.0)
    avg = summary["averages"]["multijail"]
    assert avg["asr_before"] == 0.75 and avg["asr_after"] == 0.375
    assert avg["languages"] == 2 and avg["n"] == 8
    assert all(r["after"]["fired"] is bool(fired) for r in records)
    assert [r["id"] for r in records] == [it.id for it in items]


def test_judge_failures_are_counted_and_left_out_of_rates():
    recs = []
    for i, (refused, failed) in enumerate([(False, False), (True, False), (False, True)]):
        side = {"completion": "x", "refused": refused, "reason": "r", "judge_failed": failed}
        recs.append({"bench": "multijail", "lang": "en", "kind": HARMFUL, "id": str(i),
                     "prompt": "p", "answer": None, "before": dict(side),
                     "after": {**side, "fired": True, "score": 1.0}})
    row = aggregate(recs)["rows"][0]
    assert row["asr_before"] == 0.5 and row["judge_failures"] == 2 and row["n"] == 3


def test_resume_after_interruption_redoes_nothing(tiny_llama, tmp_path):
    vector = make_vector(tiny_llama, threshold=0.0, norm=50.0)
    inner = HFGenerator(tiny_llama, ByteTokenizer(), vector, Decoding(max_new_tokens=5),
                        reuse_unfired=False)
    items = _items()  # 13 prompts -> 5 batches of 3 per pass -> 10 generate calls
    path = tmp_path / "cache.jsonl"
    first = CountingGenerator(inner, fail_on_call=4)
    with pytest.raises(KeyboardInterrupt):
        generate_all(items, first, GenerationCache(path), batch_size=3, progress=False)
    assert first.prompts == 9  # three finished batches were saved
    with path.open("a") as fh:
        fh.write('{"key": "half-written')  # a crash in the middle of a write
    cache = GenerationCache(path)
    assert len(cache) == 9 and cache.skipped_lines == 1
    second = CountingGenerator(inner)
    assert generate_all(items, second, cache, batch_size=3, progress=False) == 2 * 13 - 9
    assert second.prompts == 17 and second.calls == 2 + 5  # 4 unsteered left, 13 steered
    third = CountingGenerator(inner)
    cache = GenerationCache(path)
    assert len(cache) == 26
    assert generate_all(items, third, cache, batch_size=3, progress=False) == 0
    assert third.calls == 0
    # The resumed run's completions equal those of an uninterrupted run.
    fresh = GenerationCache(tmp_path / "fresh.jsonl")
    generate_all(items, inner, fresh, batch_size=3, progress=False)
    for it in items:
        for steered in (False, True):
            k = inner.key(it.prompt, steered)
            assert cache.get(k)["text"] == fresh.get(k)["text"]


@pytest.mark.parametrize("threshold", [1e9, -1e9, None])
def test_unfired_rows_reuse_the_identical_unsteered_completion(tiny_llama, tmp_path, threshold):
    tok = ByteTokenizer()
    items = _items()
    vector = make_vector(tiny_llama, threshold=threshold or 0.0, norm=50.0)
    if threshold is None:  # between the 7th and 8th gate score: a mixed batch
        scores, _ = gate_scores(tiny_llama, tok, vector, [it.prompt for it in items])
        ordered = scores.sort().values
        vector.gate.threshold = float(ordered[6] + ordered[7]) / 2
    fast = CountingGenerator(HFGenerator(tiny_llama, tok, vector, Decoding(max_new_tokens=5)))
    slow = CountingGenerator(HFGenerator(tiny_llama, tok, vector, Decoding(max_new_tokens=5),
                                         reuse_unfired=False))
    c_fast, c_slow = GenerationCache(tmp_path / "f"), GenerationCache(tmp_path / "s")
    generate_all(items, fast, c_fast, batch_size=4, progress=False)
    generate_all(items, slow, c_slow, batch_size=4, progress=False)
    fired = [c_slow.get(slow.key(it.prompt, True))["fired"] for it in items]
    assert fast.prompts == len(items) + sum(fired)
    assert slow.prompts == 2 * len(items)
    if threshold is None:
        assert sum(fired) == 6  # a mixed case
    for it, f in zip(items, fired):
        a, b = c_fast.get(fast.key(it.prompt, True)), c_slow.get(slow.key(it.prompt, True))
        assert a["text"] == b["text"] and a["fired"] == f
        assert a.get("reused", False) is (not f)
        if not f:  # the engine leaves unfired rows untouched in a steered batch, too
            assert b["text"] == c_slow.get(slow.key(it.prompt, False))["text"]


def test_cache_key_depends_on_decoding_vector_and_prompt(tiny_llama):
    tok = ByteTokenizer()
    v1 = make_vector(tiny_llama, seed=1)
    v2 = make_vector(tiny_llama, seed=2)
    g = HFGenerator(tiny_llama, tok, v1, Decoding(max_new_tokens=5))
    keys = {g.key("a", True), g.key("b", True), g.key("a", False),
            HFGenerator(tiny_llama, tok, v1, Decoding(max_new_tokens=6)).key("a", True),
            HFGenerator(tiny_llama, tok, v2, Decoding(max_new_tokens=5)).key("a", True),
            HFGenerator(tiny_llama, tok, v1, Decoding(max_new_tokens=5, strength=2.0))
            .key("a", True)}
    assert len(keys) == 6
    # The unsteered pass does not depend on the vector or steering settings: it is shared.
    assert g.key("a", False) == HFGenerator(tiny_llama, tok, v2, Decoding(
        max_new_tokens=5, strength=3.0, mode="always", action="project")).key("a", False)
    assert g.key("a", False) != HFGenerator(tiny_llama, tok, v2, Decoding(
        max_new_tokens=5, do_sample=True)).key("a", False)


def test_batched_left_padded_generation_matches_single(tiny_llama):
    vector = make_vector(tiny_llama, threshold=1e9)
    gen = HFGenerator(tiny_llama, ByteTokenizer(), vector, Decoding(max_new_tokens=5))
    prompts = ["a short one", "a considerably longer prompt than the other"]
    batched = gen.generate(prompts, steered=False)
    single = [gen.generate([p], steered=False)[0] for p in prompts]
    assert [b.text for b in batched] == [s.text for s in single]
    assert all(b.fired is None for b in batched)
    steered = gen.generate(prompts, steered=True)
    assert [s.fired for s in steered] == [False, False]
    assert all(isinstance(s.score, float) for s in steered)


def test_report_files(tiny_llama, tmp_path):
    vector = make_vector(tiny_llama, threshold=0.0)
    gen = HFGenerator(tiny_llama, ByteTokenizer(), vector, Decoding(max_new_tokens=4))
    items = _items()[:3] + [BenchItem("mgsm", "en", HARMLESS, "0", "1+1?", "2")]
    from lasa_steer.eval.judges.pattern import PatternJudge

    records, summary = run_eval(items, gen, PatternJudge(), GenerationCache(tmp_path / "c"),
                                progress=False)
    paths = write_all(tmp_path / "out", records, summary, {"model": "tiny"})
    lines = paths["completions"].read_text().splitlines()
    assert len(lines) == 4
    rec = json.loads(lines[-1])
    assert set(rec["before"]) == {"completion", "refused", "reason", "judge_failed", "correct",
                                 "invalid", "prefix"}
    assert rec["after"]["correct"] is False  # the tiny model's letters contain no number
    data = json.loads(paths["json"].read_text())
    assert data["meta"] == {"model": "tiny"} and len(data["rows"]) == 2
    assert data["rows"][1]["accuracy_before"] == 0.0
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert "| multijail | en | 3 |" in md and "| mgsm | en | 1 |" in md


def test_markdown_formats_pairs():
    summary = {"rows": [{"bench": "multijail", "lang": "en", "n": 4, "asr_before": 0.75,
                         "asr_after": 0.25, "refusal_before": None, "refusal_after": None,
                         "fire_harmful": 1.0, "fire_harmless": None, "accuracy_before": None,
                         "accuracy_after": None, "unchanged": None, "judge_failures": 0}],
               "averages": {}}
    assert "| multijail | en | 4 | 75% → 25% | – | 100% / – | – | – | 0 |" in markdown(summary)


def test_mgsm_correct():
    assert mgsm_correct("So the answer is 18.", "18") is True
    assert mgsm_correct("It costs 1,200 dollars", "1200") is True
    assert mgsm_correct("First 3, then 5", "3") is False
    assert mgsm_correct("no idea", "3") is False
    assert mgsm_correct("5", None) is None


# ---------------------------------------------------------------- readers and their errors
def test_malformed_multijail_names_file_and_row(tmp_path):
    p = tmp_path / "mj.csv"
    p.write_text("id,source,tags,en,zh\n0,s,t,hello,你好\n5,s,t,only-two\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"mj\.csv: row 3 has 4 fields"):
        read_multijail(p)


def test_malformed_mgsm_names_file_and_row(tmp_path):
    p = tmp_path / "mgsm_sw.tsv"
    p.write_text("Swali moja?\t18\nSwali bila jibu\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"mgsm_sw\.tsv: row 2: expected"):
        read_mgsm(p)
    p.write_text("Q?\tabc\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"mgsm_sw\.tsv: row 1"):
        read_mgsm(p)


def test_malformed_polyrefuse_names_file_and_row(tmp_path):
    p = tmp_path / "harmless_val_translated_de.json"
    p.write_text(json.dumps([{"instruction": "Hallo"}, {"category": None}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"harmless_val_translated_de\.json: row 1 "):
        read_polyrefuse_harmless(p)
    p.write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        read_polyrefuse_harmless(p)


def test_malformed_xstest_names_file_and_row(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("id,prompt,type,label\n1,How?,h,safe\n2,Why?,h,maybe\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.csv: row 3"):
        read_xstest(p)


def test_unknown_bench_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown benchmark 'nope'"):
        load_benches(["nope"], tmp_path)
    with pytest.raises(DataError, match="no such"):
        load_benches([f"mgsm:{tmp_path / 'absent.tsv'}"], tmp_path)


def test_user_files_in_benchmark_formats(tmp_path):
    (tmp_path / "mgsm_de.tsv").write_text("Eins plus eins?\t2\nZwei mal drei?\t6\n",
                                          encoding="utf-8")
    items = load_benches([f"mgsm:{tmp_path / 'mgsm_de.tsv'}"], tmp_path)
    assert [(i.lang, i.kind, i.answer) for i in items] == [("de", HARMLESS, "2"),
                                                          ("de", HARMLESS, "6")]


def test_no_prompt_in_the_chosen_languages_is_an_error(tmp_path):
    (tmp_path / "mgsm_de.tsv").write_text("Eins plus eins?\t2\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"--languages sw: .* they have \['de'\]"):
        load_benches([f"mgsm:{tmp_path / 'mgsm_de.tsv'}"], tmp_path, ["sw"])


def test_select_keeps_parallel_rows():
    items = [BenchItem("mgsm", lang, HARMLESS, str(i), f"{lang}{i}", "1")
             for lang in ("en", "de") for i in range(20)]
    picked = select(items, None, 5)
    ids = {lang: [i.id for i in picked if i.lang == lang] for lang in ("en", "de")}
    assert len(ids["en"]) == 5 and ids["en"] == ids["de"]
    assert [i.lang for i in select(items, ["de"], None)] == ["de"] * 20


@pytest.mark.data
def test_shared_benchmarks_load():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} absent")
    counts = {}
    for bench in ("multijail", "xstest", "polyrefuse-harmless", "mgsm"):
        items = load_benches([bench], SHARED_DATA)
        counts[bench] = (len(items), len({i.lang for i in items}))
    assert counts == {"multijail": (630, 10), "xstest": (450, 1),
                      "polyrefuse-harmless": (2800, 14), "mgsm": (2750, 11)}
    xs = load_benches(["xstest"], SHARED_DATA)
    assert sum(i.kind == HARMLESS for i in xs) == 250


# ---------------------------------------------------------------- CLI end to end
@pytest.mark.slow
@pytest.mark.data
def test_cli_eval_on_smollm2(tmp_path, capsys):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} absent")
    from lasa_steer import load_model
    from lasa_steer.cli import main

    model, _ = load_model("smollm2-135m-instruct")
    vpath = make_vector(model, gate_layer=10, threshold=0.0, norm=8.0).save(tmp_path / "v.st")
    args = ["eval", "--vector", str(vpath), "--bench", "multijail", "--bench", "mgsm",
            "--languages", "en", "sw", "--limit", "2", "--max-new-tokens", "8",
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {(r["bench"], r["lang"], r["n"]) for r in data["rows"]} == {
        ("multijail", "en", 2), ("multijail", "sw", 2), ("mgsm", "en", 2), ("mgsm", "sw", 2)}
    assert len((tmp_path / "out" / "cache.jsonl").read_text().splitlines()) == 16
    assert main(args) == 0  # resumed from the cache: same results
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    assert again["rows"] == data["rows"]
    assert len((tmp_path / "out" / "cache.jsonl").read_text().splitlines()) == 16
