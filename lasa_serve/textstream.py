"""Incremental detokenisation with stop strings, for streaming.

The text of a row is re-decoded from all its tokens (cheap for chat-length outputs and
correct for multi-token characters). Text is released only when it cannot change any more:
a trailing replacement character (half of a UTF-8 sequence) and a tail that could still
grow into a stop string are held back until the next token or the end.
"""

from __future__ import annotations

from typing import Any


class TextStream:
    def __init__(self, tokenizer: Any, stop: list[str] | None = None):
        self.tok = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""  # all text so far (after a stop string: cut before it)
        self.sent = 0  # characters of ``text`` already released
        self.stopped = False

    def add(self, token: int) -> bool:
        """Append a token; return True when a stop string ended the text."""
        self.ids.append(token)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if self.stop:
            start = max(0, min(len(self.text), len(text)) - self.hold - 1)
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text = text[:min(hits)]
                self.stopped = True
                return True
        self.text = text
        return False

    def release(self, final: bool = False) -> str:
        """The new text that is safe to send now (everything when ``final``)."""
        end = len(self.text)
        if not final and not self.stopped:
            if self.text.endswith("\ufffd"):
                end -= 1
            end = max(self.sent, end - self.hold)
        piece = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return piece
