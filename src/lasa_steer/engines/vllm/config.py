"""The plugin's entry in vLLM's ``additional_config``: what a *plain* vLLM server needs.

``vllm serve`` / ``python -m vllm.entrypoints.openai.api_server`` has no place to call
:func:`lasa_steer.engines.vllm.install`, so the vector files and the request defaults can
ride in the engine's configuration instead::

    --additional-config '{"lasa_steer": {"vectors": {"smollm2": "/abs/smollm2.safetensors"},
                                         "default_vector": "smollm2", "default_mode": "gate"}}'

The general plugin (:mod:`.plugin`) then installs them in every worker right after the
model loads (before vLLM compiles it), and tells the process that admits requests the
vector names and defaults, so a request's ``vllm_xargs`` are checked at admission (an HTTP
400 naming the key) as with :func:`install`. ``{"lasa_steer": 1}`` (what
:func:`~lasa_steer.engines.vllm.engine_kwargs` sets without vectors) asks for the steering
slots only; vectors then come from :func:`install`. :func:`server_args` writes the whole
command line. This module does not import vLLM.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ...errors import SteeringConfigError
from ...vector.shipped import locate
from .params import NAME_RE, Defaults, check_choice_default

CONFIG_KEY = "lasa_steer"
SLOTS_VERSION = 2  # bump when the slots' graph changes
WORKER_EXTENSION = "lasa_steer.engines.vllm.worker.LasaWorkerExtension"
LOGITS_PROCESSOR = "lasa_steer.engines.vllm.logits:LasaLogitsProcessor"  # vLLM's FQCN form
# vLLM's compilation setting under which the steering slots run: no CUDA graphs (a replayed
# graph would not call them: .checks). torch.compile stays on. On the CPU build this is
# vLLM's default anyway; on CUDA it replaces the default FULL_AND_PIECEWISE.
STEERABLE_COMPILATION: dict[str, Any] = {"cudagraph_mode": "NONE"}
KEYS = ("vectors", "default_vector", "default_mode", "default_action", "default_strength",
        "allow_mismatch", "slots", "steering", "cuda_graphs")
STEERINGS = ("graph", "host")  # graph-safe buffers (lasa_steer.steering.graph), or host Python
DEFAULT_STEERING = "graph"


@dataclass(frozen=True)
class LoadInstall:
    """Vector files to install in every worker when the model loads, and the defaults of a
    request without ``lasa_*`` keys."""

    vectors: dict[str, str]
    defaults: Defaults = field(default_factory=Defaults)
    allow_mismatch: bool = False


def entry(vllm_config: Any) -> Any:
    """The raw ``additional_config["lasa_steer"]`` value of an engine (None: absent)."""
    extra = getattr(vllm_config, "additional_config", None)
    return extra.get(CONFIG_KEY) if isinstance(extra, dict) else None


def wants_slots(vllm_config: Any) -> bool:
    """The engine asked for steering slots (any true entry, vectors or not)."""
    return bool(entry(vllm_config))


@dataclass(frozen=True)
class SlotOptions:
    """How the slots steer: ``steering`` ``graph`` (tensor work on persistent buffers; the
    default) or ``host`` (Python per pass, the first implementation); ``cuda_graphs``
    allows vLLM's CUDA graphs with the graph steering (untested on GPU)."""

    steering: str = DEFAULT_STEERING
    cuda_graphs: bool = False


def slot_options(vllm_config: Any) -> SlotOptions:
    """The entry's :class:`SlotOptions` (defaults for an entry that is not a mapping)."""
    value = entry(vllm_config)
    if not isinstance(value, Mapping):
        return SlotOptions()
    return _options(value, f"additional_config[{CONFIG_KEY!r}]")


def _options(value: Mapping[str, Any], where: str) -> SlotOptions:
    steering = value.get("steering", DEFAULT_STEERING)
    if steering not in STEERINGS:
        raise SteeringConfigError(f"{where}['steering']={steering!r}: one of {STEERINGS}")
    graphs = value.get("cuda_graphs", False)
    if not isinstance(graphs, bool):
        raise SteeringConfigError(f"{where}['cuda_graphs']={graphs!r}: true or false")
    if graphs and steering != "graph":
        raise SteeringConfigError(f"{where}: cuda_graphs needs steering 'graph' (the host "
                                  "steering runs Python that a replayed graph skips)")
    return SlotOptions(steering, graphs)


def load_install(vllm_config: Any) -> LoadInstall | None:
    """The vectors to install at model load, or None when the entry holds none; raise
    :class:`SteeringConfigError` for an entry that is not valid."""
    value = entry(vllm_config)
    return parse_entry(value) if isinstance(value, Mapping) else None


