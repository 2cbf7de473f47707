"""``/v1/chat/completions``: messages to prompt tokens, and the chat response shapes."""

from __future__ import annotations

from typing import Any

from lasa_steer.prompts import format_prompt

from ..errors import APIError
from ..protocol import (AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionRequest,
                        ChatCompletionResponse, ChatDelta)
from ..runtime import Runtime
from .text import check_text


class ChatFlavor:
    """How a chat completion names and shapes its choices (see ``Generation``)."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"
    prompt_param = "messages"

    def choice(self, i: int, text: str, finish: str) -> ChatChoice:
        return ChatChoice(index=i, message=AssistantMessage(content=text), logprobs=None,
                          finish_reason=finish)

    def delta(self, i: int, text: str | None, finish: str | None = None) -> ChatChunkChoice:
        delta = ChatDelta(content=text) if text is not None else ChatDelta()
        return ChatChunkChoice(index=i, delta=delta, logprobs=None, finish_reason=finish)

    def opening(self, i: int, prompt: int) -> ChatChunkChoice:
        return ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""),
                               logprobs=None, finish_reason=None)

    def response(self, **fields: Any) -> ChatCompletionResponse:
        return ChatCompletionResponse(**fields)


def chat_prompt(rt: Runtime, req: ChatCompletionRequest) -> list[int]:
    """The prompt tokens of a chat request (its messages in the model's chat template)."""
    if req.logprobs or req.top_logprobs:
        raise APIError(400, "logprobs are not supported by this server", param="logprobs")
    if req.tools:
        raise APIError(400, "tools are not supported by this server", param="tools")
    messages = []
    for i, m in enumerate(req.messages):
        if isinstance(m.content, list):
            parts = []
            for k, part in enumerate(m.content):
                if part.type != "text" or part.text is None:
                    raise APIError(400, f"messages[{i}].content[{k}]: only text parts are "
                                   "supported", param=f"messages.{i}.content")
                parts.append(check_text(part.text, f"messages.{i}.content.{k}.text"))
            content = "".join(parts)
        else:
            content = check_text(m.content or "", f"messages.{i}.content")
        if m.name is not None:
            check_text(m.name, f"messages.{i}.name")
        role = "system" if m.role == "developer" else m.role
        messages.append({"role": role, "content": content})
    try:
        text = format_prompt(rt.tok, messages, chat=True)
    except Exception as exc:  # template rules (e.g. role order) are the model's own
        raise APIError(400, f"messages: the model's chat template rejected them: {exc}",
                       param="messages") from exc
    return rt.tok(text, add_special_tokens=False)["input_ids"]
