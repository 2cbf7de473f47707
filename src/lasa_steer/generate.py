"""THE batched Hugging Face generate loop: prompts in, reply texts out.

The fit's strength calibration and the eval's generator both use it, so "greedy reply of
a chat prompt" means one thing: chat template applied, left padding, positions from the
attention mask (``generate`` derives them), the new tokens decoded without special tokens.
Steering, when wanted, is installed around the call by the caller (``steer()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .model.placement import input_device
from .prompts import Prompt, format_prompts


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of :func:`generate_batch` (greedy by default)."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


@torch.no_grad()
def generate_batch(model: nn.Module, tokenizer: Any, prompts: Sequence[Prompt],
                   sampling: Sampling = Sampling(), chat: bool | None = None) -> list[str]:
    """Replies to one batch of prompts (left-padded, one ``model.generate`` call)."""
    texts = format_prompts(tokenizer, list(prompts), chat)
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    device = input_device(model)
    ids = enc["input_ids"].to(device)
    kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens,
                                  do_sample=sampling.do_sample,
                                  pad_token_id=tokenizer.pad_token_id)
    if sampling.do_sample:
        kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        torch.manual_seed(sampling.seed)
    out = model.generate(input_ids=ids, attention_mask=enc["attention_mask"].to(device),
                         **kwargs)
    return tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def generate(model: nn.Module, tokenizer: Any, prompts: Sequence[Prompt],
             max_new_tokens: int = 24, batch_size: int = 16) -> list[str]:
    """Greedy replies to any number of prompts, ``batch_size`` at a time."""
    sampling = Sampling(max_new_tokens=max_new_tokens)
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        out += generate_batch(model, tokenizer, prompts[i:i + batch_size], sampling)
    return out
