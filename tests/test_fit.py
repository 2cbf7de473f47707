"""Fit math on synthetic activations, threshold calibration, an end-to-end fit on a tiny
random model, and the shipped SmolLM2 vector's gate on real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BatchEncoding

from conftest import make_tiny, require_shared_data
from lasa_steer import SteeringVector
from lasa_steer.fit.calibrate import StrengthTrial, choose_trial, rate_above, threshold_for_fpr
from lasa_steer.fit.data import HARMFUL, HARMLESS, load_labelled
from lasa_steer.fit.directions import (auroc, harm_direction, language_subspace, project_out,
                                   whitened_direction, within_cell_covariance)
from lasa_steer.fit import FitConfig, fit, write_report
from lasa_steer.vector.shipped import SHIPPED_DIR

SHIPPED = SHIPPED_DIR / "smollm2-135m-instruct.safetensors"


def planted(seed=0, h=64, langs=5, per=40, lang_scale=8.0):
    """States = language offset + label * harm + noise. Language offsets span a subspace
    orthogonal to the planted harm direction; harmful rows are also pushed along their
    language's offset by a language-dependent amount (a translation-style artefact), and
    languages have unequal harmful counts."""
    g = torch.Generator().manual_seed(seed)
    harm = torch.randn(h, generator=g)
    harm /= harm.norm()
    offsets = lang_scale * torch.randn(langs, h, generator=g)
    offsets -= offsets.mean(0, keepdim=True)
    offsets -= (offsets @ harm)[:, None] * harm[None, :]
    xs, labels, names = [], [], []
    for li in range(langs):
        n_pos = per * (li + 1)
        for lab, n in ((1, n_pos), (0, per)):
            shift = 0.1 * (li + 1) * offsets[li] if lab else 0.0
            x = offsets[li] + lab * 3.0 * harm + shift + 0.3 * torch.randn(n, h, generator=g)
            xs.append(x)
            labels += [lab] * n
            names += [f"l{li}"] * n
    return torch.cat(xs), labels, names, harm, offsets


def test_combined_direction_recovers_planted_harm():
    x, labels, langs, harm, offsets = planted()
    hd = harm_direction(x, labels, langs)
    assert float(hd.direction @ harm) > 0.99
    assert hd.subspace_rank == 4
    # without the projection the language artefact contaminates the direction
    assert float(hd.raw @ harm) < 0.97
    assert hd.fraction_removed > 0.05
    no_removal = harm_direction(x, labels, langs, remove_language=False)
    assert float(no_removal.direction @ harm) < 0.97
    # the cleaned direction has no component along the language subspace
    basis = language_subspace(x, langs, labels)
    assert float((basis.T @ hd.direction).abs().max()) < 1e-5
    for li in range(1, 5):
        d = offsets[li] - offsets[0]
        assert abs(float(hd.direction @ d)) / float(d.norm()) < 0.01
    # a pooled diff of means (unequal counts per language) is worse still
    lab = torch.tensor(labels)
    pooled = x[lab == 1].mean(0) - x[lab == 0].mean(0)
    assert float(pooled @ harm) / float(pooled.norm()) < float(hd.raw @ harm)


def _nuisance_data(seed=0, h=32, per=300, nuisance_sd=6.0):
    """Two classes 1.0 apart along ``harm``, plus a high-variance nuisance axis that is not
    orthogonal to ``harm`` (cos 0.6), the same for both classes and two languages. The axes
    are fixed; ``seed`` draws the samples."""
    g = torch.Generator().manual_seed(1234)
    harm = torch.randn(h, generator=g)
    harm /= harm.norm()
    other = torch.randn(h, generator=g)
    other -= (other @ harm) * harm
    other /= other.norm()
    nuisance = 0.6 * harm + 0.8 * other
    g = torch.Generator().manual_seed(seed)
    xs, labels, langs = [], [], []
    for lang, offset in (("a", 0.0), ("b", 3.0)):
        for lab in (1, 0):
            z = torch.randn(per, 1, generator=g) * nuisance_sd
            x = lab * 1.0 * harm + z * nuisance + 0.3 * torch.randn(per, h, generator=g)
            x[:, -1] += offset
            xs.append(x)
            labels += [lab] * per
            langs += [lang] * per
    return torch.cat(xs), labels, langs, harm, nuisance


def test_whitened_direction_beats_diff_of_means_under_a_nuisance_axis():
    x, labels, langs, harm, nuisance = _nuisance_data()
    hd = harm_direction(x, labels, langs)
    cov = within_cell_covariance(x, labels, langs)
    w = whitened_direction(hd.direction, cov, 0.1, hd.basis)
    assert abs(float(w.norm()) - 1.0) < 1e-5
    # the nuisance component is divided out, the language subspace stays removed
    assert abs(float(w @ nuisance)) < 0.2 < abs(float(hd.direction @ nuisance))
    assert float((hd.basis.T @ w).abs().max()) < 1e-5
    xt, lt, _, _, _ = _nuisance_data(seed=1)
    lab = torch.tensor(lt)
    a_w = auroc((xt @ w)[lab == 1], (xt @ w)[lab == 0])
    a_d = auroc((xt @ hd.direction)[lab == 1], (xt @ hd.direction)[lab == 0])
    assert a_w > 0.9 and a_w > a_d + 0.1, (a_w, a_d)


def test_whitened_direction_is_diff_of_means_under_isotropic_noise():
    x, labels, langs, harm, _ = planted()
    hd = harm_direction(x, labels, langs)
    w = whitened_direction(hd.direction, within_cell_covariance(x, labels, langs), 1.0,
                           hd.basis)
    assert float(w @ hd.direction) > 0.99


def test_subspace_removal_fraction():
    basis = torch.linalg.qr(torch.randn(10, 3))[0]
    v = basis[:, 0] * 3.0 + torch.linalg.qr(torch.randn(10, 10))[0][:, 9] * 0.0
    out, frac = project_out(v, basis)
    assert frac == pytest.approx(1.0, abs=1e-6) and float(out.norm()) < 1e-5
    w = torch.randn(10)
    out, frac = project_out(w, basis)
    assert float((basis.T @ out).abs().max()) < 1e-5
    assert frac == pytest.approx(float((basis.T @ w).pow(2).sum() / w.pow(2).sum()), rel=1e-5)


@pytest.mark.parametrize("fpr,n", [(0.02, 1000), (0.05, 400), (0.1, 57), (0.0, 30)])
def test_threshold_hits_target_rate(fpr, n):
    g = torch.Generator().manual_seed(n)
    neg = torch.randn(n, generator=g)
    t = threshold_for_fpr(neg, fpr)
    rate = rate_above(neg, t)
    assert rate <= fpr + 1e-12
    assert rate > fpr - 1.0 / n
    # on fresh scores from the same distribution the rate is close to the target
    fresh = torch.randn(200_000, generator=g)
    if n >= 400:
        assert abs(rate_above(fresh, t) - fpr) < 0.015


def test_auroc_with_ties():
    assert auroc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 0.0])) == 1.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    assert auroc(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])) == 0.5


def test_choose_trial_prefers_weakest_effective_strength():
    def t(d, s, hr, kl_):
        return StrengthTrial(d, s, hr, 0.0, kl_, 0.5)
    trials = [t("a", 1, 0.2, 0.1), t("a", 2, 0.8, 0.3), t("a", 4, 0.82, 0.6),
              t("b", 2, 0.9, 1.5), t("b", 4, 1.0, 2.0)]
    best = choose_trial(trials, max_harmless_kl=1.0, slack=0.05)
    assert (best.direction, best.strength) == ("a", 2)
    assert choose_trial(trials, max_harmless_kl=5.0).direction == "b"
    # nothing within the bound: the least disruptive trial
    assert choose_trial(trials, max_harmless_kl=0.01).strength == 1


# ---------------------------------------------------------------------- tiny end to end
class ByteTokenizer:
    """Just enough tokenizer for capture/generate: bytes folded into a 128-token vocab."""

    pad_token_id = 0
    eos_token_id = 2
    chat_template = None
    padding_side = "left"

    def _ids(self, text):
        return [3 + b % 125 for b in text.encode()]

    def __call__(self, texts, return_tensors=None, padding=False, add_special_tokens=False):
        if isinstance(texts, str):
            return {"input_ids": self._ids(texts)}
        seqs = [self._ids(t) for t in texts]
        w = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), w, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, w - len(s):] = torch.tensor(s)
            mask[i, w - len(s):] = 1
        return BatchEncoding({"input_ids": ids, "attention_mask": mask})

    def batch_decode(self, ids, skip_special_tokens=True):
        return ["".join(chr(97 + int(t) % 26) for t in row if int(t) > 2) for row in ids]


def _write_data(path: Path, n: int, seed: int):
    import random

    rng = random.Random(seed)
    words = {"en": "the cat sat", "de": "der hund lief", "sw": "paka alikaa"}
    rows = []
    for lang, w in words.items():
        for i in range(n):
            rows.append({"text": f"{w} kill bomb {rng.randint(0, 99)}", "label": "harmful",
                         "lang": lang, "group": f"h{i}"})
            rows.append({"text": f"{w} bake cake {rng.randint(0, 99)}", "label": "harmless",
                         "lang": lang})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return load_labelled(path)


def test_end_to_end_fit_tiny_model(tmp_path):
    model = make_tiny("llama")
    tok = ByteTokenizer()
    train = _write_data(tmp_path / "train.jsonl", 12, 0)
    val = _write_data(tmp_path / "val.jsonl", 8, 1)
    cfg = FitConfig(strengths=(1.0, 2.0), contrastive_per_language=2, silhouette_groups=12,
                    calib_harmful_per_language=1, calib_harmless_per_language=1,
                    max_new_tokens=3, progress=False, fpr=0.1)
    judge = lambda text, lang: text.startswith("a")  # noqa: E731
    res = fit(model, tok, train, val, cfg, judge=judge)
    vec = res.vector
    assert vec.gate is not None and vec.gate.layer in (0, 1, 2)
    assert abs(float(vec.gate.direction.norm()) - 1.0) < 1e-5
    assert sorted(vec.directions) == ["refusal", "refusal_contrastive", "refusal_diffmean"]
    assert min(vec.layers()) == vec.gate.layer + 1
    assert vec.default_strength in (1.0, 2.0)
    rep = res.report
    assert rep["gate"]["val_fpr"] <= 0.1
    assert rep["counts"]["train_total"] == 72 and rep["counts"]["val_total"] == 48
    assert set(rep["auroc"]) == {"gate", "first", "chosen", "last"}
    assert len(rep["refusal"]["trials"]) == 4
    assert vec.provenance["languages"] == ["de", "en", "sw"]
    path = vec.save(tmp_path / "v.safetensors")
    back = SteeringVector.load(path)
    assert back.gate.threshold == vec.gate.threshold
    assert back.extra["refusal_method"] == rep["refusal"]["chosen"]
    files = write_report(res, tmp_path / "v.fit")
    assert [p.name for p in files] == ["v.fit.json", "v.fit.md", "v.fit.png"]
    assert "| chosen (" in files[1].read_text()
    steps = rep["step_wall_time_s"]  # where a fit's time goes, step by step, in order
    assert list(steps) == ["layer search (every block, search subset)",
                           "train states, harm and refusal directions",
                           "gate candidates and threshold (validation)",
                           "layer comparison (report)", "strength trials (generation)",
                           "language gate", "gated check (generation)"]
    assert all(v >= 0 for v in steps.values())
    assert "| strength trials (generation) |" in files[1].read_text()
    # deterministic with a seed
    res2 = fit(model, tok, train, val, cfg, judge=judge)
    assert torch.equal(res2.vector.gate.direction, vec.gate.direction)
    assert res2.vector.gate.threshold == vec.gate.threshold


def test_fit_splices_search_subset_and_rest_in_train_order(tmp_path):
    """Only the search subset is read at every block; the rest at the gate/refusal blocks.
    The gate direction must equal the one from one capture of every train row."""
    from lasa_steer.capture import capture

    model = make_tiny("llama")
    tok = ByteTokenizer()
    train = _write_data(tmp_path / "train.jsonl", 12, 0)
    val = _write_data(tmp_path / "val.jsonl", 8, 1)
    cfg = FitConfig(layer=1, strengths=(1.0,), contrastive_per_language=2, silhouette_groups=5,
                    calib_harmful_per_language=1, calib_harmless_per_language=1,
                    max_new_tokens=2, progress=False, capture_dtype="model", gate_shrinkage=(),
                    gate_probe=0)
    res = fit(model, tok, train, val, cfg,
              judge=lambda text, lang: False)
    cap = res.report["capture"]
    assert cap["search_rows"] == 30 and cap["rest_rows"] == len(train) - 30
    assert cap["rest_blocks"] == [1, 2] and cap["dtype"] == "float32"
    states = capture(model, tok, [e.text for e in train], [("resid_post", 1)],
                     progress=False)[("resid_post", 1)]
    direct = harm_direction(states, [e.label for e in train], [e.lang for e in train])
    assert float(direct.direction @ res.vector.gate.direction) > 0.99999
    assert res.report["gate"]["method"] == "diffmean"


def test_capture_model_dtype_choice():
    from lasa_steer.fit import capture_model

    model = make_tiny("qwen2")
    assert capture_model(model, "model") is model
    assert capture_model(model, "float32") is model
    half = capture_model(model, "bfloat16")
    assert half is not model and next(half.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the original is untouched
    auto = capture_model(model, "auto")
    amx = torch.cpu._is_amx_tile_supported()
    assert (next(auto.parameters()).dtype == torch.bfloat16) == amx
    with pytest.raises(ValueError, match="capture_dtype='int8'"):
        capture_model(model, "int8")


# ---------------------------------------------------------------------- real model
def _shipped_scores(smollm2, harmful):
    root = require_shared_data()
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED} not built yet")
    from lasa_steer.capture import gate_scores
    from lasa_steer.fit.data import load_polyrefuse

    model, tok = smollm2
    vec = SteeringVector.load(SHIPPED)
    harmless = [e.text for e in load_polyrefuse(root, "val", ["en"]) if e.label == HARMLESS]
    s_h, _ = gate_scores(model, tok, vec, harmful(root))
    s_s, flagged = gate_scores(model, tok, vec, harmless)
    return s_h, s_s, flagged


@pytest.mark.slow
def test_shipped_vector_english_gate_auroc_polyrefuse(smollm2):
    from lasa_steer.fit.data import load_polyrefuse

    s_h, s_s, flagged = _shipped_scores(smollm2, lambda root: [
        e.text for e in load_polyrefuse(root, "val", ["en"]) if e.label == HARMFUL])
    assert auroc(s_h, s_s) >= 0.9  # measured 0.970
    assert float(flagged.float().mean()) <= 0.05


@pytest.mark.slow
def test_shipped_vector_english_gate_auroc_multijail(smollm2):
    from lasa_steer.fit.data import load_multijail

    s_h, s_s, _ = _shipped_scores(smollm2, lambda root: load_multijail(root).sentences["en"])
    # MultiJail's conversational and hate-speech questions differ from PolyRefuse's
    # imperative requests (docs/fit.md). Measured 0.905 with the whitened direction, 0.848
    # with the MLP probe gate shipped since (chosen on worst-language and held-out-style TPR;
    # it trades some English-vs-Alpaca separation for recall outside English and half the
    # XSTest false fires, docs/efficacy.md). A guard against a broken gate, not a target.
    assert auroc(s_h, s_s) >= 0.8


@pytest.mark.slow
def test_shipped_vector_identifies_validation_languages(smollm2):
    """The language rule of the shipped (language-aware) gate: nearest centroid of the mean
    state at its ``lid_layer``, on the validation prompts its thresholds were set on (100
    harmless + 39 harmful per language, 14 languages). Measured 0.955 by ``lasa calibrate``."""
    root = require_shared_data()
    from lasa_steer.capture import capture
    from lasa_steer.fit.data import load_polyrefuse
    from lasa_steer.steering.gate import identify

    vec = SteeringVector.load(SHIPPED)
    if not vec.gate.language_aware:
        pytest.skip("the shipped vector has no language-aware gate")
    model, tok = smollm2
    val = load_polyrefuse(root, "val", limit=100)
    point = ("resid_post", vec.gate.lid_layer)
    states = capture(model, tok, [e.text for e in val], [point], pooling="mean",
                     progress=False)[point]
    found = identify(vec.gate, states, len(val))
    accuracy = sum(f == e.lang for f, e in zip(found, val)) / len(val)
    assert accuracy >= 0.95


@pytest.mark.slow
def test_shipped_vector_identifies_languages_without_labelled_data(smollm2):
    """MultiJail's vi, bn, sw and jv have no PolyRefuse prompts: the shipped gate identifies
    them by centroids from NTREX/NusaX news sentences (``lasa calibrate --add-languages``)
    and gives them the pooled threshold. Before, every such prompt was named after another
    language (sw -> yo, bn -> ja) and took that language's threshold and refusal opener.
    MultiJail is only read here, never fitted on. Measured on all 63 rows: vi 0.71, bn 0.98,
    sw 0.49 (the rest mostly jv), jv 0.65; each was 0 before."""
    root = require_shared_data()
    from lasa_steer.capture import gate_decisions
    from lasa_steer.fit.data import load_multijail

    vec = SteeringVector.load(SHIPPED)
    extra = ("vi", "bn", "sw", "jv")
    if not set(extra) <= set(vec.gate.languages):
        pytest.skip("the shipped vector has no identification-only languages")
    model, tok = smollm2
    mj = load_multijail(root).sentences
    rates = {}
    for lang in extra:
        d = gate_decisions(model, tok, vec, mj[lang])
        rates[lang] = sum(f == lang for f in d.langs) / len(d.langs)
        # identified by news centroids; a threshold of its own only where the mixture gate
        # had calibration rows of that language (the contrast prompts cover vi, bn, sw, jv)
        assert lang not in vec.gate.thresholds or vec.gate.operating_points
    print(rates)
    assert min(rates.values()) >= 0.4 and sum(rates.values()) / len(rates) >= 0.65, rates
