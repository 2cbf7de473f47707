"""``/v1/moderations``: the gate of a vector on each input (the HF engine runs the model
only up to the gate block; vLLM runs the prompt pass and one token)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Sequence

from lasa_steer import SteeringConfigError

from ..backend import GateReadings
from ..errors import APIError
from ..protocol import ModerationRequest, ModerationResponse, ModerationResult
from ..runtime import Runtime
from ..scheduler import gate_readings
from .text import tokenize


def score_texts(model: Any, tok: Any, vector: Any, texts: Sequence[str]
                ) -> list[ModerationResult]:
    """One result per text, from :func:`lasa_steer.capture.gate_decisions` (THE gate
    decision, with each text's language for a language-aware gate)."""
    return results_of(vector, gate_readings(model, tok, vector, texts))


def results_of(vector: Any, r: GateReadings) -> list[ModerationResult]:
    """The moderation results of gate readings, whichever engine read them."""
    return [ModerationResult(flagged=bool(f), categories={"harmful": bool(f)},
                             category_scores={"harmful": float(s)}, score=float(s),
                             threshold=vector.gate.threshold_for(lang), language=lang)
            for s, f, lang in zip(r.scores, r.fired, r.langs)]


async def moderate(rt: Runtime, req: ModerationRequest) -> ModerationResponse:
    """Validate the request, score its texts on the model worker, count the metrics."""
    inputs = [req.input] if isinstance(req.input, str) else list(req.input)
    if not inputs:
        raise APIError(400, "input: give at least one text", param="input",
                       code="invalid_value")
    if len(inputs) > rt.config.max_moderation_inputs:
        raise APIError(400, f"input: at most {rt.config.max_moderation_inputs} texts per "
                       "request", param="input", code="invalid_value")
    name = req.model if req.model and req.model != rt.model_name else rt.default_vector
    vector = rt.vectors.get(name) if name else None
    if vector is None:
        raise APIError(404, f"model {req.model!r}: no such model or vector (moderation "
                       f"uses a vector's gate; vectors: {rt.vectors.names()})",
                       param="model", code="model_not_found")
    if vector.gate is None:
        raise APIError(400, f"vector {name!r} has no gate", param="model")
    for i, text in enumerate(inputs):
        n = len(tokenize(rt, text, "input" if isinstance(req.input, str) else f"input.{i}"))
        limit = min(rt.context - 64, rt.config.max_prompt_tokens or rt.context)
        if n > limit:
            raise APIError(400, f"input[{i}]: {n} tokens exceed the limit of {limit} tokens "
                           "(the context window less 64, or --max-prompt-tokens)",
                           param="input", code="context_length_exceeded")
    try:
        readings = await asyncio.wrap_future(rt.backend.gate(name, vector, inputs))
    except SteeringConfigError as exc:  # the engine cannot read this vector's gate
        raise APIError(400, f"vector {name!r}: {exc}", param="model") from exc
    results = results_of(vector, readings)
    rt.metrics.gate_scored(len(results), sum(r.flagged for r in results))
    return ModerationResponse(id=f"modr-{uuid.uuid4().hex}", model=name, results=results)
