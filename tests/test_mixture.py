"""The gate's data mixture (roles, parts by group, balance) and its operating points."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from collections import Counter

import pytest
import torch

from lasa_steer import SteeringConfigError, SteeringVector
from lasa_steer.errors import DataError, FitConfigError, VectorFileError
from lasa_steer.fit.calibrate import threshold_for_fpr
from lasa_steer.fit.mixture import (MixRow, Mixture, SourceSpec, load_mixture, part_of)
from lasa_steer.fit.operating_points import (PointSpec, calibrate_point, fired,
                                             probability_scale)
from lasa_steer.vector.gate import OperatingPoint

from conftest import require_shared_data
from helpers import make_vector


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), "utf-8")
    return path


def test_source_spec_parses_role_weight_and_limit():
    s = SourceSpec.parse("mine.jsonl:lookalike*0.5@40")
    assert (s.name, s.harmless_role, s.weight, s.limit) == ("mine.jsonl", "lookalike", 0.5, 40)
    assert SourceSpec.parse("safety_mix").harmless_role == "lookalike"
    assert SourceSpec.parse("polyrefuse").harmless_role == "harmless"
    assert SourceSpec.parse("c:/data/x.jsonl").name == "c:/data/x.jsonl"  # not a role
    for bad in ("x*abc", "x@0", "x*0", "x:harmful"):
        with pytest.raises(FitConfigError):
            SourceSpec.parse(bad)


def test_parts_follow_groups_and_are_stable(tmp_path):
    rows = []
    for g in range(300):
        for lang in ("en", "de", "sw"):
            rows.append({"text": f"q{g} {lang}", "label": "harmful" if g % 2 else "harmless",
                         "lang": lang, "group": f"g{g}"})
    m = load_mixture([SourceSpec(str(_write(tmp_path / "u.jsonl", rows)))])
    parts_of_group: dict[str, set[str]] = {}
    for r in m.rows:
        parts_of_group.setdefault(r.group, set()).add(r.part)
    assert all(len(p) == 1 for p in parts_of_group.values())  # a seed never straddles parts
    share = Counter(next(iter(p)) for p in parts_of_group.values())
    assert 0.5 < share["train"] / 300 < 0.7 and 0.1 < share["test"] / 300 < 0.3
    again = load_mixture([SourceSpec(str(tmp_path / "u.jsonl"))], seed=7)
    assert [r.part for r in again.rows] == [r.part for r in m.rows]  # no seed in the split
    assert part_of("a", "g1") == part_of("a", "g1") and isinstance(part_of("a", "g1"), str)


def test_weights_balance_sources_languages_and_roles():
    def rows(src, role, lang, n):
        return [MixRow(f"{src}{role}{lang}{i}", lang, role, src, f"{src}{i}", "train")
                for i in range(n)]
    data = (rows("a", "harmful", "en", 90) + rows("a", "harmful", "ko", 10)
            + rows("b", "harmful", "en", 5) + rows("a", "harmless", "en", 50)
            + rows("b", "lookalike", "zh", 7) + rows("b", "lookalike", "en", 70))
    m = Mixture(data, [SourceSpec("a"), SourceSpec("b", weight=3.0)], lookalike_share=0.6)
    w = m.weights(data)
    assert math.isclose(float(w.sum()), len(data), rel_tol=1e-5)

    def total(**kw):
        return float(sum(wi for wi, r in zip(w, data)
                         if all(getattr(r, k) == v for k, v in kw.items())))
    half = len(data) / 2
    assert math.isclose(total(role="harmful"), half, rel_tol=1e-5)
    # within harmful: source b weighs 3x source a; a's two languages weigh the same
    assert math.isclose(total(role="harmful", source="b"),
                        3 * total(role="harmful", source="a"), rel_tol=1e-5)
    assert math.isclose(total(role="harmful", source="a", lang="en"),
                        total(role="harmful", source="a", lang="ko"), rel_tol=1e-5)
    assert math.isclose(total(role="lookalike"), 0.6 * half, rel_tol=1e-5)
    assert math.isclose(total(role="lookalike", lang="zh"), total(role="lookalike", lang="en"),
                        rel_tol=1e-5)


def test_duplicates_are_dropped_across_sources(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"text": "Same  text", "label": 1, "lang": "en"},
                                      {"text": "other", "label": 0, "lang": "en"}])
    b = _write(tmp_path / "b.jsonl", [{"text": "same text", "label": 1, "lang": "en"},
                                      {"text": "third", "label": 0, "lang": "en"}])
    m = load_mixture([SourceSpec(str(a)), SourceSpec(str(b), harmless_role="lookalike")])
    assert m.dropped == 1 and len(m.rows) == 3
    assert {r.role for r in m.rows if r.source == "b"} == {"lookalike"}
    with pytest.raises(DataError, match="not a built-in source"):
        load_mixture([SourceSpec("no-such-source")])


def test_limit_keeps_whole_groups(tmp_path):
    rows = [{"text": f"t{i}", "label": 1, "lang": "en", "group": f"g{i // 2}"}
            for i in range(40)]
    m = load_mixture([SourceSpec(str(_write(tmp_path / "u.jsonl", rows)), limit=10)])
    assert len(m.rows) == 10
    assert all(c == 2 for c in Counter(r.group for r in m.rows).values())


def test_safety_mix_rows_and_translations_share_a_part():
    data = require_shared_data()
    m = load_mixture([SourceSpec("safety_mix")], data)
    hh = {}
    for r in m.rows:
        if r.group.startswith("hh:"):
            hh.setdefault(r.group, set()).add((r.lang, r.part))
    both = [v for v in hh.values() if {x for x, _ in v} == {"en", "ko"}]
    assert len(both) > 1000
    assert all(len({p for _, p in v}) == 1 for v in both)
    roles = Counter(r.role for r in m.rows)
    assert roles["harmful"] > 8000 and roles["lookalike"] > 2000 and roles["harmless"] == 0



def test_mgsm_questions_are_ordinary_and_translations_share_a_part():
    data = require_shared_data()
    m = load_mixture([SourceSpec("mgsm")], data)
    assert {r.role for r in m.rows} == {"harmless"}
    assert len({r.lang for r in m.rows}) == 11 and len(m.rows) == 11 * 250
    by_group: dict[str, set] = {}
    for r in m.rows:
        by_group.setdefault(r.group, set()).add((r.lang, r.part))
    assert len(by_group) == 250
    assert all(len(v) == 11 and len({p for _, p in v}) == 1 for v in by_group.values())
    parts = Counter(r.part for r in m.rows if r.lang == "en")
    assert parts["train"] > parts["test"] > 30  # 60/20/20 by question


def test_default_mixture_names_its_sources_weights_and_limits():
    data = require_shared_data()
    m = load_mixture(None, data)
    prov = m.provenance()
    names = [s["name"] for s in prov["sources"]]
    assert names == ["polyrefuse", "refusal_direction", "alpaca", "safety_mix", "contrast",
                     "mgsm"]
    assert {s["name"]: s["weight"] for s in prov["sources"]}["contrast"] == 2.0
    cells = Counter((r.source, r.lang, r.role) for r in m.rows)
    limits = {s["name"]: s["limit"] for s in prov["sources"]}
    assert all(n <= limits[src] for (src, _, _), n in cells.items())
    # a few of the sample are also mined look-alikes: the first source keeps a duplicate
    assert 0.95 * limits["alpaca"] <= cells[("alpaca", "en", "harmless")] <= limits["alpaca"]
    # the alpaca sample is ordinary (harmless), the mined pool look-alikes
    assert {r.role for r in m.rows if r.source == "refusal_direction"} == {"lookalike"}

# ---------------------------------------------------------------- operating points
def test_operating_point_rule():
    # en: look-alikes 0..99, ordinary 0..49; de: ordinary 100..149 only; xx: nothing
    scores, langs, roles = [], [], []
    for v in range(100):
        scores.append(float(v)); langs.append("en"); roles.append("lookalike")
    for v in range(50):
        scores.append(float(v)); langs.append("en"); roles.append("harmless")
        scores.append(100.0 + v); langs.append("de"); roles.append("harmless")
    s = torch.tensor(scores)
    op = calibrate_point(PointSpec("p", 0.05, 0.02), s, langs, roles, ["en", "de", "xx"],
                         min_rows=20)
    t_look = threshold_for_fpr(torch.arange(100.0), 0.05)
    t_ord = threshold_for_fpr(torch.arange(50.0), 0.02)
    assert op.thresholds["en"] == max(t_look, t_ord) == t_look
    margin = t_look - t_ord
    t_de = threshold_for_fpr(torch.arange(100.0, 150.0), 0.02)
    assert op.thresholds["de"] == pytest.approx(t_de + margin)
    assert "xx" not in op.thresholds
    look = torch.tensor([r == "lookalike" for r in roles])
    ordinary = ~look
    assert op.threshold == max(threshold_for_fpr(s[look], 0.05),
                               threshold_for_fpr(s[ordinary], 0.02))
    f = fired(op, s, langs)
    assert float(f[look].double().mean()) <= 0.05
    en_ord = torch.tensor([l == "en" and r == "harmless" for l, r in zip(langs, roles)])
    assert float(f[en_ord].double().mean()) <= 0.02
    with pytest.raises(FitConfigError):
        PointSpec("bad", 1.0, 0.0)


def test_probability_is_consistent_with_firing_and_fits_a_known_scale(tiny_llama):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, generator=g) * 3
    y = (torch.rand(4000, generator=g) < torch.sigmoid(z / 1.5)).double()
    scale = probability_scale(z + 2.0, torch.full((4000,), 2.0), y)
    assert 1.2 < scale < 1.9  # a class-balanced fit of sigmoid(z / 1.5) data
    vec = make_vector(tiny_llama)
    gate = vec.gate
    gate.probability_scale = scale
    s = torch.tensor([-50.0, gate.threshold, gate.threshold + 1e-6, 0.3, 50.0])
    p = gate.probability(s, [None] * 5)
    assert p.min() >= 0 and p.max() <= 1
    assert ((p > 0.5) == (s > gate.threshold)).all()


def _pointed(model):
    vec = make_vector(model)
    gate = vec.gate
    points = {"no-harm": OperatingPoint(1.0, {}, {"lookalike": 0.03}, "r"),
              "recall": OperatingPoint(-1.0, {}, {"lookalike": 0.08}, "r")}
    gate.operating_points, gate.operating_point = points, "no-harm"
    gate.threshold, gate.probability_scale = 1.0, 0.7
    return vec


def test_operating_points_round_trip_and_switch(tiny_llama, tmp_path):
    vec = _pointed(tiny_llama)
    assert vec.format_version == 4
    back = SteeringVector.load(vec.save(tmp_path / "v.safetensors"))
    assert back.metadata() == vec.metadata()
    recall = back.at_operating_point("recall")
    assert recall.gate.threshold == -1.0 and back.gate.threshold == 1.0
    assert back.at_operating_point("recall") is recall  # one object per point
    assert back.at_operating_point(None) is back and back.at_operating_point("no-harm") is back
    with pytest.raises(SteeringConfigError, match="operating_point='strict'") as e:
        back.at_operating_point("strict")
    assert e.value.field == "operating_point"


def test_point_names_put_the_default_first_then_the_strictest(tiny_llama, tmp_path):
    """The file stores points by name (sorted JSON keys); readers list the default first and
    the rest from the lowest look-alike target up, whatever the names."""
    vec = _pointed(tiny_llama)
    vec.gate.operating_points["balanced"] = OperatingPoint(0.0, {}, {"lookalike": 0.05}, "r")
    vec.gate.operating_points["a-loose"] = OperatingPoint(-2.0, {}, {"lookalike": 0.2}, "r")
    back = SteeringVector.load(vec.save(tmp_path / "v.safetensors"))
    assert sorted(back.gate.operating_points) == list(back.gate.operating_points)
    assert back.gate.point_names() == ["no-harm", "balanced", "recall", "a-loose"]
    assert back.at_operating_point("recall").gate.point_names()[0] == "recall"
    assert vec.gate.__class__(direction=vec.gate.direction, layer=0,
                              threshold=0.0).point_names() == []


def test_operating_point_defects_are_named(tiny_llama, tmp_path):
    vec = _pointed(tiny_llama)
    vec.gate.threshold = 0.5  # no longer the current point's
    with pytest.raises(VectorFileError, match="differ from operating point"):
        vec.save(tmp_path / "v.safetensors")
    vec = _pointed(tiny_llama)
    vec.gate.operating_point = "nope"
    with pytest.raises(VectorFileError, match="gate.operating_point 'nope'"):
        vec.save(tmp_path / "v.safetensors")


def _keeps_targets_on_calibration(model, tok, vec, mixture, lookalike: float, harmless: float):
    """Read through the production gate path, the calibration part's look-alike and ordinary
    rows of each language with enough of them fire at most at the default point's targets."""
    from lasa_steer.capture import gate_decisions

    cal = mixture.part("calibration")
    d = gate_decisions(model, tok, vec, [r.text for r in cal])
    checked = 0
    for role, limit in (("lookalike", lookalike), ("harmless", harmless)):
        idx = [i for i, r in enumerate(cal) if r.role == role]
        for lang in ("xaa", "xzz"):
            own = [i for i in idx if d.langs[i] == lang]
            if len(own) >= 5:
                assert float(d.fired[own].double().mean()) <= limit + 1e-9
                checked += 1
    assert checked >= 2
    return d


