"""Shared fixtures: tiny randomly initialised causal LMs of every supported architecture,
and the real embedded model (session-scoped, loaded once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LASA_CACHE", str(REPO / ".lasa_cache"))

VOCAB = 128
HIDDEN = 32
LAYERS = 4


def _configs():
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    kv = dict(num_key_value_heads=2)
    return {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {**common, **kv}),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {**common, **kv, "sliding_window": None}),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {**common, **kv}),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, {**common, **kv, "head_dim": 8}),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, {**common, **kv, "head_dim": 8,
                                                           "sliding_window": 64}),
        "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, {**common, **kv, "head_dim": 8,
                                                               "sliding_window": 64}),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, {**common, **kv}),
        "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel, dict(vocab_size=VOCAB, n_embd=HIDDEN,
                                                         n_layer=LAYERS, n_head=4, n_positions=128,
                                                         bos_token_id=1, eos_token_id=2,
                                                         pad_token_id=0)),
        "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM, {**common}),
    }


ARCHS = list(_configs())


def make_tiny(arch: str, seed: int = 0) -> torch.nn.Module:
    config_cls, model_cls, kwargs = _configs()[arch]
    torch.manual_seed(seed)
    config = config_cls(**kwargs)
    model = model_cls(config).eval()
    # Random init gives tiny residual updates; scale weights up so that the blocks matter
    # and a wrong layer or position shows in the outputs.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    model.generation_config.pad_token_id = 0
    return model


@pytest.fixture(params=ARCHS)
def tiny(request):
    return make_tiny(request.param)


@pytest.fixture
def tiny_llama():
    return make_tiny("llama")


@pytest.fixture(scope="session")
def smollm2():
    from lasa_steer import load_model

    return load_model("smollm2-135m-instruct")


def require_shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED_DATA} (absent in a user's clone)")
    return SHARED_DATA
