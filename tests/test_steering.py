"""The hook engine on tiny random models of every supported architecture."""

from __future__ import annotations

import pytest
import torch
from helpers import left_pad, make_vector, positions, right_pad

from lasa_steer import SteeringConfigError, find_layers, steer
from lasa_steer.capture import capture_batch

SEQS = [[5, 9, 17, 33, 4, 71], [8, 3, 90], [44, 12, 7, 7, 100, 23, 61, 2 + 3]]


def logits(model, ids, mask=None):
    mask = torch.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits


def observe(model, layer, site="resid_post"):
    """Record the residual stream at a point, after any steering hook already installed."""
    seen = {}
    block = find_layers(model).blocks[layer]
    if site == "resid_post":
        def hook(mod, args, out):
            seen["h"] = (out if isinstance(out, torch.Tensor) else out[0]).detach().clone()
        return seen, block.register_forward_hook(hook)

    def pre(mod, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        seen["h"] = h.detach().clone()
    return seen, block.register_forward_pre_hook(pre, with_kwargs=True)


def test_strength_zero_is_bit_identical(tiny):
    ids, mask = left_pad(SEQS)
    vanilla = logits(tiny, ids, mask)
    vec = make_vector(tiny, threshold=-1e9)
    for action in ("add", "project"):
        with steer(tiny, vec, strength=0.0, mode="always", action=action):
            assert torch.equal(logits(tiny, ids, mask), vanilla)


def test_removal_restores_vanilla(tiny):
    ids, mask = left_pad(SEQS)
    vanilla = logits(tiny, ids, mask)
    vec = make_vector(tiny)
    handle = steer(tiny, vec, strength=3.0, mode="always")
    steered = logits(tiny, ids, mask)
    assert not torch.allclose(steered, vanilla)
    handle.remove()
    assert torch.equal(logits(tiny, ids, mask), vanilla)
    n_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny.modules())
    assert n_hooks == 0


def test_add_changes_exactly_the_named_block(tiny):
    """Off-by-one guard: resid_post of block L carries strength*d; block L-1 is untouched."""
    ids, mask = left_pad(SEQS)
    layer = 2
    vec = make_vector(tiny, layers=[layer], gate_layer=0)
    d = vec.directions["refusal"][layer]
    before_v, h1 = observe(tiny, layer - 1)
    post_v, h2 = observe(tiny, layer)
    logits(tiny, ids, mask)
    h1.remove(), h2.remove()
    with steer(tiny, vec, strength=2.5, mode="always"):
        before_s, h1 = observe(tiny, layer - 1)
        post_s, h2 = observe(tiny, layer)
        logits(tiny, ids, mask)
        h1.remove(), h2.remove()
    assert torch.equal(before_s["h"], before_v["h"])
    torch.testing.assert_close(post_s["h"], post_v["h"] + 2.5 * d, rtol=0, atol=1e-5)


def test_resid_post_of_block_equals_resid_pre_of_next(tiny):
    ids, mask = left_pad(SEQS)
    post = make_vector(tiny, layers=[1], gate_layer=0, site="resid_post")
    pre_next = make_vector(tiny, layers=[2], gate_layer=0, site="resid_pre")
    pre_same = make_vector(tiny, layers=[1], gate_layer=0, site="resid_pre")
    with steer(tiny, post, strength=3.0, mode="always"):
        a = logits(tiny, ids, mask)
    with steer(tiny, pre_next, strength=3.0, mode="always"):
        b = logits(tiny, ids, mask)
    with steer(tiny, pre_same, strength=3.0, mode="always"):
        c = logits(tiny, ids, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("site", ["resid_post", "resid_pre"])
def test_project_leaves_no_component(tiny, site):
    ids, mask = left_pad(SEQS)
    layer = 2
    vec = make_vector(tiny, layers=[layer], gate_layer=0, site=site)
    unit = vec.directions["refusal"][layer] / vec.directions["refusal"][layer].norm()
    with steer(tiny, vec, mode="always", action="project"):
        seen, h = observe(tiny, layer, site)
        logits(tiny, ids, mask)
        h.remove()
    real = mask.bool()
    hs = seen["h"][real]
    comp = (hs @ unit).abs()
    assert float((comp / hs.norm(dim=-1)).max()) < 1e-5
    # and it did something: the vanilla state had a real component
    seen_v, h = observe(tiny, layer, site)
    logits(tiny, ids, mask)
    h.remove()
    assert float((seen_v["h"] @ unit).abs().max()) > 1e-3


def test_clamp_sets_component_to_target(tiny_llama):
    ids, mask = left_pad(SEQS)
    vec = make_vector(tiny_llama, layers=[2], gate_layer=0, clamp_target=1.75)
    unit = vec.directions["refusal"][2] / vec.directions["refusal"][2].norm()
    with steer(tiny_llama, vec, mode="always", action="clamp"):
        seen, h = observe(tiny_llama, 2)
        logits(tiny_llama, ids, mask)
        h.remove()
    torch.testing.assert_close(seen["h"] @ unit, torch.full(ids.shape, 1.75), rtol=0, atol=1e-5)


def test_batch_rows_match_single_runs(tiny):
    """Per-row strengths in one left-padded batch give each row its single-run output."""
    vec = make_vector(tiny, threshold=-1e9)
    strengths = [0.0, 4.0, -3.0]
    ids, mask = left_pad(SEQS)
    with steer(tiny, vec, strength=strengths, mode="gate") as handle:
        batch = tiny.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5,
                              do_sample=False)
        assert handle.fired.tolist() == [True, True, True]
    width = ids.shape[1]
    for row, (seq, s) in enumerate(zip(SEQS, strengths)):
        single_ids = torch.tensor([seq])
        with steer(tiny, vec, strength=s, mode="gate"):
            single = tiny.generate(input_ids=single_ids, attention_mask=torch.ones_like(single_ids),
                                   max_new_tokens=5, do_sample=False)
        assert batch[row, width:].tolist() == single[0, len(seq):].tolist()


