"""``/v1/moderations``: the gate of a vector on each input (the HF engine runs the model
only up to the gate block; vLLM runs the prompt pass and one token)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Sequence

import torch
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
    """The moderation results of gate readings, whichever engine read them: the harmful
    category's score is the gate's probability (:meth:`lasa_steer.Gate.probability`)."""
    gate = vector.gate
    scores = torch.as_tensor(list(r.scores), dtype=torch.float64)
    probs = gate.probability(scores, list(r.langs)).tolist()
    # flagged from this gate's thresholds (its operating point), which p > 0.5 agrees with
    flagged = [float(s) > gate.threshold_for(lang) for s, lang in zip(r.scores, r.langs)]
    return [ModerationResult(flagged=f, categories={"harmful": f},
                             category_scores={"harmful": float(p)}, score=float(s),
                             threshold=gate.threshold_for(lang), language=lang,
                             operating_point=gate.operating_point)
            for s, f, lang, p in zip(r.scores, flagged, r.langs, probs)]


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
    try:
        vector = vector.at_operating_point(rt.config.default_operating_point)
    except SteeringConfigError as exc:
        raise APIError(400, f"vector {name!r}: {exc} (the server's --operating-point)",
                       param="model", code="operating_point_not_found") from exc
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