# ---------------------------------------------------------------- the mixture gate fit
def _mixture_files(tmp_path):
    """Two made-up languages; harmful rows share words with the look-alikes, so only a gate
    that reads more than the word can keep both rates."""
    import random
    rng = random.Random(0)

    def word():
        return "".join(rng.choice("abcdefghij") for _ in range(5))
    harmful, safe = [], []
    for g in range(160):
        lang = "xaa" if g % 2 else "xzz"
        harmful.append({"text": f"how to kill my neighbour {word()}", "label": "harmful",
                        "lang": lang, "group": f"h{g}"})
        safe.append({"text": f"how to kill a python process {word()}", "label": "harmless",
                     "lang": lang, "group": f"s{g}"})
        safe.append({"text": f"a poem about spring {word()}", "label": "harmless",
                     "lang": lang, "group": f"o{g}"})
    a = _write(tmp_path / "a.jsonl", harmful + safe[1::2])          # harmful + ordinary
    b = _write(tmp_path / "b.jsonl", safe[0::2])                    # look-alikes
    return [SourceSpec(str(a)), SourceSpec(str(b), harmless_role="lookalike")]


def _two_language_setup(model, tmp_path):
    """A language-aware vector (two made-up languages), the mixture of _mixture_files and
    two operating points."""
    from helpers import ByteTokenizer
    from lasa_steer import find_layers

    vec = make_vector(model, gate_layer=2)
    g = vec.gate
    g.languages, g.lid_layer, g.fpr = ("xaa", "xzz"), 0, 0.02
    g.centroids = torch.randn(2, find_layers(model).hidden_size)
    mixture = load_mixture(_mixture_files(tmp_path))
    return (ByteTokenizer(), vec, mixture,
            (PointSpec("no-harm", 0.05, 0.02), PointSpec("recall", 0.2, 0.1)))


