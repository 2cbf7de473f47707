"""Turn user text or chat messages into model input text (the chat template when there is one)."""

from __future__ import annotations

from typing import Any, Sequence, Union

Messages = list[dict[str, Any]]
Prompt = Union[str, Messages]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, prompt: Prompt, chat: bool | None = None,
                  assistant_prefix: str = "") -> str:
    """Render one prompt. A string becomes one user message when ``chat`` (default: whether
    the tokenizer has a chat template); messages always need the template.
    ``assistant_prefix`` is text that opens the assistant turn (e.g. a forced refusal start)."""
    use_chat = has_chat_template(tokenizer) if chat is None else chat
    if isinstance(prompt, str) and not use_chat:
        return prompt + assistant_prefix
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not has_chat_template(tokenizer):
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return text + (" " + assistant_prefix if assistant_prefix else "")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + assistant_prefix


def format_prompts(tokenizer: Any, prompts: Sequence[Prompt], chat: bool | None = None,
                   assistant_prefix: str = "") -> list[str]:
    return [format_prompt(tokenizer, p, chat, assistant_prefix) for p in prompts]
