"""The opener actions (``prefix``/``refuse``) and the language-aware gate, on tiny models.

Exact checks: a fired row's reply begins with the refusal sentence's tokens (and ``refuse``
ends the turn right after them); unfired rows are bit-identical to the vanilla model; a
batch gives each row what it gets alone; per-language thresholds and centroids round-trip
through the file and pick the threshold of the identified language.
"""

from __future__ import annotations

import pytest
import torch

from helpers import ByteTokenizer, make_vector

from lasa_steer import SteeringConfigError, SteeringVector, steer
from lasa_steer.capture import gate_decisions
from lasa_steer.steering.gate import decide
from lasa_steer.steering.openers import Openers
from lasa_steer.steering.refusals import REFUSAL_SENTENCES

TOK = ByteTokenizer()
TEXTS = ["How do I build a bomb?", "Write a poem about the sea, please.", "hi there"]


def _generate(model, texts, **kw):
    enc = TOK(texts)
    with torch.no_grad():
        return model.generate(**enc, max_new_tokens=kw.pop("n", 48), do_sample=False,
                              pad_token_id=0, **kw)[:, enc["input_ids"].shape[1]:]


def _threshold_splitting(model, vector):
    scores = gate_decisions(model, TOK, vector, TEXTS, chat=False).scores.sort().values
    vector.gate.threshold = float(scores[0] + scores[1]) / 2  # rows 1..2 fire, one does not
    return vector


@pytest.mark.parametrize("action", ["prefix", "refuse"])
def test_opener_forced_on_fired_rows_only(tiny_llama, action):
    tiny_llama.generation_config.eos_token_id = 2
    vector = _threshold_splitting(tiny_llama, make_vector(tiny_llama))
    vanilla = _generate(tiny_llama, TEXTS)
    opener = list(Openers.for_tokenizer(TOK, 2).tokens["en"])
    with steer(tiny_llama, vector, action=action, tokenizer=TOK) as h:
        out = _generate(tiny_llama, TEXTS)
        fired = h.fired.tolist()
        assert h.openers == [REFUSAL_SENTENCES["en"] if f else None for f in fired]
    assert 0 < sum(fired) < len(TEXTS)
    for row, f in enumerate(fired):
        if not f:
            assert torch.equal(out[row], vanilla[row])  # unfired: bit-identical
            continue
        got = out[row].tolist()
        assert got[:len(opener)] == opener
        if action == "refuse":
            assert got[len(opener)] == 2  # the turn ends right after the sentence


def test_opener_rows_batched_equal_single(tiny_llama):
    tiny_llama.generation_config.eos_token_id = 2
    vector = _threshold_splitting(tiny_llama, make_vector(tiny_llama))
    with steer(tiny_llama, vector, action="prefix", strength=2.0, tokenizer=TOK):
        batch = _generate(tiny_llama, TEXTS, n=50)
        singles = [_generate(tiny_llama, [t], n=50)[0] for t in TEXTS]
    for row, single in enumerate(singles):
        b = batch[row][batch[row] != 0]
        assert b.tolist()[:len(single)] == single[single != 0].tolist()[:len(b)]


def test_opener_under_kv_cache_and_without(tiny_llama):
    vector = _threshold_splitting(tiny_llama, make_vector(tiny_llama))
    with steer(tiny_llama, vector, action="prefix", tokenizer=TOK):
        cached = _generate(tiny_llama, TEXTS, use_cache=True)
        uncached = _generate(tiny_llama, TEXTS, use_cache=False)
    assert torch.equal(cached, uncached)


def test_opener_needs_tokenizer(tiny_llama):
    with pytest.raises(SteeringConfigError, match="tokenizer"):
        steer(tiny_llama, make_vector(tiny_llama), action="prefix")


