"""Vector file round trip, and every rejection with the field at fault named."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from conftest import make_tiny
from helpers import make_vector
from safetensors.torch import save_file

from lasa_steer import SteeringVector, VectorFileError, VectorMismatchError, steer
from lasa_steer.vector.file import FORMAT_VERSION


@pytest.fixture
def vec(tiny_llama):
    return make_vector(tiny_llama, clamp_target=0.5)


def test_round_trip_keeps_everything(vec, tmp_path):
    path = vec.save(tmp_path / "v.safetensors")
    back = SteeringVector.load(path)
    assert back.metadata() == vec.metadata()
    assert back.gate.layer == vec.gate.layer and back.gate.threshold == vec.gate.threshold
    assert torch.equal(back.gate.direction, vec.gate.direction)
    for layer, d in vec.directions["refusal"].items():
        assert torch.equal(back.directions["refusal"][layer], d)
    meta = back.metadata()
    assert meta["site"] == "resid_post" and meta["gate"]["site"] == "resid_post"
    assert meta["directions"] == {"refusal": [2, 3]}
    assert meta["provenance"]["tool_version"]
    assert back.clamp_targets == {"refusal": {2: 0.5, 3: 0.5}}


def _write_raw(path, tensors, meta):
    save_file(tensors, str(path), metadata={"lasa": json.dumps(meta)})


def test_rejects_missing_and_corrupt_files(vec, tmp_path):
    with pytest.raises(VectorFileError, match="no such vector file"):
        SteeringVector.load(tmp_path / "absent.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(VectorFileError, match="junk.safetensors: not a readable"):
        SteeringVector.load(junk)
    good = vec.save(tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(VectorFileError, match="truncated.safetensors"):
        SteeringVector.load(truncated)
    header_len = struct.unpack("<Q", good.read_bytes()[:8])[0]
    bad_header = tmp_path / "badheader.safetensors"
    raw = bytearray(good.read_bytes())
    raw[8:8 + header_len] = b"{" * header_len
    bad_header.write_bytes(bytes(raw))
    with pytest.raises(VectorFileError, match="badheader"):
        SteeringVector.load(bad_header)


def test_rejects_foreign_safetensors(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.ones(3)}, str(path))
    with pytest.raises(VectorFileError, match="no 'lasa' metadata"):
        SteeringVector.load(path)


def test_rejects_unknown_format_version(vec, tmp_path):
    meta = vec.metadata() | {"format_version": FORMAT_VERSION + 1}
    path = tmp_path / "future.safetensors"
    _write_raw(path, vec.tensors(), meta)
    with pytest.raises(VectorFileError, match=f"format_version {FORMAT_VERSION + 1} is not supported"):
        SteeringVector.load(path)


def test_rejects_wrong_shape_and_non_finite(vec, tmp_path):
    t = vec.tensors()
    t["direction.refusal.2"] = torch.ones(7)
    path = tmp_path / "shape.safetensors"
    _write_raw(path, t, vec.metadata())
    with pytest.raises(VectorFileError, match=r"'direction.refusal.2' has shape \(7,\)"):
        SteeringVector.load(path)
    t = vec.tensors()
    t["gate.direction"][3] = float("nan")
    path = tmp_path / "nan.safetensors"
    _write_raw(path, t, vec.metadata())
    with pytest.raises(VectorFileError, match="'gate.direction' holds NaN or inf"):
        SteeringVector.load(path)
    t = vec.tensors()
    t["direction.refusal.3"][0] = float("inf")
    path = tmp_path / "inf.safetensors"
    _write_raw(path, t, vec.metadata())
    with pytest.raises(VectorFileError, match="'direction.refusal.3' holds NaN or inf"):
        SteeringVector.load(path)


def test_rejects_inconsistent_metadata(vec, tmp_path):
    meta = vec.metadata()
    meta["directions"] = {"refusal": [1, 2, 3]}
    path = tmp_path / "decl.safetensors"
    _write_raw(path, vec.tensors(), meta)
    with pytest.raises(VectorFileError, match="do not match the declared"):
        SteeringVector.load(path)
    meta = vec.metadata()
    meta["gate"]["layer"] = 99
    _write_raw(path, vec.tensors(), meta)
    with pytest.raises(VectorFileError, match="gate.layer 99"):
        SteeringVector.load(path)
    meta = vec.metadata()
    meta["site"] = "resid_middle"
    _write_raw(path, vec.tensors(), meta)
    with pytest.raises(VectorFileError, match="site 'resid_middle'"):
        SteeringVector.load(path)
    meta = vec.metadata()
    del meta["model"]
    _write_raw(path, vec.tensors(), meta)
    with pytest.raises(VectorFileError, match="'model'"):
        SteeringVector.load(path)


def test_save_is_atomic(vec, tmp_path):
    path = vec.save(tmp_path / "v.safetensors")
    before = path.read_bytes()
    vec.directions["refusal"][2] = torch.full_like(vec.directions["refusal"][2], float("nan"))
    with pytest.raises(VectorFileError, match="NaN"):
        vec.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]


def test_mismatched_model_names_the_field(vec):
    import transformers as tf

    wider = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=128, hidden_size=48, num_hidden_layers=4,
                                               num_attention_heads=4, num_key_value_heads=2,
                                               intermediate_size=64))
    with pytest.raises(VectorMismatchError, match="hidden_size") as err:
        steer(wider, vec)
    assert err.value.field == "hidden_size"
    deeper = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=6,
                                                num_attention_heads=4, num_key_value_heads=2,
                                                intermediate_size=64))
    with pytest.raises(VectorMismatchError, match="num_layers"):
        steer(deeper, vec)
    other_cfg = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=128, hidden_size=32,
                                                   num_hidden_layers=4, num_attention_heads=4,
                                                   num_key_value_heads=2, intermediate_size=96))
    with pytest.raises(VectorMismatchError, match="config_fingerprint"):
        steer(other_cfg, vec)
    # same architecture and config, other weights: caught by the weight statistics
    other_weights = make_tiny("llama", seed=7)
    with torch.no_grad():
        other_weights.model.embed_tokens.weight.mul_(1.5)
    with pytest.raises(VectorMismatchError, match="weight_stats"):
        steer(other_weights, vec)
    # deliberate cross-model use of a vector of the same width
    steer(other_cfg, vec, allow_mismatch=True).remove()
    with pytest.raises(VectorMismatchError, match="hidden_size"):
        steer(wider, vec, allow_mismatch=True)


def test_same_model_in_another_dtype_fits(vec, tiny_llama):
    steer(tiny_llama.to(torch.bfloat16), vec).remove()


def test_path_is_accepted_by_steer(vec, tiny_llama, tmp_path):
    path = vec.save(tmp_path / "v.safetensors")
    with steer(tiny_llama, str(path)) as handle:
        assert handle.vector.path == str(path)
