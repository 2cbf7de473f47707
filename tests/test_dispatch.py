"""A model dispatched by accelerate with a ``device_map`` that puts blocks on "cpu" and
"disk" (an offload folder): loading, ``steer()``, the identity check and ``lasa fit`` all
work on it, give what the same model gives undispatched, and never ``.to()`` it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_tiny
from helpers import make_vector
from lasa_steer import ModelIdentity, SteeringVector, load_model, steer
from lasa_steer.cli import main
from lasa_steer.model.placement import input_device, is_dispatched

# Block 1 (the gate's) and block 3 (steered) and the LM head are offloaded to disk.
DEVICE_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
              "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu",
              "model.rotary_emb": "cpu", "lm_head": "disk"}
WORDS = {"en": "the cat sat", "de": "der hund lief", "sw": "paka alikaa"}
TOPICS = {"harmful": "kill bomb poison", "harmless": "bake cake bread"}


def _save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over the test's words (ids < the tiny model's 128)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in (*WORDS.values(), *TOPICS.values()) for w in t.split()})
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(words + [str(n) for n in range(100)])})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>", unk_token="<unk>").save_pretrained(folder)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dispatch") / "tiny-llama"
    make_tiny("llama").save_pretrained(path)
    _save_tokenizer(path)
    return path


@pytest.fixture
def to_calls(monkeypatch) -> list[torch.nn.Module]:
    """Every module ``.to()`` is called on while the test runs (kept alive, so ids stay
    unique)."""
    calls: list[torch.nn.Module] = []
    original = torch.nn.Module.to

    def recording(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", recording)
    return calls


def _dispatched(folder: Path, offload: Path):
    return load_model(str(folder), dtype="float32", device_map=DEVICE_MAP,
                      offload_folder=offload)


def _never_moved(model: torch.nn.Module, calls: list[torch.nn.Module]) -> None:
    ids = {id(m) for m in model.modules()}
    moved = [type(m).__name__ for m in calls if id(m) in ids]
    assert not moved, f".to() called on the dispatched model: {moved}"


def test_load_steer_and_identity_equal_the_undispatched_model(folder, tmp_path, to_calls):
    model, tok = _dispatched(folder, tmp_path / "offload")
    plain, _ = load_model(str(folder), dtype="float32", device="cpu")
    assert is_dispatched(model) and not is_dispatched(plain)
    assert input_device(model) == torch.device("cpu")
    offloaded = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    assert "model.layers.1.self_attn.q_proj.weight" in offloaded  # really on disk
    assert "model.layers.3.mlp.down_proj.weight" in offloaded
    # identity: the stats are read from the offload store, so they equal the plain model's
    mine, theirs = ModelIdentity.of(model), ModelIdentity.of(plain)
    assert mine.weight_stats and mine.weight_stats == theirs.weight_stats
    assert mine.config_fingerprint == theirs.config_fingerprint
    other = ModelIdentity.of(make_tiny("llama", seed=5))
    with pytest.raises(Exception, match="weight_stats"):
        mine.check_fits(other)
    # steering: gate on the disk block 1, steering blocks 2 (cpu) and 3 (disk)
    vec = make_vector(plain, layers=[2, 3], gate_layer=1, threshold=0.0, norm=8.0)
    ids = tok(["the cat sat kill bomb poison", "der hund lief bake cake bread 7 8",
               "paka alikaa kill 3"], return_tensors="pt", padding=True)
    with torch.no_grad():
        vanilla = model(**ids).logits
        assert torch.equal(vanilla, plain(**ids).logits)
        for mode in ("gate", "always"):
            with steer(model, vec, mode=mode, strength=[1.0, 2.0, 0.5]) as h, \
                    steer(plain, vec, mode=mode, strength=[1.0, 2.0, 0.5]) as hp:
                got, want = model(**ids).logits, plain(**ids).logits
                assert torch.equal(got, want)
                assert torch.equal(h.fired, hp.fired)
                assert torch.equal(h.scores.nan_to_num(-9.0), hp.scores.nan_to_num(-9.0))
                if mode == "always":
                    assert not torch.equal(got, vanilla)  # the steering did something
            with steer(model, vec, mode=mode) as h, steer(plain, vec, mode=mode):
                out = model.generate(**ids, max_new_tokens=4, do_sample=False,
                                     pad_token_id=0)
                ref = plain.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
                assert torch.equal(out, ref)
    _never_moved(model, to_calls)


def _write(path: Path, n: int, seed: int) -> Path:
    import random

    rng = random.Random(seed)
    rows = []
    for lang, words in WORDS.items():
        for i in range(n):
            rows.append({"text": f"{words} {TOPICS['harmful']} {rng.randint(0, 99)}",
                         "label": "harmful", "lang": lang, "group": f"h{i}"})
            rows.append({"text": f"{words} {TOPICS['harmless']} {rng.randint(0, 99)}",
                         "label": "harmless", "lang": lang})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_lasa_fit_on_a_dispatched_model_equals_the_plain_fit(folder, tmp_path, to_calls,
                                                              monkeypatch):
    """``lasa fit --device-map ... --offload-folder`` writes the same vector as the fit of
    the model loaded whole, and the vector checks against the dispatched model."""
    from lasa_steer.model import loading

    loaded = []
    real = loading.load_model

    def keep(*args, **kwargs):
        out = real(*args, **kwargs)
        loaded.append(out[0])
        return out

    monkeypatch.setattr(loading, "load_model", keep)
    train, val = _write(tmp_path / "train.jsonl", 10, 0), _write(tmp_path / "val.jsonl", 6, 1)
    common = [str(folder), "--data", str(train), "--val", str(val), "--identify", "none",
              "--strengths", "1,2", "--contrastive-per-language", "2", "--fpr", "0.1",
              "--capture-dtype", "model", "--no-progress", "--dtype", "float32", "--layer", "2",
              "--threads", "1"]
    out_d, out_p = tmp_path / "dispatched.safetensors", tmp_path / "plain.safetensors"
    threads = torch.get_num_threads()
    try:
        assert main(["fit", *common, "-o", str(out_d), "--device-map", json.dumps(DEVICE_MAP),
                     "--offload-folder", str(tmp_path / "offload")]) == 0
        assert main(["fit", *common, "-o", str(out_p), "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
    dispatched, plain = loaded
    assert is_dispatched(dispatched) and not is_dispatched(plain)
    _never_moved(dispatched, to_calls)
    vd, vp = SteeringVector.load(out_d), SteeringVector.load(out_p)
    assert vd.gate.layer == vp.gate.layer
    assert torch.equal(vd.gate.direction, vp.gate.direction)
    assert vd.gate.threshold == vp.gate.threshold
    assert sorted(vd.directions) == sorted(vp.directions)
    for name, per_layer in vp.directions.items():
        for layer, d in per_layer.items():
            assert torch.equal(vd.directions[name][layer], d)
    assert vd.model.weight_stats == vp.model.weight_stats
    vd.check_model(dispatched)


def test_capture_copy_of_a_dispatched_model_is_refused(folder, tmp_path):
    from lasa_steer.errors import FitConfigError
    from lasa_steer.fit import capture_model

    model, _ = _dispatched(folder, tmp_path / "offload")
    assert capture_model(model, "auto") is model
    assert capture_model(model, "float32") is model
    with pytest.raises(FitConfigError, match="dispatched"):
        capture_model(model, "bfloat16")


def test_offload_folder_without_device_map_is_refused(folder, tmp_path):
    from lasa_steer import ModelLoadError

    with pytest.raises(ModelLoadError, match="needs a device_map"):
        load_model(str(folder), offload_folder=tmp_path)


@pytest.mark.parametrize("value,expected", [("auto", "auto"), ("cpu", "cpu"),
                                            ('{"lm_head": "disk"}', {"lm_head": "disk"})])
def test_device_map_flag(value, expected):
    from lasa_steer.cli.common import device_map

    assert device_map(value) == expected


@pytest.mark.parametrize("argv", [["fit", "m", "-o", "x", "--device-map", "{bad"],
                                  ["fit", "m", "-o", "x", "--device-map", "nowhere"],
                                  ["layers", "m", "--max-memory", "0:20GiB"]])
def test_bad_placement_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