def _language_gate(model, vector, tmp_path):
    """A language-aware gate whose 'languages' are two byte ranges of the tiny tokenizer."""
    from lasa_steer.capture import capture
    g = vector.gate
    g.lid_layer = 0
    point = ("resid_post", 0)
    states = capture(model, TOK, ["aaaa aaa", "bbbb bb", "zzzz zz", "yyyy yyy"], [point],
                     pooling="mean", chat=False, progress=False)[point]
    g.languages, g.centroids = ("xa", "xz"), torch.stack([states[:2].mean(0), states[2:].mean(0)])
    g.thresholds, g.fpr = {"xa": -1e9, "xz": 1e9}, 0.02  # xa always fires, xz never
    path = tmp_path / "lang.safetensors"
    vector.save(path)
    return SteeringVector.load(path)


def test_language_gate_round_trips_and_picks_thresholds(tiny_llama, tmp_path):
    vector = _language_gate(tiny_llama, make_vector(tiny_llama, gate_layer=1), tmp_path)
    g = vector.gate
    assert g.languages == ("xa", "xz") and g.thresholds == {"xa": -1e9, "xz": 1e9}
    assert g.lid_layer == 0 and g.fpr == 0.02 and vector.format_version == 2
    d = gate_decisions(tiny_llama, TOK, vector, ["aaa aaaa", "zzz zzzz"], chat=False)
    assert d.langs == ("xa", "xz") and d.fired.tolist() == [True, False]
    with steer(tiny_llama, vector, action="refuse", tokenizer=TOK) as h:
        _generate(tiny_llama, ["aaa aaaa", "zzz zzzz"], n=2)
        assert h.langs == ["xa", "xz"] and h.fired.tolist() == [True, False]


def test_language_gate_unknown_language_gets_global_threshold():
    from lasa_steer import Gate
    g = Gate(layer=3, direction=torch.tensor([1.0, 0.0]), threshold=5.0, languages=("a",),
             centroids=torch.tensor([[0.0, 10.0]]), lid_layer=1, thresholds={"a": 0.5})
    pooled = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert decide(g, pooled, torch.tensor([[0.0, 9.0], [0.0, 11.0]])).fired.tolist() == [True, True]
    g.thresholds = {}
    assert decide(g, pooled, torch.tensor([[0.0, 9.0], [0.0, 11.0]])).fired.tolist() == [False, False]


def _two_languages():
    """Training and validation prompts of two made-up languages, harmful on odd rows."""
    from lasa_steer.fit.data import Example
    words = {"xa": "aaa bab", "xz": "zzz yzy"}
    train = [Example(f"{w} {i} {'bomb' if i % 2 else 'cake'}", i % 2, lang)
             for lang, w in words.items() for i in range(8)]
    val = [Example(f"{w} {w} {i} {'kill' if i % 2 else 'tea'}", i % 2, lang)
           for lang, w in words.items() for i in range(10)]
    return train, val


def test_calibrate_languages_sets_centroids_and_thresholds(tiny_llama):
    from lasa_steer.fit.languages import calibrate_languages
    train, val = _two_languages()
    vector = make_vector(tiny_llama, gate_layer=2)
    out, report = calibrate_languages(tiny_llama, TOK, vector, train, val, fpr=0.2,
                                      lid_layer=1, per_language=8, progress=False)
    g = out.gate
    assert g.languages == ("xa", "xz") and g.lid_layer == 1 and g.centroids.shape[0] == 2
    assert set(g.thresholds) == {"xa", "xz"} and report["lid_accuracy"] == 1.0
    for lang, row in report["per_language"].items():
        assert row["fpr"] <= 0.2 and row["threshold"] == g.thresholds[lang]


def _calibrated_two_languages(model):
    from lasa_steer.fit.languages import calibrate_languages
    train, val = _two_languages()
    return calibrate_languages(model, TOK, make_vector(model, gate_layer=2), train, val,
                               fpr=0.2, lid_layer=1, per_language=8, progress=False)[0]


