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
