"""Data loaders: formats, the one language-code set, errors naming file and row."""

from __future__ import annotations

import json

import pytest

from conftest import require_shared_data
from lasa_steer.fit.data import (HARMFUL, HARMLESS, default_data_dir, lang_code, load_labelled,
                             load_multijail, load_ntrex, load_nusax, load_parallel,
                             load_polyrefuse, polyrefuse_langs, split_examples)
from lasa_steer.errors import DataError


@pytest.mark.parametrize("raw,code", [("swa", "sw"), ("zho-CN", "zh"), ("eng", "en"),
                                      ("javanese", "jv"), ("toba_batak", "bbc"), ("EN", "en"),
                                      ("pt-BR", "pt"), ("arb", "ar"), ("indonesian", "id")])
def test_lang_codes(raw, code):
    assert lang_code(raw) == code


def test_labelled_jsonl_and_csv(tmp_path):
    j = tmp_path / "d.jsonl"
    j.write_text('{"text": "hi", "label": "harmless", "lang": "eng"}\n\n'
                 '{"text": "bomb", "label": 1, "lang": "de", "group": 7}\n')
    ex = load_labelled(j)
    assert [(e.text, e.label, e.lang, e.group) for e in ex] == [
        ("hi", HARMLESS, "en", None), ("bomb", HARMFUL, "de", "7")]
    c = tmp_path / "d.csv"
    c.write_text("text,label,lang\nhello,0,swa\n\"a, b\",harmful,zho-CN\n")
    assert [(e.text, e.label, e.lang) for e in load_labelled(c)] == [
        ("hello", 0, "sw"), ("a, b", 1, "zh")]


@pytest.mark.parametrize("body,msg", [
    ('{"text": "a", "label": 1, "lang": "en"}\n{"text": "b", "label": 1}\n', "row 2: missing field 'lang'"),
    ('{"text": "a", "label": 1, "lang": "en"}\nnot json\n', "row 2 is not valid JSON"),
    ('{"text": "a", "label": "maybe", "lang": "en"}\n', "row 1: label 'maybe'"),
])
def test_malformed_jsonl_names_file_and_row(tmp_path, body, msg):
    p = tmp_path / "bad.jsonl"
    p.write_text(body)
    with pytest.raises(DataError) as err:
        load_labelled(p)
    assert str(p) in str(err.value) and msg in str(err.value)


def test_malformed_csv_names_row(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("text,label,lang\nok,0,en\ntoo,many,fields,here\n")
    with pytest.raises(DataError, match=r"bad\.csv: row 3 has 4 fields"):
        load_labelled(p)


def test_polyrefuse_folder_format(tmp_path):
    (tmp_path / "en").mkdir()
    for kind in ("harmful", "harmless"):
        (tmp_path / "en" / f"{kind}_train.json").write_text(
            json.dumps([{"instruction": f"{kind} en {i}", "category": None} for i in range(3)]))
        (tmp_path / f"{kind}_train_translated_de.json").write_text(
            json.dumps([{"instruction": f"{kind} de {i}"} for i in range(3)]))
    assert polyrefuse_langs(tmp_path) == ["en", "de"]
    ex = load_polyrefuse(tmp_path, "train")
    assert len(ex) == 12
    harmful = [e for e in ex if e.label == HARMFUL]
    assert {e.group for e in harmful if e.lang == "en"} == {e.group for e in harmful if e.lang == "de"}
    assert all(e.group is None for e in ex if e.label == HARMLESS)
    (tmp_path / "harmless_train_translated_de.json").write_text('[{"instruction": ""}]')
    with pytest.raises(DataError, match="harmless_train_translated_de.json: row 0"):
        load_polyrefuse(tmp_path, "train")


def test_parallel_csv_and_split(tmp_path):
    p = tmp_path / "par.csv"
    p.write_text(",english,javanese\n0,hello,halo\n1,bye,\n")
    with pytest.raises(DataError, match=r"par\.csv: row 3 column 'javanese' is empty"):
        load_parallel(str(p))
    p.write_text(",english,javanese\n0,hello,halo\n1,bye,dadah\n")
    par = load_parallel(str(p))
    assert par.langs == ["en", "jv"] and par.sentences["jv"] == ["halo", "dadah"]
    ex = [e for e in load_labelled_rows()]
    train, val = split_examples(ex, 0.25, seed=3)
    assert len(val) == 4 and len(train) == 12
    assert {(e.lang, e.label) for e in val} == {("en", 0), ("en", 1), ("de", 0), ("de", 1)}


def load_labelled_rows():
    from lasa_steer.fit.data import Example
    return [Example(f"{lang}{lab}{i}", lab, lang) for lang in ("en", "de") for lab in (0, 1)
            for i in range(4)]


def test_default_data_dir_override(tmp_path, monkeypatch):
    monkeypatch.setenv("LASA_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path.resolve()
    with pytest.raises(DataError, match="data folder not found"):
        default_data_dir(tmp_path / "nope")


def test_shared_data_loaders():
    root = require_shared_data()
    ntrex = load_ntrex(root)
    assert len(ntrex) == 1997 and {"en", "sw", "zh", "ar", "yo"} <= set(ntrex.langs)
    assert "eng" not in ntrex.langs
    nusax = load_nusax(root)
    assert {"en", "id", "jv"} <= set(nusax.langs) and len(nusax) == 400
    mj = load_multijail(root)
    assert mj.langs == ["en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"]
    assert len(mj) == 63
    assert len(polyrefuse_langs(root / "polyrefuse")) == 14
    tr = load_polyrefuse(root, "train")
    assert sum(e.label == HARMFUL for e in tr) == 260 * 14
    assert sum(e.label == HARMLESS for e in tr) == 200 * 14
    sub = mj.select(["sw", "en"], limit=5, seed=1)
    assert sub.langs == ["sw", "en"] and len(sub) == 5
