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

from ..capture import gate_scores
from ..generate import Sampling, generate_batch
from ..model.identity import ModelIdentity
from ..steering.api import steer
from ..vector.file import SteeringVector
from .cache import digest, tensor_digest


@dataclass(frozen=True)
class Decoding(Sampling):
    """Generation and steering settings; all of them are part of the cache key."""

    strength: float | None = None
    mode: str = "gate"
    action: str | None = None
    chat: bool | None = None


_STEERING_FIELDS = ("strength", "mode", "action")


@dataclass(frozen=True)
class Generation:
    """One completion; ``fired``/``score``: the gate's decision (None when unsteered);
    ``prefix``: the refusal opener the engine forced (actions ``prefix``/``refuse``), which
    the judge looks past."""

    text: str
    fired: bool | None = None
    score: float | None = None
    prefix: str | None = None


class Generator(Protocol):
    """What :func:`lasa_steer.eval.run.run_eval` needs: batched generation and a cache key."""

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
        self.model, self.tok, self.vector, self.decoding = model, tokenizer, vector, decoding
        self.reuse_unfired, self.batch_size = reuse_unfired, batch_size
        self._model_fp = model_fingerprint(model)
        self._vector_fp = vector_fingerprint(vector)

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

    def generate(self, prompts: Sequence[str], steered: bool) -> list[Generation]:
        d = self.decoding
        fired: list[bool | None] = [None] * len(prompts)
        scores: list[float | None] = [None] * len(prompts)
        openers: list[str | None] = [None] * len(prompts)
        if steered:
            with steer(self.model, self.vector, strength=d.strength, mode=d.mode,
                       action=d.action, tokenizer=self.tok) as handle:
                texts = generate_batch(self.model, self.tok, prompts, d, d.chat)
                if handle.fired is not None and handle.scores is not None:
                    fired = [bool(x) for x in handle.fired.tolist()]
                    scores = [None if x != x else float(x) for x in handle.scores.tolist()]
                    openers = handle.openers or openers
        else:
            texts = generate_batch(self.model, self.tok, prompts, d, d.chat)
        return [Generation(t.strip(), f, s, o)
                for t, f, s, o in zip(texts, fired, scores, openers)]
