"""llama.cpp control-vector export, read back with gguf.GGUFReader."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from helpers import make_vector

from lasa_steer.gguf_export import ExportError, export_gguf, gguf_layer, model_hint


def _read(path):
    r = gguf.GGUFReader(str(path))
    fields = {}
    for name, f in r.fields.items():
        if name in ("general.architecture", "controlvector.model_hint"):
            fields[name] = bytes(f.parts[f.data[0]]).decode()
        elif name == "controlvector.layer_count":
            fields[name] = int(f.parts[f.data[0]][0])
    tensors = {t.name: np.array(t.data) for t in r.tensors}
    return fields, tensors


def test_roundtrip_resid_post(tiny_llama, tmp_path):
    vec = make_vector(tiny_llama, layers=[2, 3], gate_layer=1)
    vec.default_strength = 2.5
    out = export_gguf(vec, tmp_path / "cv.gguf", ungated=True)
    fields, tensors = _read(out)
    assert fields == {"general.architecture": "controlvector",
                      "controlvector.model_hint": "llama", "controlvector.layer_count": 2}
    assert sorted(tensors) == ["direction.2", "direction.3"]
    want = vec.directions["refusal"][2].numpy() * 2.5
    np.testing.assert_allclose(tensors["direction.2"], want, rtol=1e-6)


def test_resid_pre_shifts_by_one(tiny_llama, tmp_path):
    vec = make_vector(tiny_llama, layers=[2, 3], gate_layer=0, site="resid_pre")
    vec.gate = None
    _, tensors = _read(export_gguf(vec, tmp_path / "pre.gguf", strength=1.0))
    assert sorted(tensors) == ["direction.1", "direction.2"]
    np.testing.assert_allclose(tensors["direction.1"], vec.directions["refusal"][2].numpy())
    assert gguf_layer("resid_post", 3) == 3 and gguf_layer("resid_pre", 3) == 2
    with pytest.raises(ExportError, match="direction.1"):
        gguf_layer("resid_pre", 1)
    with pytest.raises(ExportError, match="direction.1"):
        gguf_layer("resid_post", 0)


def test_refusals(tiny_llama, tmp_path):
    vec = make_vector(tiny_llama, layers=[2, 3], gate_layer=1)
    with pytest.raises(ExportError, match="gated"):
        export_gguf(vec, tmp_path / "a.gguf")
    vec.default_action = "project"
    with pytest.raises(ExportError, match="action 'project'"):
        export_gguf(vec, tmp_path / "b.gguf", ungated=True)
    vec.default_action = "add"
    with pytest.raises(ExportError, match="action 'clamp'"):
        export_gguf(vec, tmp_path / "b.gguf", ungated=True, action="clamp")
    vec.directions = {}
    with pytest.raises(ExportError, match="only a gate"):
        export_gguf(vec, tmp_path / "c.gguf", ungated=True)
    assert not list(tmp_path.glob("*.gguf"))


def test_cli_export(tiny_llama, tmp_path, capsys):
    from lasa_steer.cli import main

    vec = make_vector(tiny_llama, layers=[2, 3], gate_layer=1)
    path = vec.save(tmp_path / "v.safetensors")
    assert main(["export-gguf", str(path), str(tmp_path / "o.gguf")]) == 1
    assert "--ungated" in capsys.readouterr().err
    assert main(["export-gguf", str(path), str(tmp_path / "o.gguf"), "--ungated",
                 "--layers", "3", "--strength", "-1"]) == 0
    _, tensors = _read(tmp_path / "o.gguf")
    assert list(tensors) == ["direction.3"]
    np.testing.assert_allclose(tensors["direction.3"], -vec.directions["refusal"][3].numpy())


def test_model_hint():
    assert model_hint("LlamaForCausalLM") == "llama"
    assert model_hint("Gemma3ForCausalLM") == "gemma3"
    assert model_hint("GPT2LMHeadModel") == "gpt2"
    assert model_hint("GPTNeoXForCausalLM") == "gptneox"
