"""Request-time checks: a vLLM logits processor whose only job is ``validate_params``, so a
request with bad ``lasa_*`` settings is refused at admission (HTTP 400 in vLLM's OpenAI
server, ``ValueError`` from ``LLM.generate``) instead of running unsteered. It never
changes logits."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from vllm.v1.sample.logits_processor import LogitsProcessor

from .params import Defaults, parse, resolve_names


class LasaParamsCheck(LogitsProcessor):
    """Validates ``SamplingParams.extra_args``; :func:`~lasa_steer.engines.vllm.install`
    tells it the loaded vector names and defaults (in the process that admits requests)."""

    names: ClassVar[frozenset[str] | None] = None  # None: names are checked in the worker
    defaults: ClassVar[Defaults] = Defaults()

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        settings = parse(getattr(sampling_params, "extra_args", None))
        if cls.names is not None:
            resolve_names(settings, cls.names, cls.defaults)

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        pass

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: Any) -> None:
        return None
