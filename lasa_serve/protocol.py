"""Request and response bodies of the OpenAI-compatible endpoints (pydantic).

Unknown fields are ignored, as OpenAI clients send more than any one server uses. Numbers
and booleans are strict (``"n": "2"`` or ``"stream": "yes"`` is a 400, as at OpenAI): a
coerced value would hide a client's bug. Fields that would change the meaning of the answer
and that this server cannot honour (logprobs, tools, images) are refused with a 400 in
:mod:`lasa_serve.serving`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lasa_steer.types import Mode, RequestAction

from .vectors import NAME_RE

Stop = Optional[Union[str, list[str]]]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="null")


class Steering(_Body):
    """Per-request steering (the ``steering`` body field; ``extra_body`` in the client).
    Names are never empty: ``""`` is a client's mistake, not a request for the default."""

    vector: Optional[str] = Field(None, description="vector name (default: the server's)",
                                  min_length=1, max_length=128, pattern=NAME_RE.pattern)
    strength: Optional[float] = Field(None, ge=-1000.0, le=1000.0, allow_inf_nan=False,
                                      strict=True)
    mode: Optional[Mode] = None
    action: Optional[RequestAction] = None
    direction: Optional[str] = Field(None, min_length=1, max_length=64,
                                     description="named direction in the vector file")


class StreamOptions(_Body):
    include_usage: Optional[bool] = Field(False, strict=True)


class SamplingRequest(_Body):
    """Fields shared by chat and text completion requests."""

    model: str = Field(..., max_length=256)
    max_tokens: Optional[int] = Field(None, ge=1, strict=True)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, allow_inf_nan=False, strict=True)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0, allow_inf_nan=False, strict=True)
    seed: Optional[int] = Field(None, strict=True)
    stop: Stop = None
    n: Optional[int] = Field(None, ge=1, le=128, strict=True)
    stream: Optional[bool] = Field(False, strict=True)
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    steering: Optional[Steering] = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Stop) -> Stop:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(len(s) > 256 for s in items):
            raise ValueError("a stop sequence is longer than 256 characters")
        return v

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
    max_completion_tokens: Optional[int] = Field(None, ge=1, strict=True)
    logprobs: Optional[bool] = Field(None, strict=True, json_schema_extra=_only_false,
                                     description="not supported: false or null only")
    top_logprobs: Optional[int] = Field(None, strict=True, ge=0, le=0)
    tools: Optional[list[dict[str, Any]]] = None


class CompletionRequest(SamplingRequest):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: Optional[bool] = Field(False, strict=True)
    logprobs: Optional[int] = Field(None, strict=True, ge=0, le=0,
                                    description="not supported: 0 or null only")
    suffix: Optional[str] = None


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
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    score: float
    threshold: float  # the threshold of the input's language (language-aware gates)
    language: Optional[str] = None


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


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
