"""Prompt prefill in bounded pieces, so that one long prompt cannot stall running streams.

A :class:`Prefill` holds the prompts of some jobs (left-padded), their KV cache and their
:class:`~lasa_steer.BatchState`, and runs their prompt pass either whole or one chunk of
columns per scheduler iteration; the running rows' decode step runs between two chunks.

Chunks give what the whole pass gives, for every mode:

* ``off``/``always`` rows need no gate: each chunk is steered (or not) as the whole pass.
* ``gate`` rows: the gate pools the whole prompt at its block (the last real token, or the
  mean, plus the mean at the language block of a language-aware gate). The state's
  ``more_prompt`` flag is set on every chunk but the last, so the engine adds each chunk's
  states to running sums (:meth:`BatchState.pooled`) and decides, with THE decision
  (:func:`lasa_steer.steering.gate.decide`), on the last chunk, from the whole prompt.
  In a whole pass a fired row is steered from the gate block on, for every prompt token of
  that same pass; so when a row fired and steers the prompt (an ``add``/``project``/
  ``clamp`` row, or ``prefix`` with a strength), the earlier chunks, run before the
  decision, lacked that steering: the prompt is prefilled once more, chunk by chunk, with
  the decision already made (steering at or after the gate block only, as
  :class:`~lasa_steer.RowSteering` requires for mode ``gate``), which is exactly the whole
  pass. A row that did not fire, or fired without steering the prompt (``refuse``, or
  ``prefix`` at strength 0), keeps the first run's cache: nothing was steered in it.

A chunk that is not the last leaves the rows' forced-opener step count (``prefix``/
``refuse``) as it was: the LM-head hook counts one token per pass, and only the last
chunk's logits are sampled.
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
    replay: bool = False  # the prompt is being run again, its gates decided

    @classmethod
    def start(cls, jobs: list[Job], pad: int | None, device: torch.device) -> "Prefill":
        ids, mask = left_pad([j.prompt_ids for j in jobs], pad, device)
        return cls(jobs, ids, mask, BatchState.new([j.steering for j in jobs]))

    @property
    def rows(self) -> int:
        return sum(j.n for j in self.jobs)

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
        undecided = ~self.state.decided
        self.state.more_prompt = b < width  # gates decide on the last chunk only
        engine.use(self.state)
        try:
            with torch.inference_mode():
                out = model(input_ids=self.ids[:, a:b], attention_mask=self.mask[:, :b],
                            position_ids=position_ids(self.mask)[:, a:b], use_cache=True,
                            logits_to_keep=1, **{cache_kw: self.cache})
        finally:
            self.state.more_prompt = False
        self.done = b
        if b < width:  # this chunk's logits are not sampled: no opener token was used
            self.state.steps = steps
            return False
        if a > 0 and self._steers_prompt(undecided):
            # gates decided on this last chunk fired: run the prompt again, steered throughout
            self.cache, self.done, self.replay = DynamicCache(), 0, True
            self.state.steps = steps
            return False
        self.logits = out.logits[:, -1, :]
        return True

    def _steers_prompt(self, rows: torch.Tensor) -> bool:
        """Whether one of ``rows`` (bool [B]) fired and is steered on its prompt tokens."""
        return any(bool(rows[i]) and bool(self.state.fired[i]) and bool(r.steer_points())
                   for i, r in enumerate(self.state.rows))

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
