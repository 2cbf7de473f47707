"""Request text as the tokenizer gets it: valid Unicode only.

JSON may carry a lone UTF-16 surrogate (``"\\ud800"``); Python keeps it in the string and
the fast tokenizers raise ``TypeError`` on it, which would surface as a 500. It is the
client's error, so it is refused with a 400 that names the field.
"""

from __future__ import annotations

from ..errors import APIError
from ..runtime import Runtime


def check_text(text: str, param: str) -> str:
    """``text`` unchanged, or a 400 naming ``param`` if it is not encodable as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(400, f"{param}: character {exc.start} is a lone UTF-16 surrogate "
                       f"({text[exc.start]!r}), which is not valid Unicode text",
                       param=param, code="invalid_text") from None
    return text


def tokenize(rt: Runtime, text: str, param: str) -> list[int]:
    """The token ids of a request text (no special tokens added)."""
    return rt.tok(check_text(text, param), add_special_tokens=False)["input_ids"]
