"""llama.cpp control vectors: export (read back with gguf.GGUFReader) and import."""

from __future__ import annotations

import re

import gguf
import numpy as np
import pytest
import torch
from helpers import make_vector

from lasa_steer.vector.gguf import ExportError, export_gguf, gguf_layer, model_hint


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


# ---------------------------------------------------------------------- import
def _write_cv(path, tensors, arch="controlvector"):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("controlvector.model_hint", "llama")
    w.add_uint32("controlvector.layer_count", len(tensors))
    for name, arr in tensors.items():
        w.add_tensor(name, np.asarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("site", ["resid_post", "resid_pre"])
def test_import_inverts_export_and_steers_the_same(tiny_llama, tmp_path, site):
    from lasa_steer import steer
    from lasa_steer.vector.gguf import import_gguf

    vec = make_vector(tiny_llama, layers=[2, 3], gate_layer=0, site=site)
    vec.gate = None
    vec.default_strength = 2.5
    back = import_gguf(export_gguf(vec, tmp_path / "cv.gguf"), tiny_llama)
    shift = 0 if site == "resid_post" else 1
    assert back.site == "resid_post" and back.gate is None and back.default_strength == 1.0
    assert back.layers() == [b - shift for b in (2, 3)]
    for b in (2, 3):
        torch.testing.assert_close(back.directions["control"][b - shift],
                                   vec.directions["refusal"][b] * 2.5, rtol=1e-6, atol=0)
    ids = torch.tensor([[5, 9, 11, 3, 7]])
    with torch.no_grad():
        with steer(tiny_llama, vec, mode="always"):
            want = tiny_llama(ids).logits
        with steer(tiny_llama, back, mode="always"):
            got = tiny_llama(ids).logits
        vanilla = tiny_llama(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - vanilla).abs().max() > 1e-3  # the steering did something


def test_import_rejects_bad_files(tiny_llama, tmp_path):
    from lasa_steer.errors import VectorFileError
    from lasa_steer.vector.gguf import import_gguf

    h = tiny_llama.config.hidden_size
    n = tiny_llama.config.num_hidden_layers
    ok = np.ones(h, dtype=np.float32)
    cases = {
        "wrong_hidden": ({"direction.1": np.ones(h + 1)}, "controlvector",
                         f"'direction.1' has {h + 1} values; the model's hidden size is {h}"),
        "out_of_range": ({f"direction.{n}": ok}, "controlvector",
                         f"output of block {n}; the model has blocks 0..{n - 1}"),
        "nan": ({"direction.1": np.full(h, np.nan)}, "controlvector", "NaN or inf"),
        "not_cv": ({"direction.1": ok}, "llama", "general.architecture is 'llama'"),
        "empty": ({"other": ok}, "controlvector", "no direction.N tensors"),
    }
    for name, (tensors, arch, msg) in cases.items():
        path = _write_cv(tmp_path / f"{name}.gguf", tensors, arch)
        with pytest.raises(VectorFileError, match=re.escape(msg)):
            import_gguf(path, tiny_llama)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(VectorFileError, match="junk.gguf: not a readable GGUF file"):
        import_gguf(junk, tiny_llama)
    with pytest.raises(VectorFileError, match="no such file"):
        import_gguf(tmp_path / "missing.gguf", tiny_llama)


@pytest.mark.slow
def test_cli_import_on_the_embedded_model(smollm2, tmp_path, capsys):
    from lasa_steer import SteeringVector
    from lasa_steer.cli import main

    model, _ = smollm2
    h = model.config.hidden_size
    arr = np.linspace(-1, 1, h, dtype=np.float32)
    cv = _write_cv(tmp_path / "cv.gguf", {"direction.12": arr})
    out = tmp_path / "v.safetensors"
    assert main(["import-gguf", str(cv), "smollm2-135m-instruct", "-o", str(out)]) == 0
    assert "block(s) 12 (resid_post)" in capsys.readouterr().out
    vec = SteeringVector.load(out)
    vec.check_model(model)
    np.testing.assert_array_equal(vec.directions["control"][12].numpy(), arr)
