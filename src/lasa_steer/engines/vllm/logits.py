"""The plugin's vLLM logits processor: request-time checks and the forced refusal openers.

* ``validate_params`` refuses a request with bad ``lasa_*`` settings at admission
  (``VLLMValidationError`` from ``LLM.generate``; vLLM documents it as an HTTP 400 in its
  OpenAI server) instead of letting it run unsteered.
* ``apply`` writes the ``prefix``/``refuse`` openers: for a request whose gate fired (or in
  mode ``always``), the logits row is made one-hot on the opener's next token with
  :func:`lasa_steer.steering.openers.force`, the HF engine's LM-head function. vLLM applies
  it after ``allowed_token_ids``, bad words, ``logit_bias`` and ``min_tokens`` and before
  penalties, temperature, top-k/p and min-p, none of which can move a row whose every other
  logit is ``-inf``: greedy or sampled, the opener is the text. Raw logprobs (taken before
  any processor) are the model's, not the forced ones.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import LogitsProcessor

from ...errors import SteeringConfigError
from ...steering.openers import force
from .hooks import ACTIVE
from .params import Defaults, parse, resolve_names


class LasaLogitsProcessor(LogitsProcessor):
    """Validates ``SamplingParams.extra_args``; forces the openers of fired requests.
    :func:`~lasa_steer.engines.vllm.install`, or the general plugin for an engine whose
    ``additional_config`` names vectors, tells it the loaded vector names and defaults (in
    the process that admits requests)."""

    names: ClassVar[frozenset[str] | None] = None  # None: names are checked in the worker
    defaults: ClassVar[Defaults] = Defaults()

    @classmethod
    def configure(cls, names: frozenset[str], defaults: Defaults) -> None:
        """The vector names loaded in the workers and the request defaults (this process)."""
        cls.names, cls.defaults = names, defaults

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Raise ``VLLMValidationError`` (an HTTP 400 whose ``param`` is
        ``vllm_xargs.<key>``) for settings the workers would refuse."""
        try:
            settings = parse(getattr(sampling_params, "extra_args", None))
            if cls.names is not None:
                resolve_names(settings, cls.names, cls.defaults)
        except SteeringConfigError as exc:
            raise VLLMValidationError(str(exc), parameter="vllm_xargs" + (
                f".{exc.field}" if exc.field else "")) from exc

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        pass

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not ACTIVE:
            return logits
        rows, tokens = ACTIVE[-1].forced_tokens(logits.shape[0])
        if rows:
            force(logits[:, None, :], rows, tokens)  # in place, on a [B, 1, V] view
        return logits

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: Any) -> None:
        return None
