"""Batched generation with and without steering, for ``lasa eval``.

Both passes use the same decoding settings; the steered pass wraps ``model.generate`` in
:func:`lasa_steer.steer`, whose engine reads the gate at each row's last real prompt token
(left padding) and records per-row ``scores`` and ``fired``.

Shortcut (``reuse_unfired``, on by default in ``mode='gate'``): a row whose gate does not
fire is not modified by any hook, so its steered completion is its unsteered one. The
steered pass therefore first scores the gate (a forward pass up to the gate's block only)
and generates only the rows that fire; the others reuse the unsteered completion and are
marked ``reused`` in the audit file. ``lasa eval --no-reuse`` generates every row instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence

import torch

from .capture import gate_scores
from .eval_cache import digest, tensor_digest
from .identity import ModelIdentity
from .prompts import format_prompt
from .steering import steer
from .vector import SteeringVector


@dataclass(frozen=True)
class Decoding:
    """Generation and steering settings; all of them are part of the cache key."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    strength: float | None = None
    mode: str = "gate"
    action: str | None = None
    chat: bool | None = None


_STEERING_FIELDS = ("strength", "mode", "action")


@dataclass(frozen=True)
class Generation:
    """One completion; ``fired``/``score``: the gate's decision (None when unsteered)."""

    text: str
    fired: bool | None = None
    score: float | None = None


class Generator(Protocol):
    """What :func:`lasa_steer.evaluate.run_eval` needs: batched generation and a cache key."""

    def key(self, prompt: str, steered: bool) -> str: ...

    def generate(self, prompts: Sequence[str], steered: bool) -> list[Generation]: ...

    # Optional: ``gate(prompts) -> [(fired, score), ...]`` or None (see module docstring).


def vector_fingerprint(vector: SteeringVector) -> str:
    meta = vector.metadata()
    meta = {k: v for k, v in meta.items() if k not in ("provenance",)}
    return tensor_digest(vector.tensors(), meta)


def model_fingerprint(model: torch.nn.Module) -> str:
    ident = ModelIdentity.of(model)
    return digest(getattr(model, "lasa_model_name", ident.name), ident.config_fingerprint,
                  ident.weight_stats)


class HFGenerator:
    """Greedy (or sampled) batched ``generate`` of a Hugging Face model, left-padded."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, vector: SteeringVector,
                 decoding: Decoding = Decoding(), reuse_unfired: bool = True,
                 batch_size: int = 16):
        self.model = model
        self.reuse_unfired = reuse_unfired
        self.batch_size = batch_size
        self.tok = tokenizer
        self.vector = vector
        self.decoding = decoding
        self._model_fp = model_fingerprint(model)
        self._vector_fp = vector_fingerprint(vector)
        self.calls = 0  # number of generate() calls (for tests and progress)

    def key(self, prompt: str, steered: bool) -> str:
        settings = asdict(self.decoding)
        if not steered:  # the unsteered pass is shared by every vector and steering setting
            for name in _STEERING_FIELDS:
                settings.pop(name)
        return digest("lasa-eval-v1", self._model_fp, self._vector_fp if steered else None,
                      prompt, steered, settings)

    def gate(self, prompts: Sequence[str]) -> list[tuple[bool, float]] | None:
        """Gate decisions for the steered pass, or None when every row must be generated."""
        d = self.decoding
        if not self.reuse_unfired or d.mode != "gate" or self.vector.gate is None:
            return None
        scores, fired = gate_scores(self.model, self.tok, self.vector, list(prompts),
                                    batch_size=self.batch_size, chat=d.chat)
        return [(bool(f), float(s)) for f, s in zip(fired.tolist(), scores.tolist())]

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], steered: bool) -> list[Generation]:
        self.calls += 1
        d = self.decoding
        texts = [format_prompt(self.tok, p, d.chat) for p in prompts]
        self.tok.padding_side = "left"
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        device = next(self.model.parameters()).device
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        kwargs: dict[str, Any] = dict(max_new_tokens=d.max_new_tokens, do_sample=d.do_sample,
                                      pad_token_id=self.tok.pad_token_id)
        if d.do_sample:
            kwargs.update(temperature=d.temperature, top_p=d.top_p)
            torch.manual_seed(d.seed)
        fired: list[bool | None] = [None] * len(texts)
        scores: list[float | None] = [None] * len(texts)
        if steered:
            with steer(self.model, self.vector, strength=d.strength, mode=d.mode,
                       action=d.action) as handle:
                out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
                if handle.fired is not None:
                    fired = [bool(x) for x in handle.fired.tolist()]
                    scores = [None if x != x else float(x) for x in handle.scores.tolist()]
        else:
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = out[:, ids.shape[1]:]
        decoded = self.tok.batch_decode(new, skip_special_tokens=True)
        return [Generation(t.strip(), f, s) for t, f, s in zip(decoded, fired, scores)]