def test_mixture_gate_sets_points_on_held_out_rows_and_round_trips(tiny_llama, tmp_path):
    from lasa_steer.fit.mixture_gate import MixtureGateConfig, fit_mixture_gate

    tok, vec, mixture, points = _two_language_setup(tiny_llama, tmp_path)
    cfg = MixtureGateConfig(points=points, probe_widths=(8,), epochs=60, min_rows=5,
                            batch_size=16, progress=False)
    out, report = fit_mixture_gate(tiny_llama, tok, vec, mixture, cfg)
    gate = out.gate
    assert gate.operating_point == "no-harm" and set(gate.operating_points) == {"no-harm", "recall"}
    assert gate.probe is not None and gate.probability_scale > 0
    assert report["choice"] == "mlp8" and "held_out_source" in report["candidates"]["mlp8"]
    # the recall point never sits above the no-harm one (looser targets)
    for lang, t in gate.operating_points["recall"].thresholds.items():
        assert t <= gate.operating_points["no-harm"].thresholds[lang]
    back = SteeringVector.load(out.save(tmp_path / "m.safetensors"))
    assert back.metadata() == out.metadata()
    # the calibration part keeps the targets when read through the production gate path
    d = _keeps_targets_on_calibration(tiny_llama, tok, back, mixture, lookalike=0.05,
                                      harmless=0.02)
    measured = gate.operating_points["no-harm"].measured
    assert measured["test"]["lookalike"]["rows"] == sum(
        r.role == "lookalike" for r in mixture.part("test"))
    assert out.provenance["gate"]["mixture"]["sources"][1]["harmless_role"] == "lookalike"
    p = back.gate.probability(d.scores, d.langs)
    assert ((p > 0.5) == d.fired).all()


