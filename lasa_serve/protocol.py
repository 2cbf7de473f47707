"""Request and response bodies of the OpenAI-compatible endpoints (pydantic).

Unknown fields are ignored, as OpenAI clients send more than any one server uses, except
inside ``steering`` (:data:`STRICT_OBJECTS`: a typo there would silently weaken safety). Numbers
and booleans are strict (``"n": "2"`` or ``"stream": "yes"`` is a 400, as at OpenAI): a
coerced value would hide a client's bug. Fields that would change the meaning of the answer
and that this server cannot honour (logprobs, tools, suffix, images) are refused with a 400.

Every limit the server enforces on a field is in these models, so it is in the OpenAPI
schema (schemathesis checks that schema and server agree: ``tests/test_server_schema.py``);
limits that depend on the configuration (the served model's name, ``--max-n``,
``--max-batch``, ``--max-moderation-inputs``, the vocabulary) are filled into the schema by
:func:`lasa_serve.routes.create_app`. What no schema can say is checked at run time: the
prompt's length in tokens, whether a named vector or direction is loaded, a lone UTF-16
surrogate, and ``len(prompt) * n`` against ``--max-batch``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from lasa_steer.types import Mode, RequestAction

from .vectors import NAME_PATTERN

MAX_STOP, MAX_STOP_CHARS = 4, 256
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
# seeds are JSON-safe integers (|seed| < 2**53, JavaScript's Number.MAX_SAFE_INTEGER): every
# client and schema tool reads them exactly (near 2**63 doubles round, and a generator
# then disagrees with the server on the bound); choice k samples with seed + k, which both
# engines' samplers take
SEED_MIN, SEED_MAX = -(2 ** 53 - 1), 2 ** 53 - 1
Stop = Optional[Union[StopText, Annotated[list[StopText], Field(max_length=MAX_STOP)]]]


def _integral(value: Any) -> Any:
    """A JSON number with no fraction (``2.0``) is an integer, as in JSON Schema; a boolean
    or a string is not (the field is strict: ``"2"`` and ``false`` are refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def Int(**bounds: Any) -> Any:
    """An integer field type: strict, but ``2.0`` counts as 2 (JSON Schema's "integer"
    allows it); ``bounds`` (``ge``, ``le``) go inside so that the schema states them."""
    return Annotated[int, Field(strict=True, **bounds), BeforeValidator(_integral)]


TokenId = Int(ge=0)  # and below the vocabulary size (filled into the schema)
TokenIds = Annotated[list[TokenId], Field(min_length=1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="null")


class Steering(_Body):
    """Per-request steering (the ``steering`` body field; ``extra_body`` in the client).
    Names are never empty: ``""`` is a client's mistake, not a request for the default.
    Unknown keys are refused (a typo in a safety control must not fall back to the
    default): the known keys are this model's fields, so a new field is known at once."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="null")

    vector: Optional[str] = Field(None, description="vector name (default: the server's)",
                                  min_length=1, max_length=128, pattern=NAME_PATTERN)
    strength: Optional[float] = Field(None, ge=-1000.0, le=1000.0, allow_inf_nan=False,
                                      strict=True)
    mode: Optional[Mode] = None
    action: Optional[RequestAction] = None
    direction: Optional[str] = Field(None, min_length=1, max_length=64,
                                     pattern=r"^[A-Za-z0-9_-]+$",
                                     description="named direction in the vector file")
    operating_point: Optional[str] = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
        description="the gate's named threshold set, e.g. 'no-harm' (default) or 'recall' "
                    "(lasa info lists a vector's points)")


# body fields whose objects refuse unknown keys, by field name (the errors list their keys)
STRICT_OBJECTS: dict[str, type[BaseModel]] = {"steering": Steering}


class StreamOptions(_Body):
    include_usage: Optional[bool] = Field(False, strict=True)


class SamplingRequest(_Body):
    """Fields shared by chat and text completion requests."""

    model: str = Field(..., max_length=256)
    max_tokens: Optional[Int(ge=1)] = None
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, allow_inf_nan=False, strict=True)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0, allow_inf_nan=False, strict=True)
    seed: Optional[Int(ge=SEED_MIN, le=SEED_MAX)] = None
    stop: Stop = None
    n: Optional[Int(ge=1, le=128)] = None
    stream: Optional[bool] = Field(False, strict=True)
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    steering: Optional[Steering] = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class TextPart(_Body):
    """Only text parts: images and audio are refused (in the schema too)."""

    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[list[TextPart], str]] = None  # list first: its errors first
    name: Optional[str] = None


def _only_false(schema: dict[str, Any]) -> None:
    """Schema of a boolean that only ``false`` (or null) may take (``logprobs``)."""
    schema["anyOf"][0]["const"] = False


class ChatCompletionRequest(SamplingRequest):
    messages: list[Message] = Field(..., min_length=1)
    max_completion_tokens: Optional[Int(ge=1)] = None
    logprobs: Optional[bool] = Field(None, strict=True, json_schema_extra=_only_false,
                                     description="not supported: false or null only")
    top_logprobs: Optional[Int(ge=0, le=0)] = Field(
        None, description="not supported: 0 or null only")
    tools: Optional[list[dict[str, Any]]] = Field(None, max_length=0,
                                                  description="not supported: null or [] only")


class CompletionRequest(SamplingRequest):
    prompt: Union[str, Annotated[list[str], Field(min_length=1)], TokenIds,
                  Annotated[list[TokenIds], Field(min_length=1)]]
    echo: Optional[bool] = Field(False, strict=True)
    logprobs: Optional[Int(ge=0, le=0)] = Field(None,
                                    description="not supported: 0 or null only")
    suffix: Optional[str] = Field(None, max_length=0,
                                  description="not supported: null or empty only")


class ModerationRequest(_Body):
    input: Union[str, Annotated[list[str], Field(min_length=1)]]
    model: Optional[str] = Field(None, min_length=1, max_length=256,
                                 description="a vector name, or the served model for the "
                                 "default vector")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ------------------------------------------------------------------------- responses
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


class SteeringResult(BaseModel):
    """The response's ``steering`` object: the settings used and the gate's decision."""

    vector: Optional[str] = None
    mode: str = "off"
    action: Optional[str] = None
    direction: Optional[str] = None
    strength: Optional[float] = None
    operating_point: Optional[str] = None
    gate_score: Optional[float] = None
    threshold: Optional[float] = None
    language: Optional[str] = None  # identified by a language-aware gate
    fired: bool = False


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class _Choice(BaseModel):
    index: int
    logprobs: None = None
    finish_reason: Optional[str] = None  # set on a choice's last chunk / in a response


class ChatChoice(_Choice):
    message: AssistantMessage


class TextChoice(_Choice):
    text: str


class ChatDelta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChatChunkChoice(_Choice):
    delta: ChatDelta


class _Completion(BaseModel):
    id: str
    object: str
    created: int
    model: str


class _Reply(_Completion):
    usage: Usage
    steering: SteeringResult


class ChatCompletionResponse(_Reply):
    choices: list[ChatChoice]


class CompletionResponse(_Reply):
    choices: list[TextChoice]


class CompletionChunk(_Completion):
    """One server-sent event; ``usage``/``steering`` appear only where set."""

    choices: list[Union[ChatChunkChoice, TextChoice]]
    usage: Optional[Usage] = None
    steering: Optional[SteeringResult] = None


class ModerationResult(BaseModel):
    """OpenAI's moderation result: ``category_scores.harmful`` is the gate's probability in
    [0, 1] (above 0.5 exactly when ``flagged``); ``score`` (the raw gate score), ``threshold``
    (its language's) and ``operating_point`` are lasa's extra fields."""

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    score: float
    threshold: float  # the threshold of the input's language (language-aware gates)
    language: Optional[str] = None
    operating_point: Optional[str] = None


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "lasa-steer"
    context_window: int
    # "off": no vector fits the model (started with --allow-unsteered)
    steering: Literal["on", "off"] = "on"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
