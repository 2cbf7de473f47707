"""Prompt prefill in bounded pieces, so that one long prompt cannot stall running streams.

A :class:`Prefill` holds the prompts of some jobs (left-padded), their KV cache and their
:class:`~lasa_steer.BatchState`, and runs their prompt pass either whole or one chunk of
columns per scheduler iteration; the running rows' decode step runs between two chunks.

Chunking is exact only for rows whose steering needs no gate read: the gate pools states
over the whole prompt (its last token, the language mean) and a fired gate steers every
prompt token, so a row in mode ``gate`` with a vector is prefilled whole (see
:attr:`Prefill.chunkable`); ``--max-prompt-tokens`` bounds its prompt instead. A non-final
chunk leaves the rows' forced-opener step count (``prefix``/``refuse``) as it was: the
LM-head hook counts one token per pass, and only the last chunk's logits are sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from lasa_steer import BatchState, SteeringEngine
from lasa_steer.tensors import left_pad, position_ids

from .jobs import Job
from .metrics import Metrics

MIN_CHUNK = 16  # tokens a chunk always gets, so a prompt progresses under any decode load


@dataclass
class Prefill:
    """The prompt pass of ``jobs``, run whole or chunk by chunk (:meth:`step`)."""

    jobs: list[Job]
    ids: torch.Tensor  # [B, T] left-padded
    mask: torch.Tensor  # [B, T]
    state: BatchState
    cache: DynamicCache = field(default_factory=DynamicCache)
    done: int = 0  # prompt columns already run
    logits: torch.Tensor | None = None  # [B, V] after the last chunk

    @classmethod
    def start(cls, jobs: list[Job], pad: int | None, device: torch.device) -> "Prefill":
        ids, mask = left_pad([j.prompt_ids for j in jobs], pad, device)
        return cls(jobs, ids, mask, BatchState.new([j.steering for j in jobs]))

    @property
    def rows(self) -> int:
        return sum(j.n for j in self.jobs)

    @property
    def chunkable(self) -> bool:
        """Whether the prompts may be prefilled in chunks: no gate is read in their pass."""
        return bool(self.state.decided.all())

    @property
    def cancelled(self) -> bool:
        return all(j.cancelled.is_set() for j in self.jobs)

    def step(self, model: torch.nn.Module, engine: SteeringEngine, cache_kw: str,
             budget: int | None = None) -> bool:
        """Run the next ``budget`` prompt columns (None: all); True once the prompt is done."""
        width = self.ids.shape[1]
        a = self.done
        b = width if budget is None else min(width, a + max(budget, 1))
        steps = self.state.steps.clone()
        engine.use(self.state)  # undecided gates are read in this (whole-prompt) pass
        with torch.inference_mode():
            out = model(input_ids=self.ids[:, a:b], attention_mask=self.mask[:, :b],
                        position_ids=position_ids(self.mask)[:, a:b], use_cache=True,
                        logits_to_keep=1, **{cache_kw: self.cache})
        self.done = b
        if b < width:  # this chunk's logits are not sampled: no opener token was used
            self.state.steps = steps
            return False
        self.logits = out.logits[:, -1, :]
        return True

    def report(self, metrics: Metrics) -> list[int]:
        """Copy the gate results to the jobs, emit their ``steering`` events, count the
        metrics; the batch index of every choice row (n rows share one prompt row)."""
        for i, j in enumerate(self.jobs):
            score = float(self.state.scores[i])
            j.score = None if math.isnan(score) else score
            j.fired = bool(self.state.fired[i])
            j.language = self.state.langs[i]
            if j.steering.mode != "off":
                metrics.gate(j.fired, evaluated=j.steering.mode == "gate")
            j.open_rows = j.n
            metrics.prompt_tokens(len(j.prompt_ids))
            j.emit([{"type": "steering", "score": j.score, "fired": j.fired,
                     "language": j.language, "prompt_tokens": len(j.prompt_ids)}])
        return [i for i, j in enumerate(self.jobs) for _ in range(j.n)]



def fail_jobs(jobs: list[Job], exc: BaseException) -> None:
    """Answer each job's request with a 500 naming the exception type."""
    for j in jobs:
        j.emit([{"type": "error", "status": 500,
                 "message": f"generation failed: {type(exc).__name__}"}])


def eos_ids(model: Any, tok: Any) -> set[int]:
    """Every end-of-sequence id the model's configs and the tokenizer name."""
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(src, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    return ids