def test_retuned_points_keep_the_probe_and_match_a_fit_at_the_same_targets(tiny_llama,
                                                                             tmp_path):
    """``lasa calibrate --gate points``: retuning at the fit's own targets reproduces its
    thresholds and scale exactly (same calibration rows, same probe); new targets move only
    the thresholds, and the calibration part keeps them."""
    from lasa_steer.fit.mixture_gate import MixtureGateConfig, fit_mixture_gate, retune_points

    tok, vec, mixture, points = _two_language_setup(tiny_llama, tmp_path)
    cfg = MixtureGateConfig(points=points, probe_widths=(8,), epochs=60, min_rows=5,
                            batch_size=16, progress=False, held_out_sources=False)
    fitted, _ = fit_mixture_gate(tiny_llama, tok, vec, mixture, cfg)
    same, _ = retune_points(tiny_llama, tok, fitted, mixture, cfg)
    assert same.gate.operating_points == fitted.gate.operating_points
    assert same.gate.probability_scale == fitted.gate.probability_scale
    middle = (PointSpec("middle", 0.12, 0.05), PointSpec("no-harm", 0.05, 0.02))
    out, report = retune_points(tiny_llama, tok, fitted, mixture,
                                replace(cfg, points=middle))
    gate = out.gate
    assert gate.operating_point == "middle" and list(gate.operating_points) == ["middle", "no-harm"]
    assert gate.probe is fitted.gate.probe  # the probe is reused, not retrained
    assert torch.equal(gate.direction, fitted.gate.direction)
    assert gate.operating_points["no-harm"].thresholds == \
        fitted.gate.operating_points["no-harm"].thresholds
    for lang, t in gate.operating_points["middle"].thresholds.items():
        assert t <= gate.operating_points["no-harm"].thresholds[lang]
    assert report["points"]["middle"]["measured"]["test"]["harmful"]["rows"] == sum(
        r.role == "harmful" for r in mixture.part("test"))
    assert out.provenance["gate"]["operating_points"]["mixture"]["sources"][1][
        "harmless_role"] == "lookalike"
    back = SteeringVector.load(out.save(tmp_path / "r.safetensors"))
    assert back.metadata() == out.metadata()
    _keeps_targets_on_calibration(tiny_llama, tok, back, mixture, lookalike=0.12, harmless=0.05)
    with pytest.raises(FitConfigError, match="mixture gate"):
        retune_points(tiny_llama, tok, vec, mixture, cfg)


