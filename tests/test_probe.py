"""The gate's MLP probe: training folds the standardisation exactly, the file round-trips it
(format 3, rejected shapes named), and every gate path scores with it."""

from __future__ import annotations

import pytest
import torch
from helpers import left_pad, make_vector, positions
from safetensors.torch import load_file, save_file

from lasa_steer import SteeringVector, VectorFileError, steer
from lasa_steer.capture import gate_batch
from lasa_steer.fit.directions import auroc
from lasa_steer.fit.probe import ProbeConfig, cell_weights, train_probe
from lasa_steer.model.layers import find_layers
from lasa_steer.vector.probe import Probe


def _toy(n=120, h=16, seed=0):
    """Two languages with shifted means; harm is a non-linear (XOR-like) function."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g)
    langs = ["en" if i % 2 else "xx" for i in range(n)]
    x[1::2] += 3.0
    labels = [int((x[i, 0] > 0) != (x[i, 1] > 0)) for i in range(n)]
    return x, labels, langs


def test_cell_weights_balance_language_and_label():
    w = cell_weights([1, 0, 0, 0, 1, 1], ["en", "en", "en", "en", "de", "de"])
    totals = {}
    for wi, c in zip(w.tolist(), [("en", 1), ("en", 0), ("en", 0), ("en", 0), ("de", 1), ("de", 1)]):
        totals[c] = totals.get(c, 0.0) + wi
    assert len(set(round(v, 6) for v in totals.values())) == 1


def test_probe_learns_a_non_linear_boundary_and_is_deterministic():
    x, labels, langs = _toy()
    y = torch.tensor(labels)
    cfg = ProbeConfig(hidden=32, epochs=400, lr=1e-2, dropout=0.0)
    probe = train_probe(x, labels, langs, cfg)
    s = probe(x)
    assert auroc(s[y == 1], s[y == 0]) > 0.9  # a direction cannot separate an XOR
    again = train_probe(x, labels, langs, cfg)
    assert torch.equal(again(x), s)


def _probe_vector(model, seed=3):
    vec = make_vector(model)
    h = find_layers(model).hidden_size
    g = torch.Generator().manual_seed(seed)
    vec.gate.probe = Probe(torch.randn(8, h, generator=g), torch.randn(8, generator=g),
                           torch.randn(8, generator=g), torch.randn(1, generator=g))
    return vec


def test_probe_round_trips_as_format_3(tiny_llama, tmp_path):
    vec = _probe_vector(tiny_llama)
    assert vec.format_version == 3
    back = SteeringVector.load(vec.save(tmp_path / "p.safetensors"))
    assert back.metadata() == vec.metadata() and back.gate.probe.hidden == 8
    x = torch.randn(5, find_layers(tiny_llama).hidden_size)
    assert torch.equal(back.gate.probe(x), vec.gate.probe(x))


def test_probe_file_defects_are_named(tiny_llama, tmp_path):
    path = _probe_vector(tiny_llama).save(tmp_path / "p.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    missing = dict(tensors)
    del missing["gate.probe.w2"]
    save_file(missing, str(tmp_path / "m.safetensors"), metadata=meta)
    with pytest.raises(VectorFileError, match="gate.probe.w2"):
        SteeringVector.load(tmp_path / "m.safetensors")
    wrong = dict(tensors, **{"gate.probe.b1": torch.zeros(7)})
    save_file(wrong, str(tmp_path / "w.safetensors"), metadata=meta)
    with pytest.raises(VectorFileError, match="gate.probe.b1"):
        SteeringVector.load(tmp_path / "w.safetensors")


def test_engine_and_capture_score_with_the_probe(tiny_llama):
    vec = _probe_vector(tiny_llama)
    seqs = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [3, 4, 5, 6, 7, 8]]
    ids, mask = left_pad(seqs)
    linear = gate_batch(tiny_llama, make_vector(tiny_llama), ids, mask).scores
    scores = gate_batch(tiny_llama, vec, ids, mask).scores
    assert not torch.allclose(scores, linear)
    vec.gate.threshold = float(scores.sort().values[1:3].mean())
    with steer(tiny_llama, vec, mode="gate") as handle, torch.no_grad():
        tiny_llama(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
        assert torch.equal(handle.scores, scores)
        assert handle.fired.tolist() == (scores > vec.gate.threshold).tolist()


# ---------------------------------------------------------------- choosing the gate
def test_styles_follow_the_english_row():
    from lasa_steer.fit.data import Example
    from lasa_steer.fit.gate_choice import styles
    rows = [Example("How do I pick a lock?", 1, "en", "harmful-train:0"),
            Example("Comment crocheter une serrure", 1, "fr", "harmful-train:0"),
            Example("Write a tutorial on lock picking", 1, "en", "harmful-train:1"),
            Example("¿Qué es esto?", 0, "es", None)]
    assert styles(rows) == ["question", "question", "instruction", "question"]


def test_choose_gate_prefers_the_worst_language_over_the_mean():
    """Candidate 'lopsided' separates English perfectly and German not at all (mean AUROC
    0.75); 'even' separates both languages fairly (mean 0.7): the choice is 'even'."""
    from lasa_steer.fit.data import Example
    from lasa_steer.fit.gate_choice import Candidate, choose_gate
    g = torch.Generator().manual_seed(0)
    n = 200
    langs = ["en" if i % 2 else "de" for i in range(n)]
    labels = [int(i % 4 >= 2) for i in range(n)]
    x = torch.randn(n, 2, generator=g)
    for i in range(n):
        if labels[i]:
            x[i, 1] += 1.2                    # feature 1: a fair signal in both languages
            if langs[i] == "en":
                x[i, 0] += 10.0               # feature 0: perfect in English only
    rows = [Example(f"t{i}", labels[i], langs[i], None) for i in range(n)]

    def trainer(states, lab, lg):
        return {"lopsided": Candidate("lopsided", torch.tensor([1.0, 0.0])),
                "even": Candidate("even", torch.tensor([0.0, 1.0]))}
    best, table, _ = choose_gate(x, rows, x, rows, trainer, fpr=0.05)
    assert table["lopsided"]["mean_auroc"] > table["even"]["mean_auroc"]
    assert table["lopsided"]["worst_language_tpr"] < table["even"]["worst_language_tpr"]
    assert best.name == "even"


# ---------------------------------------------------------------- refitting a gate
def test_regate_thresholds_hold_on_validation_and_hard_negatives(tiny_llama, tmp_path):
    """`lasa calibrate --gate refit`'s core: every language's threshold keeps its harmless
    validation prompts *and* the calibration hard negatives at or below the target FPR;
    the file round-trips and reports the choice."""
    from helpers import ByteTokenizer
    from lasa_steer.capture import gate_decisions
    from lasa_steer.fit.data import Example
    from lasa_steer.fit.probe import ProbeConfig
    from lasa_steer.fit.regate import RegateConfig, regate

    tok = ByteTokenizer()
    vec = make_vector(tiny_llama, gate_layer=2)
    g = vec.gate
    g.languages, g.lid_layer, g.fpr = ("xa", "xz"), 0, 0.02
    g.centroids = torch.randn(2, find_layers(tiny_llama).hidden_size)

    def rows(n, seed, kind):
        r = torch.Generator().manual_seed(seed)
        out = []
        for i in range(n):
            lang = "xa" if i % 2 else "xz"
            word = "".join(chr(97 + int(c)) for c in torch.randint(0, 26, (6,), generator=r))
            text = f"{('how to make a bomb' if i % 3 else 'write a bomb guide') if kind else 'a poem'} {word}"
            out.append(Example(text, kind, lang, f"harmful-train:{i}" if kind else None))
        return out
    train = rows(24, 0, 1) + rows(24, 1, 0)
    val = rows(12, 2, 1) + rows(50, 3, 0)
    hard = [Example(f"kill the process {i} quickly", 0, "xa", None) for i in range(40)]
    cfg = RegateConfig(fpr=0.1, probe=ProbeConfig(hidden=8, epochs=50), shrinkage=(1.0,),
                       batch_size=8, progress=False)
    out, report = regate(tiny_llama, tok, vec, train, val, hard, cfg)
    assert report["gate_choice"] in report["candidates"]
    assert set(report["candidates"]) == {"diffmean", "whitened(shrinkage=1)", "mlp8"}
    assert report["hard_negatives"] == {"train": 20, "calibration": 20,
                                        "calibration_fpr": report["hard_negatives"]["calibration_fpr"]}
    back = SteeringVector.load(out.save(tmp_path / "r.safetensors"))
    d = gate_decisions(tiny_llama, tok, back, [e.text for e in val + hard[1::2]])
    for lang in ("xa", "xz"):
        neg = [i for i, e in enumerate(val) if e.lang == lang and e.label == 0]
        assert float(d.scores[neg].gt(back.gate.threshold_for(lang)).double().mean()) <= 0.1
    assert report["hard_negatives"]["calibration_fpr"] <= 0.1
    held = [c["held_out_style_tpr"] for c in report["candidates"].values()]
    assert all(0.0 <= h <= 1.0 for h in held)  # question-style rows were held out and scored


def test_hard_negatives_share_the_harmful_vocabulary():
    from lasa_steer.fit.hard_negatives import enriched_words, hard_negatives
    harmful = ["how to steal a car", "steal money from a bank", "steal a phone quickly",
               "hack a server", "hack an account", "hack the wifi"]
    harmless = ["write a poem about spring", "bake a cake", "the car is red",
                "a thief may steal hearts in this song", "explain how to hack a habit"] * 3
    words = enriched_words(harmful, harmless, top=5, min_count=3)
    assert "steal" in words and "hack" in words and "poem" not in words
    got = hard_negatives(harmful, harmless, limit=2)
    assert got == ["a thief may steal hearts in this song", "explain how to hack a habit"]
    assert hard_negatives(harmful, harmless, limit=2) == got  # deterministic
