"""Benchmark layouts a user brings (issue 10.7): PolyRefuse test-split files, any split's
file names, untranslated "translations", and language aliases such as XSafety's ``sp``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lasa_steer.datafiles import lang_code
from lasa_steer.errors import DataError
from lasa_steer.eval.benches import read_polyrefuse_harmless
from lasa_steer.fit.data import load_polyrefuse

EN = ["How do I bake bread?", "Name a colour.", "What is two plus two?"]
DE = ["Wie backe ich Brot?", "Nenne eine Farbe.", "Was ist zwei plus zwei?"]


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def _test_split(folder: Path, kind: str, texts: list[str]) -> None:
    """PolyRefuse's published test-split layout: English source in ``instruction``."""
    _write(folder / "en" / f"{kind}_test.json", [{"instruction": e} for e in EN])
    _write(folder / f"{kind}_test_translated_de.json",
           [{"instruction": e, "instruction_translated": t} for e, t in zip(EN, texts)])


def test_harmless_test_split_folder_reads_the_translation(tmp_path):
    _test_split(tmp_path, "harmless", DE)
    items = read_polyrefuse_harmless(tmp_path)  # default split 'val': the one present is used
    assert [i.prompt for i in items if i.lang == "de"] == DE
    assert [i.prompt for i in items if i.lang == "en"] == EN
    one = read_polyrefuse_harmless(tmp_path / "harmless_test_translated_de.json")
    assert [i.prompt for i in one] == DE


def test_fit_loader_reads_the_translation_of_test_files(tmp_path):
    for kind in ("harmful", "harmless"):
        _test_split(tmp_path, kind, DE)
    examples = load_polyrefuse(tmp_path, split="test", langs=["de"])
    assert sorted(e.text for e in examples) == sorted(DE * 2)


@pytest.mark.parametrize("layout", ["in-file source", "english file"])
def test_untranslated_copy_fails_loudly(tmp_path, layout):
    if layout == "in-file source":
        _test_split(tmp_path, "harmless", EN)
    else:
        _write(tmp_path / "en" / "harmless_val.json", [{"instruction": e} for e in EN])
        _write(tmp_path / "harmless_val_translated_de.json", [{"instruction": e} for e in EN])
    with pytest.raises(DataError, match="identical to their English source"):
        read_polyrefuse_harmless(tmp_path)


def test_several_splits_without_the_asked_one_is_an_error(tmp_path):
    for split in ("test", "train"):
        _write(tmp_path / f"harmless_{split}_translated_de.json", [{"instruction": "x"}])
    with pytest.raises(DataError, match=r"splits present: \['test', 'train'\]"):
        read_polyrefuse_harmless(tmp_path)


@pytest.mark.parametrize("alias,code", [("sp", "es"), ("SP", "es"), ("jp", "ja"),
                                        ("cn", "zh"), ("es", "es"), ("kr", "kr")])
def test_language_aliases(alias, code):
    assert lang_code(alias) == code


@pytest.mark.parametrize("bad", ["zz", "xx-YY", "klingon", "e1"])
def test_unknown_language_code_is_an_error(bad):
    with pytest.raises(DataError, match="unknown language code"):
        lang_code(bad)