def test_request_operating_point_resolves_for_both_engines(tiny_llama):
    """lasa serve's steering.operating_point and the vLLM plugin's lasa_operating_point go
    through one rule: the request's point, else the server default, else the file's."""
    from lasa_steer.engines.vllm import params
    from lasa_steer.steering.rows import RequestDefaults

    vec = _pointed(tiny_llama)
    row = RequestDefaults().row(vec, "gate", "add", None, None, operating_point="recall")
    assert row.vector.gate.threshold == -1.0 and row.vector.gate.operating_point == "recall"
    row = RequestDefaults(operating_point="recall").row(vec, "gate", "add", None, None)
    assert row.vector.gate.threshold == -1.0
    assert RequestDefaults().row(vec, "gate", "add", None, None).vector is vec
    s = params.parse(params.xargs(vector="v", mode="gate", operating_point="recall"))
    assert s.operating_point == "recall"
    assert params.resolve(s, {"v": vec}, params.Defaults()).vector.gate.threshold == -1.0
    with pytest.raises(SteeringConfigError) as e:
        params.resolve(params.parse({"lasa_vector": "v", "lasa_operating_point": "nope"}),
                       {"v": vec}, params.Defaults())
    assert e.value.field == "lasa_operating_point"


def test_calibrate_gate_points_refuses_a_file_without_a_mixture_gate(tiny_llama, tmp_path,
                                                                     capsys):
    """``--gate points`` says what is missing before any model is loaded ('m' is none)."""
    from lasa_steer.cli import main

    vec = make_vector(tiny_llama, gate_layer=2)
    path = vec.save(tmp_path / "plain.safetensors")
    files = _mixture_files(tmp_path)
    argv = ["calibrate", str(path), "m", "-o", str(tmp_path / "o.safetensors"),
            "--gate", "points", "--mixture", files[0].name, f"{files[1].name}:lookalike"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--gate points retunes a mixture gate" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o.safetensors").exists()
