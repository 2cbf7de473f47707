"""The ``vllm.general_plugins`` entry point (pyproject: ``lasa_steer``): steering slots at
model load, and the install a plain ``vllm serve`` needs.

vLLM runs general plugins in every process (the one that admits requests, engine cores,
workers) before it builds anything. :func:`register` wraps three vLLM functions, each only
acting for an engine whose ``additional_config`` holds :data:`~.config.CONFIG_KEY`
(what :func:`lasa_steer.engines.vllm.engine_kwargs` and :func:`.config.server_args` set);
engines without it run untouched:

* the model loader: the model gets its steering slots (:func:`.slots.add_slots`) right after
  its weights load, before vLLM compiles it;
* a worker's ``load_model`` (as the executor calls it, through ``WorkerWrapperBase``): when
  the entry names vector files (:mod:`.config`), the worker installs them
  (:func:`.worker.install_on`) right after its model loads, before vLLM compiles and warms
  it up; a file that does not fit the model stops the engine's start with the error naming
  the field;
* the input processor: the process that admits requests learns the vector names and the
  defaults, so the logits processor's ``validate_params`` refuses a request naming a
  vector that is not loaded (an HTTP 400 from vLLM's OpenAI server); with prefix caching
  on, each admitted request gets the cache terms of its steering (:mod:`.cache`: a
  ``cache_salt``, or no cache reads);
* the scheduler: it runs a fired request's prompt again when the steering asks for it
  under chunked prefill (:mod:`.recompute`; nothing happens until a request is named).

The entry is also part of vLLM's compile-cache hash (``VllmConfig.compute_hash`` hashes
``additional_config``), so a graph compiled without slots is never reused for an engine
that needs them, or the reverse.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from .config import CONFIG_KEY, SLOTS_VERSION, load_install, wants_slots

__all__ = ["CONFIG_KEY", "SLOTS_VERSION", "register", "wants_slots"]


def _wrap(owner: type, name: str, after: Callable[..., None]) -> None:
    """Make ``owner.name`` call ``after(self, result, *args, **kwargs)`` once the original
    returns; idempotent per process."""
    original = getattr(owner, name)
    if getattr(original, "_lasa_wrapped", False):
        return

    @functools.wraps(original)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        after(self, result, *args, **kwargs)
        return result

    wrapped._lasa_wrapped = True  # type: ignore[attr-defined]
    setattr(owner, name, wrapped)


def _slots_after_load(loader: Any, model: Any, *args: Any, **kwargs: Any) -> None:
    vllm_config = kwargs.get("vllm_config", args[0] if args else None)
    if wants_slots(vllm_config):
        from .slots import add_slots

        add_slots(model)


def _install_after_worker_load(wrapper: Any, result: Any, *args: Any, **kwargs: Any) -> None:
    """After a worker's ``load_model`` (called through its ``WorkerWrapperBase``): if the
    entry names vectors, the worker installs them."""
    install = load_install(wrapper.vllm_config)
    if install is None:
        return
    from .worker import install_on

    install_on(wrapper.worker, install.vectors, install.defaults, install.allow_mismatch,
               at_load=True)


def _delegate_load_model(wrapper: Any, *args: Any, **kwargs: Any) -> Any:
    """``WorkerWrapperBase`` hands unknown attributes to its worker (``__getattr__``); this
    makes ``load_model`` a method of its own, so it can be wrapped."""
    return wrapper.worker.load_model(*args, **kwargs)


def _validator_after_init(processor: Any, result: Any, *args: Any, **kwargs: Any) -> None:
    """After ``InputProcessor.__init__``: the admitting process learns the vector names."""
    install = load_install(processor.vllm_config)
    if install is None:
        return
    from .logits import LasaLogitsProcessor

    LasaLogitsProcessor.configure(frozenset(install.vectors), install.defaults)
    from .cache import CachePolicy

    CachePolicy.configure(install.vectors, install.defaults)


def _cache_terms(processor: Any, result: Any, *args: Any, **kwargs: Any) -> None:
    """After ``InputProcessor.process_inputs``: the request's prefix-cache terms
    (:mod:`.cache`), for an engine with steering slots and prefix caching."""
    cfg = processor.vllm_config
    if wants_slots(cfg) and getattr(cfg.cache_config, "enable_prefix_caching", False):
        from .cache import apply

        apply(result)


def register() -> None:
    """vLLM calls this in every process on start."""
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    from . import recompute

    _wrap(BaseModelLoader, "load_model", _slots_after_load)
    if "load_model" not in vars(WorkerWrapperBase):
        # in a spawned worker process vLLM loads the plugins inside init_worker, so the
        # wrapper's load_model (called later by the executor) is the place that always runs
        WorkerWrapperBase.load_model = _delegate_load_model  # type: ignore[attr-defined]
    _wrap(WorkerWrapperBase, "load_model", _install_after_worker_load)
    _wrap(InputProcessor, "__init__", _validator_after_init)
    _wrap(InputProcessor, "process_inputs", _cache_terms)
    if not getattr(Scheduler.update_from_output, "_lasa_wrapped", False):
        Scheduler.update_from_output = recompute.wrap_update(  # type: ignore[method-assign]
            Scheduler.update_from_output)