def parse_entry(value: Mapping[str, Any]) -> LoadInstall | None:
    """Check an ``additional_config["lasa_steer"]`` mapping, naming the key at fault."""
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise SteeringConfigError(f"additional_config[{CONFIG_KEY!r}]: unknown key(s) "
                                  f"{unknown}; known: {list(KEYS)}")
    where = f"additional_config[{CONFIG_KEY!r}]"
    _options(value, where)
    vectors = value.get("vectors")
    if vectors is None:
        return None
    if not isinstance(vectors, Mapping) or not vectors:
        raise SteeringConfigError(f"{where}['vectors']: a non-empty object of name -> vector "
                                  "file path")
    for name, path in vectors.items():
        if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 128:
            raise SteeringConfigError(f"{where}['vectors']: name {name!r} must match "
                                      f"{NAME_RE.pattern}")
        if not isinstance(path, str) or not path:
            raise SteeringConfigError(f"{where}['vectors'][{name!r}]: a file path")
    strength = value.get("default_strength")
    if strength is not None and (isinstance(strength, bool)
                                 or not isinstance(strength, (int, float))
                                 or not math.isfinite(float(strength))):
        raise SteeringConfigError(f"{where}['default_strength']={strength!r}: a finite number")
    allow = value.get("allow_mismatch", False)
    if not isinstance(allow, bool):
        raise SteeringConfigError(f"{where}['allow_mismatch']={allow!r}: true or false")
    defaults = Defaults(value.get("default_vector"), value.get("default_mode") or "gate",
                        value.get("default_action"),
                        None if strength is None else float(strength))
    check_choice_default(defaults, vectors)
    return LoadInstall({str(k): str(v) for k, v in vectors.items()}, defaults, allow)


def config_entry(vectors: Mapping[str, str | Path] | None = None,
                 default_vector: str | None = None, default_mode: str = "gate",
                 default_action: str | None = None, default_strength: float | None = None,
                 allow_mismatch: bool = False,
                 options: SlotOptions = SlotOptions()) -> int | dict[str, Any]:
    """The ``additional_config["lasa_steer"]`` value: the slots' version without vectors
    (and default ``options``), else the vectors (absolute paths: workers may start
    elsewhere), the defaults and the options, checked as the workers will check them."""
    extra: dict[str, Any] = {}
    if options.steering != DEFAULT_STEERING:
        extra["steering"] = options.steering
    if options.cuda_graphs:
        extra["cuda_graphs"] = True
    if not vectors:
        if default_vector is not None:
            raise SteeringConfigError("default_vector needs vectors")
        if extra:
            _options(extra, f"additional_config[{CONFIG_KEY!r}]")
            return {"slots": SLOTS_VERSION, **extra}
        return SLOTS_VERSION
    out: dict[str, Any] = {
        "vectors": {str(k): str(locate(v).resolve()) for k, v in vectors.items()},
        "default_mode": default_mode, "slots": SLOTS_VERSION, **extra}
    for key, val in (("default_vector", default_vector), ("default_action", default_action),
                     ("default_strength", default_strength)):
        if val is not None:
            out[key] = val
    if allow_mismatch:
        out["allow_mismatch"] = True
    parse_entry(out)
    return out


def server_args(vectors: Mapping[str, str | Path], default_vector: str | None = None,
                default_mode: str = "gate", default_action: str | None = None,
                default_strength: float | None = None, allow_mismatch: bool = False,
                max_model_len: int | None = None) -> list[str]:
    """Arguments for ``vllm serve MODEL`` / ``python -m vllm.entrypoints.openai.api_server
    --model MODEL`` that serve lasa steering: the ``additional_config`` entry, the plugin's
    logits processor (admission checks, forced openers) and worker extension (its report
    through vLLM's dev-mode ``/collective_rpc``), no chunked prefill (refused with more
    than one worker, :mod:`.checks`; a server with one worker may drop the flag),
    no CUDA graphs (vLLM's CUDA default; a replayed graph would skip the slots), and with
    ``max_model_len`` the matching token budget (a prompt is prefilled whole). Prefix
    caching stays at vLLM's default (each request gets cache terms of its steering,
    :mod:`.cache`)."""
    entry_value = config_entry(vectors, default_vector, default_mode, default_action,
                               default_strength, allow_mismatch)
    args = ["--additional-config", json.dumps({CONFIG_KEY: entry_value}, sort_keys=True,
                                                    separators=(",", ":")),
            "--logits-processors", LOGITS_PROCESSOR,
            "--worker-extension-cls", WORKER_EXTENSION,
            "--no-enable-chunked-prefill",
            "--compilation-config", json.dumps(STEERABLE_COMPILATION, separators=(",", ":"))]
    if max_model_len is not None:
        args += ["--max-model-len", str(max_model_len),
                 "--max-num-batched-tokens", str(max_model_len)]
    return args


def has_logits_processor(vllm_config: Any) -> bool:
    """The engine loads the plugin's logits processor (as a class, a subclass, or by name)."""
    for proc in getattr(vllm_config.model_config, "logits_processors", None) or ():
        names = [proc] if isinstance(proc, str) else \
            [f"{c.__module__}:{c.__qualname__}" for c in getattr(proc, "__mro__", ())]
        if LOGITS_PROCESSOR in names:
            return True
    return False
