"""Installing vector files in a vLLM worker (:func:`install_on`): load them, check them
against the loaded model and point the model's steering slots (added at load, :mod:`.slots`)
at them. Two callers: the worker extension (``vllm.LLM(..., worker_extension_cls=
WORKER_EXTENSION)`` mixes it into every worker; :func:`lasa_steer.engines.vllm.install`
calls :meth:`LasaWorkerExtension.lasa_install` through ``collective_rpc``), and the general
plugin at model load when the engine's ``additional_config`` names vectors (:mod:`.config`,
a plain ``vllm serve``).
Every rank of a tensor-parallel group loads the same files and makes the same decisions.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import SteeringConfigError, VectorMismatchError
from ...model.identity import ModelIdentity, config_fingerprint
from ...model.layers import find_layers
from ...steering.openers import Openers
from ...vector.file import SteeringVector
from .checks import check, cudagraph_mode
from .config import slot_options
from .graph import VllmGraphSteering
from .hooks import ACTIVE, VllmSteering, vector_points
from .params import Defaults, check_choice_default
from .slots import has_slots


def install_on(worker: Any, vectors: Mapping[str, str], defaults: Defaults = Defaults(),
               allow_mismatch: bool = False, at_load: bool = False) -> dict[str, Any]:
    """Load ``vectors`` (name -> vector file path) in ``worker`` (a vLLM worker whose model
    is loaded) and point the model's steering slots at them, replacing an earlier install.
    Raises :class:`~lasa_steer.SteeringConfigError` for an engine configuration that cannot
    be exact, and the vector file errors for unfit files (the old install then stays).
    ``at_load``: called as the model loads, before vLLM compiles it and captures CUDA
    graphs (with CUDA graphs the only time an install can be captured)."""
    import vllm

    check(worker.vllm_config, vllm.__version__)
    graphs = cudagraph_mode(worker.vllm_config) != "NONE"
    if graphs and not at_load:
        raise SteeringConfigError(
            "lasa: with CUDA graphs the vectors must be installed as the model loads "
            "(engine_kwargs(vectors) or additional_config's 'vectors'), before the graphs "
            "are captured; install() afterwards would not be in them")
    check_choice_default(defaults, vectors)
    runner = worker.model_runner
    model = runner.get_model()
    if not has_slots(model):
        raise SteeringConfigError(
            "lasa: the served model has no steering slots although the engine asked for "
            "them: vLLM did not load the lasa_steer general plugin (install the package "
            "with pip so its vllm.general_plugins entry point exists)")
    layer_map = find_layers(model)
    ident = ModelIdentity(layer_map.architecture, layer_map.architecture,
                          layer_map.hidden_size, layer_map.num_layers,
                          config_fingerprint(model), [])
    loaded: dict[str, SteeringVector] = {}
    for name, path in vectors.items():
        vec = SteeringVector.load(path)
        _check_fits(vec, ident, allow_mismatch)
        loaded[name] = vec
    openers = _openers(worker.vllm_config.model_config)
    remove_from(worker)
    if slot_options(worker.vllm_config).steering == "graph":
        steering: VllmSteering = VllmGraphSteering(model, runner, loaded, defaults, layer_map,
                                                   openers, captured=graphs)
    else:
        steering = VllmSteering(model, runner, loaded, defaults, layer_map, openers)
    worker._lasa_steering = steering
    ACTIVE.append(worker._lasa_steering)
    return {"vectors": sorted(loaded),
            "points": {n: sorted(vector_points(v)) for n, v in loaded.items()}}


def remove_from(worker: Any) -> None:
    """Remove ``worker``'s install (requests in flight stop being steered)."""
    steering = getattr(worker, "_lasa_steering", None)
    if steering is not None:
        steering.remove()
        if steering in ACTIVE:
            ACTIVE.remove(steering)
    setattr(worker, "_lasa_steering", None)


class LasaWorkerExtension:
    """Methods added to vLLM's worker class (names start with ``lasa_``), reached through
    ``collective_rpc`` (``vllm.LLM``, or a plain server's dev-mode ``/collective_rpc``)."""

    def lasa_install(self, vectors: dict[str, str], default_vector: str | None = None,
                     default_mode: str = "gate", default_action: str | None = None,
                     default_strength: float | None = None,
                     allow_mismatch: bool = False) -> dict[str, Any]:
        """:func:`install_on` this worker."""
        defaults = Defaults(default_vector, default_mode, default_action, default_strength)
        return install_on(self, vectors, defaults, allow_mismatch)

    def lasa_remove(self) -> None:
        """Remove the hooks (requests in flight stop being steered)."""
        remove_from(self)

    def lasa_stats(self) -> dict[str, int]:
        """Counters: passes with steering work, and passes that read a gate while other
        requests of the batch were already running."""
        steering = getattr(self, "_lasa_steering", None)
        return {} if steering is None else dict(steering.stats)

    def lasa_report(self, req_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per request id: its settings, gate score, decision and language."""
        steering = getattr(self, "_lasa_steering", None)
        return {} if steering is None else steering.report(req_ids)


def _check_fits(vec: SteeringVector, ident: ModelIdentity, allow_mismatch: bool) -> None:
    """The file's model against the served one: hidden size, block count and config
    fingerprint (weight statistics are skipped: vLLM fuses and shards the weights)."""
    mine = vec.model
    want = ModelIdentity(mine.name, mine.architecture, mine.hidden_size, mine.num_layers,
                         "" if allow_mismatch else mine.config_fingerprint, [])
    want.check_fits(ident, source=f"vector {vec.name!r}")
    used = [p[1] for p in vector_points(vec)]
    if used and max(used) >= ident.num_layers:
        raise VectorMismatchError(f"vector {vec.name!r} uses block {max(used)} but the model "
                                  f"has {ident.num_layers} blocks", field="num_layers")


def _openers(model_config: Any) -> Openers | None:
    """The refusal openers as token ids of the served model's tokenizer, ending a turn with
    the generation config's first end-of-sequence id (as :func:`lasa_steer.steering.api.
    end_of_turn` does for an HF model); None when no tokenizer loads (then ``prefix`` and
    ``refuse`` are refused per request, naming the tokenizer)."""
    from transformers import AutoTokenizer, GenerationConfig

    path = getattr(model_config, "tokenizer", None) or model_config.model
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None
    eos: Any = None
    try:
        eos = GenerationConfig.from_pretrained(model_config.model).eos_token_id
    except (OSError, ValueError):
        pass
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return Openers.for_tokenizer(tok, None if eos is None else int(eos))
