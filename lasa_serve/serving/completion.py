"""``/v1/completions``: text or token prompts, and the text completion response shapes."""

from __future__ import annotations

from typing import Any

from ..errors import APIError
from ..protocol import CompletionRequest, CompletionResponse, TextChoice
from ..runtime import Runtime
from .text import tokenize


class TextFlavor:
    """How a text completion names and shapes its choices; ``echo`` (one text per prompt)
    starts each choice with its prompt."""

    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl-"
    prompt_param = "prompt"

    def __init__(self, echo: list[str] | None, n: int):
        self.echo, self.n = echo, n

    def choice(self, i: int, text: str, finish: str) -> TextChoice:
        if self.echo is not None:
            text = self.echo[i // self.n] + text
        return TextChoice(index=i, text=text, logprobs=None, finish_reason=finish)

    def delta(self, i: int, text: str | None, finish: str | None = None) -> TextChoice:
        return TextChoice(index=i, text=text or "", logprobs=None, finish_reason=finish)

    def opening(self, i: int, prompt: int) -> TextChoice:
        return self.delta(i, self.echo[prompt] if self.echo is not None else "")

    def response(self, **fields: Any) -> CompletionResponse:
        return CompletionResponse(**fields)


def completion_prompts(rt: Runtime, req: CompletionRequest) -> tuple[list[list[int]], list[str]]:
    """The prompts' tokens and texts (token prompts are checked against the vocabulary; an
    empty prompt becomes the BOS token)."""
    if req.logprobs:
        raise APIError(400, "logprobs are not supported by this server", param="logprobs")
    if req.suffix:
        raise APIError(400, "suffix is not supported by this server", param="suffix")
    p = req.prompt
    if isinstance(p, str) or (p and all(isinstance(x, int) for x in p)):
        prompts: list[Any] = [p]
    else:
        prompts = list(p)
    if not prompts:
        raise APIError(400, "prompt: give at least one prompt", param="prompt")
    vocab = rt.vocab_size
    all_ids, texts = [], []
    for i, item in enumerate(prompts):
        if isinstance(item, str):
            ids = tokenize(rt, item, "prompt" if len(prompts) == 1 else f"prompt.{i}")
            texts.append(item)
        else:
            if any((not isinstance(t, int)) or t < 0 or t >= vocab for t in item):
                raise APIError(400, f"prompt[{i}]: token ids must lie in 0..{vocab - 1}",
                               param="prompt")
            ids = list(item)
            texts.append(rt.tok.decode(ids))
        if not ids:
            bos = rt.tok.bos_token_id
            if bos is None:
                raise APIError(400, f"prompt[{i}] is empty", param="prompt")
            ids = [int(bos)]
        all_ids.append(ids)
    return all_ids, texts
