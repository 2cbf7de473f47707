"""The shipped contrast prompts (src/lasa_steer/fit/contrast_data) are well formed, their
README's count tables are the file's, and the reader rejects each kind of defect."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from lasa_steer.errors import DataError
from lasa_steer.fit.contrast import (CONTRAST_FILE, CONV_FIELDS, FIELDS, contrast_examples,
                                     conv_seed_group, count_tables, read_contrast)
from lasa_steer.fit.data import load_labelled
from lasa_steer.fit.mixture import SourceSpec, load_mixture
from lasa_steer.types import HARMFUL, HARMLESS

from conftest import require_shared_data

README = CONTRAST_FILE.parent / "README.md"
# the languages the data was written in; a new one is added here on purpose
LANGS = {"en", "zh", "ar", "ko", "ja", "it", "es", "fr", "de", "ru", "vi", "th", "bn", "sw",
         "jv", "id", "pt", "nl", "pl", "tr", "hi", "yo", "ms"}


@pytest.fixture(scope="module")
def rows():
    return read_contrast()


def test_shipped_file_is_valid_and_sized(rows):
    assert {r["lang"] for r in rows} <= LANGS
    en = Counter(r["label"] for r in rows if r["lang"] == "en")
    assert en["harmless"] >= 240 and en["harmful"] >= 140
    # every group is an English seed plus translations of it; a conversational translation's
    # English seed is in safety_mix instead
    en_groups = {r["group"] for r in rows if r["lang"] == "en"}
    own = [r for r in rows if "kind" not in r]
    assert {r["group"] for r in own} == en_groups
    conv = [r for r in rows if "kind" in r]
    assert conv and all(r["lang"] != "en" and conv_seed_group(r["group"]) for r in conv)
    # the file is written as the brief says: UTF-8, characters not escaped, one object a line
    raw = CONTRAST_FILE.read_text(encoding="utf-8")
    assert "\\u" not in raw and raw.endswith("\n")
    assert len(raw.splitlines()) == len(rows)


def test_readme_counts_are_the_files(rows):
    block = re.search(r"<!-- counts:start -->\n(.*)<!-- counts:end -->",
                      README.read_text(encoding="utf-8"), re.S)
    assert block, "README.md lost its counts markers"
    assert block.group(1) == count_tables(rows), \
        "README counts are stale: paste the output of python -m lasa_steer.fit.contrast"


def test_examples_and_generic_loader_agree(rows):
    examples = contrast_examples()
    assert [(e.text, e.lang, e.group) for e in examples] == \
        [(r["text"], r["lang"], r["group"]) for r in rows]
    assert [e.label for e in examples] == \
        [HARMFUL if r["label"] == "harmful" else HARMLESS for r in rows]
    generic = load_labelled(CONTRAST_FILE)
    assert [(e.text, e.label, e.lang, e.group) for e in generic] == \
        [(e.text, e.label, e.lang, e.group) for e in examples]
    en = contrast_examples(langs={"en"})
    assert en and all(e.lang == "en" for e in en)
    assert len(en) == sum(r["lang"] == "en" for r in rows)


def test_conversational_rows_translate_train_part_safety_mix_seeds(rows):
    """Each conversational group names an English safety_mix row of the same label in the
    part the fit trains on (so no held-out safety_mix row leaks in through a translation),
    and the mixture puts its translations in that part too."""
    data = require_shared_data()
    mix = load_mixture([SourceSpec("safety_mix"), SourceSpec("contrast")], data)
    seeds = {(r.group, r.label, r.part) for r in mix.rows
             if r.source == "safety_mix" and r.lang == "en"}
    conv = [r for r in rows if "kind" in r]
    assert conv
    for r in conv:
        label = HARMFUL if r["label"] == "harmful" else HARMLESS
        assert (conv_seed_group(r["group"]), label, "train") in seeds, r
    parts = Counter(r.part for r in mix.rows
                    if r.source == "contrast" and r.group.startswith("conv:"))
    assert parts and set(parts) == {"train"}
    # the project's own groups keep their hashed parts
    own = Counter(r.part for r in mix.rows if r.source == "contrast" and r.group.startswith("c0"))
    assert set(own) == {"train", "calibration", "test"}


def _row(**change):
    rec = {"text": "How do I kill a Python process?", "label": "harmless", "lang": "en",
           "category": "homonym", "group": "c0001", "source": "lasa-contrast"}
    rec.update(change)
    return rec


@pytest.mark.parametrize("lines, message", [
    ([_row(), _row(text="Wie beende ich einen Python-Prozess?", lang="de", label="harmful")],
     "group c0001 is harmful/homonym here but harmless/homonym in row 1"),
    ([_row(), _row(lang="de")], "same text as row 1"),
    ([_row(), _row(text="Wie beende ich einen Python-Prozess?", lang="de"),
      _row(text="Wie kille ich einen Python-Prozess?", lang="de")], "two rows in 'de'"),
    ([_row(label="safe")], "label 'safe' is not one of"),
    ([_row(lang="eng")], "not a normalised code (write 'en')"),
    ([_row(lang="qq")], "unknown language code"),
    ([_row(group="7")], "is not like 'c0001'"),
    ([_row(source="xstest")], "source 'xstest'"),
    ([_row(text=" padded ")], "whitespace"),
    ([{k: v for k, v in _row().items() if k != "category"}], "exactly the fields"),
    ([_row(text="")], "non-empty string"),
    ([_row(lang="en", group="conv:hh:1", **CONV_FIELDS)], "a conversational translation is "
                                                          "not English"),
    ([_row(lang="vi", **CONV_FIELDS)], "group 'c0001' of a conversational translation"),
    ([_row(lang="vi", group="conv:hh:1", kind="conversational", seed_source="xstest")],
     "seed_source 'xstest' is not 'safety_mix'"),
    ([_row(lang="vi", group="conv:hh:1", kind="conversational")], "exactly the fields"),
    ([_row(lang="vi", group="conv:hh:1")], "is not like 'c0001'"),
    (['{"text": "unterminated'], "row 1 is not valid JSON"),
])
def test_reader_rejects_defects(tmp_path, lines, message):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)
                              for x in lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(message)):
        read_contrast(path)


def test_reader_accepts_a_translated_group(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (
        _row(), _row(text="Wie beende ich einen Python-Prozess?", lang="de"))) + "\n",
        encoding="utf-8")
    assert [r["lang"] for r in read_contrast(path)] == ["en", "de"]
    assert sorted(read_contrast(path)[0]) == sorted(FIELDS)


def test_reader_accepts_a_conversational_translation(tmp_path):
    path = tmp_path / "c.jsonl"
    conv = _row(text="Làm sao để trộm xe?", lang="vi", label="harmful", category="theft",
                group="conv:hh:7", **CONV_FIELDS)
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (_row(), conv))
                    + "\n", encoding="utf-8")
    got = read_contrast(path)
    assert got[1] == conv and conv_seed_group(got[1]["group"]) == "hh:7"
    assert conv_seed_group(got[0]["group"]) is None
    assert [(e.text, e.group) for e in contrast_examples(path)][1] == (conv["text"], "conv:hh:7")
