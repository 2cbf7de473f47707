"""Forced reply openers: the token side of the ``prefix`` and ``refuse`` actions.

When a row's gate fires under ``prefix``, its assistant turn begins with the refusal
sentence of the prompt's language (:mod:`lasa_steer.steering.refusals`) and the model then
continues (optionally steered towards refusal); under ``refuse`` the turn ends after the
sentence. This is the inference-time form of the LASA paper's safety prefix.

Why force logits rather than edit the prompt: the gate is decided *inside* the prompt pass,
so the prompt cannot depend on it without a second pass. Instead a forward hook on the
model's output embedding (the LM head) makes the next-token logits of such a row one-hot
(0 for the forced token, -inf for every other) for as many steps as the opener has tokens.
Greedy decoding, sampling, top-k/top-p and penalties all pick that token, the KV cache
holds exactly the text the user receives, and the same hook serves ``model.generate``,
the server's own decode loop and the eval. Rows that did not fire are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .refusals import REFUSAL_SENTENCES, refusal_sentence


@dataclass(frozen=True)
class Openers:
    """The refusal sentences of every language as token ids of one tokenizer, and the id
    that ends an assistant turn (``refuse``)."""

    tokens: dict[str, tuple[int, ...]]
    end_of_turn: int | None

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, end_of_turn: int | None = None) -> "Openers":
        enc = {lang: tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
               for lang, text in REFUSAL_SENTENCES.items()}
        eot = end_of_turn if end_of_turn is not None else tokenizer.eos_token_id
        return cls(enc, None if eot is None else int(eot))

    def sequence(self, lang: str | None, end_turn: bool) -> tuple[int, ...]:
        """The forced tokens for a prompt in ``lang`` (English for unknown languages)."""
        toks = self.tokens.get(lang or "en") or self.tokens["en"]
        return toks + ((self.end_of_turn,) if end_turn and self.end_of_turn is not None else ())


def opener_text(lang: str | None) -> str:
    """The refusal sentence a row identified as ``lang`` is opened with."""
    return refusal_sentence(lang if lang in REFUSAL_SENTENCES else None)


def force(logits: torch.Tensor, rows: list[int], tokens: list[int]) -> torch.Tensor:
    """Make the last-position logits of ``rows`` one-hot on ``tokens`` (in place when no
    gradient is recorded, else on a copy)."""
    out = logits.clone() if torch.is_grad_enabled() and logits.requires_grad else logits
    idx = torch.tensor(rows, dtype=torch.long, device=out.device)
    forced = torch.full((len(rows), out.shape[-1]), float("-inf"), dtype=out.dtype,
                        device=out.device)
    forced[torch.arange(len(rows), device=out.device),
           torch.tensor(tokens, dtype=torch.long, device=out.device)] = 0.0
    out[idx, -1] = forced
    return out
