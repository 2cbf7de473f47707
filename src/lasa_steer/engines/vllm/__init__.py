"""lasa vector files inside vLLM (``pip install -e '.[vllm]'``; tested on vLLM 0.32, CPU).

Usage (see docs/vllm.md)::

    from vllm import LLM, SamplingParams
    from lasa_steer.engines import vllm as lasa_vllm

    llm = LLM(model=folder, **lasa_vllm.engine_kwargs())
    lasa_vllm.install(llm, {"smollm2": "smollm2-135m-instruct"})
    params = SamplingParams(max_tokens=64, temperature=0,
                            extra_args=lasa_vllm.xargs(vector="smollm2", mode="gate",
                                                       action="add"))
    out = llm.generate(prompts, params)
    lasa_vllm.report(llm, [o.request_id for o in out])   # gate score, fired, language

or, installed by every worker as its model loads, ``LLM(model=folder,
**lasa_vllm.engine_kwargs({"smollm2": path}, default_vector="smollm2"))``; a plain vLLM
server takes the same through its flags (:func:`server_args`, ``lasa vllm-args``).

Every decoder layer gets a steering slot when vLLM loads the model, before it compiles it
(:mod:`.slots`, through the ``vllm.general_plugins`` entry point :mod:`.plugin`); each
worker holds the vector files and runs the slots' work (:mod:`.hooks`); a request's
``SamplingParams.extra_args`` (``lasa_vector``, ``lasa_mode``, ``lasa_action``,
``lasa_strength``, ``lasa_direction``; :mod:`.params`) choose its steering, with the same
maths as the HF engine. Configurations that cannot be exact are refused at install
(:mod:`.checks`). Importing this package does not import vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .checks import ENGINE_KWARGS, SUPPORTED_VLLM
from .config import (CONFIG_KEY, DEFAULT_STEERING, LOGITS_PROCESSOR, WORKER_EXTENSION,
                     SlotOptions, config_entry, server_args)
from .params import Defaults, check_choice_default, xargs

__all__ = ["ENGINE_KWARGS", "LOGITS_PROCESSOR", "SUPPORTED_VLLM", "WORKER_EXTENSION",
           "engine_kwargs", "external_id", "install", "report", "server_args", "xargs"]


def engine_kwargs(vectors: Mapping[str, str | Path] | None = None, *,
                  default_vector: str | None = None, default_mode: str = "gate",
                  default_action: str | None = None, default_strength: float | None = None,
                  steering: str = DEFAULT_STEERING, cuda_graphs: bool = False,
                  **overrides: Any) -> dict[str, Any]:
    """``vllm.LLM`` / ``AsyncEngineArgs`` keyword arguments the plugin needs (its entry in
    ``additional_config``, the worker extension and the logits processor), plus
    ``overrides`` (an ``additional_config`` or ``compilation_config`` dict is merged).
    Chunked prefill and prefix caching stay at vLLM's defaults (exact: :mod:`.checks`,
    :mod:`.cache`, :mod:`.recompute`; ``enable_chunked_prefill=False`` /
    ``enable_prefix_caching=False`` turn them off), except that the host steering gets
    ``enable_chunked_prefill=False``.
    With ``vectors`` (name -> file) every worker installs them when its model loads, with
    the ``default_*`` settings, so no :func:`install` call is needed. vLLM's torch.compile
    stays on, CUDA graphs off (``cudagraph_mode`` NONE: :data:`.config.STEERABLE_COMPILATION`)
    unless ``cuda_graphs``; ``enforce_eager=True`` works too. ``steering``: ``"graph"``
    (tensor work on persistent buffers, :mod:`lasa_steer.steering.graph`) or ``"host"``
    (Python per pass); ``cuda_graphs=True`` leaves vLLM's CUDA graphs at its default and lets
    the graph steering run inside them (untested on GPU; the vectors must then be given
    here, not to :func:`install`)."""
    from .logits import LasaLogitsProcessor

    extra = dict(ENGINE_KWARGS["additional_config"])
    extra[CONFIG_KEY] = config_entry(vectors, default_vector, default_mode, default_action,
                                     default_strength,
                                     options=SlotOptions(steering, cuda_graphs))
    extra.update(overrides.pop("additional_config", None) or {})
    compilation = overrides.pop("compilation_config", None)
    if compilation is None or isinstance(compilation, dict):
        base = {} if cuda_graphs else ENGINE_KWARGS["compilation_config"]
        compilation = {**base, **(compilation or {})}
    out: dict[str, Any] = dict(ENGINE_KWARGS, worker_extension_cls=WORKER_EXTENSION,
                               logits_processors=[LasaLogitsProcessor],
                               additional_config=extra, compilation_config=compilation)
    if steering == "host":  # it needs a gate request's whole prompt in one pass
        out["enable_chunked_prefill"] = False
    out.update(overrides)
    return out


def install(llm: Any, vectors: dict[str, str], default_vector: str | None = None,
            default_mode: str = "gate", default_action: str | None = None,
            default_strength: float | None = None,
            allow_mismatch: bool = False) -> list[dict[str, Any]]:
    """Load ``vectors`` (name -> file path) into every worker of ``llm`` (a ``vllm.LLM``)
    and install the hooks. A request without ``lasa_*`` keys gets the defaults (unsteered
    unless ``default_vector`` is given with a mode other than ``off``). Returns each
    worker's summary."""
    defaults = Defaults(default_vector, default_mode, default_action, default_strength)
    check_choice_default(defaults, vectors)
    paths = {str(k): str(v) for k, v in vectors.items()}
    out = llm.collective_rpc("lasa_install", args=(paths, default_vector, default_mode,
                                                   default_action, default_strength,
                                                   allow_mismatch))
    from .logits import LasaLogitsProcessor

    from .cache import CachePolicy

    LasaLogitsProcessor.configure(frozenset(paths), defaults)
    CachePolicy.configure(paths, defaults)
    return list(out)


def report(llm: Any, req_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per request id as ``RequestOutput.request_id`` gives it (from the first worker; every
    rank decides alike): the settings used, ``gate_score``, ``fired``, ``lang``, ``error``
    and ``live`` (False once the request has finished; the last 4,096 are kept)."""
    everything = dict(llm.collective_rpc("lasa_report", args=(None,))[0])
    out = {external_id(k): v for k, v in everything.items()}
    return out if req_ids is None else {k: out[k] for k in req_ids if k in out}


def external_id(req_id: str) -> str:
    """The caller's request id of an engine-internal one (vLLM 0.32 appends ``-`` and 8
    characters of a random id to keep ids unique)."""
    head, sep, tail = req_id.rpartition("-")
    return head if sep and len(tail) == 8 else req_id
