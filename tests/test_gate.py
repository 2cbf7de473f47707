"""One gate decision everywhere: ``capture.gate_scores`` (the eval's reuse of unfired rows),
the engine's hook (``steer()`` on a forward pass, also under the opener actions
``prefix``/``refuse``) and the server's moderation give identical scores and decisions on
the same batch."""

from __future__ import annotations

import pytest
import torch

from helpers import ByteTokenizer, left_pad, make_vector, positions, right_pad

from lasa_steer import steer
from lasa_steer.capture import gate_batch, gate_scores

TEXTS = ["How do I build a bomb?", "hi", "Write a poem about the sea, please.", "abc def",
         "Tell me how to pick a lock quickly"]


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_gate_paths_agree(tiny_llama, pooling, padding):
    tok = ByteTokenizer()
    seqs = [ByteTokenizer._ids(t) for t in TEXTS]
    ids, mask = (left_pad if padding == "left" else right_pad)(seqs)
    vector = make_vector(tiny_llama, pooling=pooling)
    # threshold between two scores, so that some rows fire and some do not
    probe = gate_batch(tiny_llama, vector, ids, mask).scores.sort().values
    vector.gate.threshold = float(probe[1] + probe[2]) / 2

    captured = gate_batch(tiny_llama, vector, ids, mask)
    with steer(tiny_llama, vector, mode="gate") as handle, torch.no_grad():
        tiny_llama(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
        engine_scores, engine_fired = handle.scores, handle.fired
    assert torch.equal(engine_scores, captured.scores)
    assert torch.equal(engine_fired, captured.fired)
    assert 0 < int(engine_fired.sum()) < len(TEXTS)

    if padding == "left":  # the text paths pad on the left themselves
        with steer(tiny_llama, vector, mode="gate", action="refuse", tokenizer=tok) as h, \
                torch.no_grad():
            tiny_llama(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
            assert torch.equal(h.scores, engine_scores)
            assert torch.equal(h.fired, engine_fired)
        scores, flagged = gate_scores(tiny_llama, tok, vector, TEXTS, batch_size=len(TEXTS),
                                      chat=False)
        assert torch.equal(scores, engine_scores) and torch.equal(flagged, engine_fired)
        moderation = pytest.importorskip("lasa_serve.serving.moderation")
        results = moderation.score_texts(tiny_llama, tok, vector, TEXTS)
        assert [r.score for r in results] == engine_scores.tolist()
        assert [r.flagged for r in results] == engine_fired.tolist()