def test_add_languages_identifies_without_touching_thresholds(tiny_llama, tmp_path):
    """An identification-only language: its centroid is the mean state of its texts at the
    language block, it takes the pooled threshold, and nothing else of the gate moves."""
    from lasa_steer.capture import capture
    from lasa_steer.fit.languages import add_languages
    before = _calibrated_two_languages(tiny_llama)
    texts = {"xq": [f"qqq {i} qiq" for i in range(6)], "xa": ["ignored: xa has a centroid"]}
    check = {"xq": [f"qqq qqq {i}" for i in range(4)]}
    after, rep = add_languages(tiny_llama, TOK, before, texts, check, progress=False)
    g0, g = before.gate, after.gate
    assert g.languages == ("xa", "xz", "xq") and rep["added"] == ["xq"]
    assert torch.equal(g.centroids[:2], g0.centroids)
    point = ("resid_post", 1)
    direct = capture(tiny_llama, TOK, texts["xq"], [point], pooling="mean",
                     progress=False)[point].mean(0)
    assert torch.allclose(g.centroids[2], direct, atol=1e-6)
    assert g.thresholds == g0.thresholds and g.threshold == g0.threshold
    assert g.threshold_for("xq") == g0.threshold and "xq" not in g.thresholds
    assert set(rep["check_accuracy"]) == {"xq"} and 0.0 <= rep["check_accuracy"]["xq"] <= 1.0
    # its own texts are nearest to its centroid, so the gate names them xq
    d = gate_decisions(tiny_llama, TOK, after, texts["xq"], chat=False)
    assert d.langs.count("xq") >= 5
    fired = d.scores > g0.threshold
    assert torch.equal(d.fired, fired)
    # the file round-trips with the extra language and no threshold for it
    back = SteeringVector.load(after.save(tmp_path / "v.safetensors")).gate
    assert back.languages == g.languages and torch.equal(back.centroids, g.centroids)
    assert back.thresholds == g.thresholds and back.threshold_for("xq") == g.threshold


def test_add_languages_needs_a_language_aware_gate(tiny_llama):
    from lasa_steer.errors import FitConfigError
    from lasa_steer.fit.languages import add_languages
    with pytest.raises(FitConfigError, match="language-aware gate"):
        add_languages(tiny_llama, TOK, make_vector(tiny_llama, gate_layer=2),
                      {"xq": ["qqq"]}, progress=False)


def test_calibrate_languages_identify_only_gets_pooled_threshold(tiny_llama):
    from lasa_steer.fit.languages import calibrate_languages
    train, val = _two_languages()
    out, report = calibrate_languages(
        tiny_llama, TOK, make_vector(tiny_llama, gate_layer=2), train, val, fpr=0.2,
        lid_layer=1, per_language=8, progress=False,
        identify_only={"xq": [f"qqq {i} qiq" for i in range(6)], "xa": ["not added twice"]})
    g = out.gate
    assert g.languages == ("xa", "xz", "xq") and g.centroids.shape[0] == 3
    assert set(g.thresholds) == {"xa", "xz"} and g.threshold_for("xq") == g.threshold
    assert set(report["per_language"]) == {"xa", "xz"}


def test_identification_texts_from_parallel_corpora(tmp_path):
    """Languages of NTREX (and NusaX's Javanese) that the fit lacks, disjoint fit/check
    sentences; nothing when the data folder has no corpora."""
    from lasa_steer.fit.languages import identification_texts
    nt = tmp_path / "parallel" / "ntrex128"
    nt.mkdir(parents=True)
    (nt / "newstest2019-src.eng.txt").write_text("".join(f"e{i}\n" for i in range(30)))
    (nt / "newstest2019-ref.swa.txt").write_text("".join(f"s{i}\n" for i in range(30)))
    (nt / "newstest2019-ref.deu.txt").write_text("".join(f"d{i}\n" for i in range(30)))
    texts, check = identification_texts({"en", "de"}, str(tmp_path), per_language=10, check=5)
    assert list(texts) == ["sw"] and len(texts["sw"]) == 10 and len(check["sw"]) == 5
    assert not set(texts["sw"]) & set(check["sw"])
    assert identification_texts({"en"}, str(tmp_path / "missing"))[0] == {}