@pytest.mark.parametrize("pad", ["left", "right"])
def test_gate_reads_last_real_token_under_padding(tiny, pad):
    vec = make_vector(tiny, gate_layer=1)
    point = (vec.gate.site, vec.gate.layer)
    singles = torch.stack([
        capture_batch(tiny, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long), [point])[point][0]
        for s in SEQS]) @ vec.gate.direction
    ids, mask = (left_pad if pad == "left" else right_pad)(SEQS)
    with steer(tiny, vec, mode="gate") as handle:
        logits(tiny, ids, mask)
        torch.testing.assert_close(handle.scores, singles, rtol=1e-4, atol=1e-4)


def test_gate_fires_only_above_threshold(tiny):
    vec = make_vector(tiny, gate_layer=1)
    ids, mask = left_pad(SEQS)
    with steer(tiny, vec, mode="gate", strength=0.0) as handle:
        logits(tiny, ids, mask)
        scores = handle.scores
    order = scores.argsort()
    vec.gate.threshold = float((scores[order[0]] + scores[order[1]]) / 2)  # only lowest row below
    vanilla = logits(tiny, ids, mask)
    with steer(tiny, vec, mode="gate", strength=4.0) as handle:
        steered = logits(tiny, ids, mask)
        fired = handle.fired
    expected = scores > vec.gate.threshold
    assert fired.tolist() == expected.tolist()
    assert fired.sum() == 2
    low = int(order[0])
    assert torch.equal(steered[low], vanilla[low])  # gated-off row is untouched
    for row in range(len(SEQS)):
        if fired[row]:
            assert (steered[row] - vanilla[row]).abs().max() > 1e-3


def test_kv_cache_matches_no_cache_and_first_token_is_steered(tiny):
    vec = make_vector(tiny, threshold=-1e9)
    ids, mask = left_pad(SEQS)
    vanilla = tiny.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1,
                            do_sample=False, output_scores=True, return_dict_in_generate=True)
    with steer(tiny, vec, strength=6.0) as handle:
        cached = tiny.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6,
                               do_sample=False, use_cache=True, output_scores=True,
                               return_dict_in_generate=True)
        uncached = tiny.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6,
                                 do_sample=False, use_cache=False)
        assert handle.fired.all()
    assert torch.equal(cached.sequences, uncached)
    # the first generated token comes from the prefill pass: its logits must be steered
    assert (cached.scores[0] - vanilla.scores[0]).abs().max() > 1e-2


def test_gate_decision_holds_through_decoding(tiny_llama):
    """A row that did not fire on its prompt stays unsteered while its own tokens grow."""
    vec = make_vector(tiny_llama, threshold=1e9)
    ids, mask = left_pad(SEQS)
    vanilla = tiny_llama.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6,
                                  do_sample=False)
    with steer(tiny_llama, vec, strength=6.0) as handle:
        out = tiny_llama.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6,
                                  do_sample=False)
        assert not handle.fired.any()
    assert torch.equal(out, vanilla)


def test_mean_pooling_gate(tiny_llama):
    vec = make_vector(tiny_llama, pooling="mean")
    point = (vec.gate.site, vec.gate.layer)
    expected = torch.stack([
        capture_batch(tiny_llama, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long),
                      [point], pooling="mean")[point][0] for s in SEQS]) @ vec.gate.direction
    ids, mask = left_pad(SEQS)
    with steer(tiny_llama, vec) as handle:
        logits(tiny_llama, ids, mask)
        torch.testing.assert_close(handle.scores, expected, rtol=1e-4, atol=1e-4)


def test_gate_mode_rejects_layers_before_gate(tiny_llama):
    vec = make_vector(tiny_llama, layers=[0, 1, 2, 3], gate_layer=2)
    with pytest.raises(SteeringConfigError, match="before the gate"):
        steer(tiny_llama, vec, mode="gate")
    steer(tiny_llama, vec, mode="always").remove()  # always mode has no such constraint


def test_bad_arguments_name_the_argument(tiny_llama):
    vec = make_vector(tiny_llama)
    with pytest.raises(SteeringConfigError, match="mode="):
        steer(tiny_llama, vec, mode="sometimes")
    with pytest.raises(SteeringConfigError, match="action="):
        steer(tiny_llama, vec, action="explode")
    with pytest.raises(SteeringConfigError, match="layers="):
        steer(tiny_llama, vec, layers=[0])
    with pytest.raises(SteeringConfigError, match="clamp"):
        steer(tiny_llama, vec, action="clamp")
    with pytest.raises(SteeringConfigError, match="strength="):
        steer(tiny_llama, vec, strength=float("nan"))
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny_llama.modules()) == 0


def test_per_row_strength_count_must_match_batch(tiny_llama):
    vec = make_vector(tiny_llama)
    ids, mask = left_pad(SEQS)
    with steer(tiny_llama, vec, strength=[1.0, 2.0]):
        with pytest.raises(SteeringConfigError, match="2 per-row"):
            logits(tiny_llama, ids, mask)
