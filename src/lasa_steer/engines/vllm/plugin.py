"""The ``vllm.general_plugins`` entry point (pyproject: ``lasa_steer``): steering slots at
model load.

vLLM runs general plugins in every process before it builds a model. :func:`register`
wraps the model loader so that a model built for an engine whose ``additional_config``
holds :data:`CONFIG_KEY` (what :func:`lasa_steer.engines.vllm.engine_kwargs` sets) gets its
steering slots (:func:`.slots.add_slots`) right after its weights load, before vLLM
compiles it. Engines without the key load untouched. The key is also part of vLLM's
compile-cache hash (``VllmConfig.compute_hash`` hashes ``additional_config``), so a graph
compiled without slots is never reused for an engine that needs them, or the reverse.
"""

from __future__ import annotations

import functools
from typing import Any

CONFIG_KEY = "lasa_steer"
SLOTS_VERSION = 1  # bump when the slots' graph changes


def wants_slots(vllm_config: Any) -> bool:
    extra = getattr(vllm_config, "additional_config", None)
    return isinstance(extra, dict) and bool(extra.get(CONFIG_KEY))


def register() -> None:
    """Wrap ``BaseModelLoader.load_model`` once per process (vLLM calls this on start)."""
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    original = BaseModelLoader.load_model
    if getattr(original, "_lasa_slots", False):
        return

    @functools.wraps(original)
    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        model = original(self, *args, **kwargs)
        vllm_config = kwargs.get("vllm_config", args[0] if args else None)
        if wants_slots(vllm_config):
            from .slots import add_slots

            add_slots(model)
        return model

    load_model._lasa_slots = True  # type: ignore[attr-defined]
    BaseModelLoader.load_model = load_model  # type: ignore[method-assign]
