"""The vLLM plugin tests' shared fixture: the HF engine's model and prompts, built once
per session (vllm_cases.py holds the rest)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def hf():
    """The HF engine's model and the chat-templated token ids of ``vllm_cases.PROMPTS``."""
    from lasa_steer import load_model
    from vllm_cases import PROMPTS

    model, tok = load_model("smollm2-135m-instruct")
    ids = [list(tok.apply_chat_template([{"role": "user", "content": p}],
                                        add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]) for p in PROMPTS]
    return model, ids


@pytest.fixture(scope="session")
def hf_mixed(hf):
    """The HF engine's greedy output and gate results ``(score, fired, language)`` for each
    steered entry of ``vllm_cases.MIXED`` (None for unsteered ones), computed once."""
    from vllm_cases import MIXED, hf_greedy

    model, ids = hf
    return [hf_greedy(model, ids[i], **s) if s else None for i, s in MIXED]
