"""What the vLLM plugin refuses to run under: configurations where its steering slots
cannot give the HF engine's results exactly.

* an engine built without the slots (``additional_config`` lacks ``lasa_steer``): vLLM
  compiles the model at start, so steering must be in the graph from the model's load
  (:mod:`.slots`). Build the engine with :func:`~lasa_steer.engines.vllm.engine_kwargs`.
* an engine without the plugin's logits processor: requests with bad ``lasa_*`` keys would
  run unsteered instead of being refused at admission, and ``prefix``/``refuse`` could not
  force their openers. ``engine_kwargs`` adds it; a plain server needs
  ``--logits-processors lasa_steer.engines.vllm.logits:LasaLogitsProcessor``.
* CUDA graphs (``cudagraph_mode`` other than ``NONE``): a captured graph replays the
  kernels the slots launched while it was captured, without calling the slots again. The
  graph steering (:mod:`lasa_steer.steering.graph`, the default) launches the same kernels
  on persistent buffers in every pass, so a replay steers with the buffers' new values;
  allowed only with the switch ``cuda_graphs`` (``engine_kwargs(cuda_graphs=True)``),
  because no GPU has run it in vLLM yet (untested on GPU). The host steering is refused.
  torch.compile without CUDA graphs is fine (tested: vLLM's CPU default, Dynamo traced
  once with Inductor, and eager mode). :func:`cuda_graphs_allowed` tells a launcher
  whether to start vLLM with ``cudagraph_mode`` ``NONE``.
* chunked prefill with the host steering (it needs a gate request's whole prompt in one
  pass), or with more than one worker (tensor parallel: the re-run below would rest on the
  output rank's decisions, untested). With the graph steering and one worker (in the engine
  core's process, or vLLM's multiprocessing executor) chunked prefill is exact: the gate
  and language reads add up across chunks and decide in the pass holding the last prompt
  token, and a fired ``gate`` request whose action steers prompt tokens and whose prompt
  was split has its prompt run again (:mod:`.recompute`).
* prefix caching is allowed: each admitted request gets cache terms from its steering
  (:mod:`.cache`: the ordinary cache for unsteered and opener-only rows, a salt of the
  settings for rows that steer their prompt, no cache reads for ``gate`` rows).
* pipeline parallel: the gate block and the steered blocks may sit on different stages
  (the decision would have to cross stages). Require ``pipeline_parallel_size=1``.
* speculative decoding: draft tokens add rows that are later rejected. Not supported.
* the V2 model runner (GPU default in some set-ups) keeps another batch layout. Not supported.
* vLLM releases other than the tested line: the model runner's fields are private.

Tensor parallelism is allowed: decoder-layer outputs are full (all-reduced) on every rank,
so every rank reads the same gate state and makes the same decision without communication
(tested with two CPU ranks: ``tests/vllm_plugin/test_vllm_plain_server.py``).
"""

from __future__ import annotations

from typing import Any

from ...errors import SteeringConfigError
from .config import CONFIG_KEY, LOGITS_PROCESSOR, SLOTS_VERSION, STEERABLE_COMPILATION, \
    has_logits_processor, slot_options, wants_slots

SUPPORTED_VLLM = ("0.32.",)  # release lines whose model runner the plugin is tested on

# The engine arguments the plugin needs (pass them to vllm.LLM / AsyncEngineArgs).
# Chunked prefill and prefix caching stay at vLLM's defaults (exact: above).
ENGINE_KWARGS: dict[str, Any] = {
    "additional_config": {CONFIG_KEY: SLOTS_VERSION},
    "compilation_config": dict(STEERABLE_COMPILATION),
}


def problems(vllm_config: Any, version: str) -> list[str]:
    """Every reason the plugin cannot be exact under ``vllm_config`` (empty: fine)."""
    out: list[str] = []
    if not version.startswith(SUPPORTED_VLLM):
        out.append(f"vLLM {version} is not a tested release (tested: "
                   f"{', '.join(v + 'x' for v in SUPPORTED_VLLM)}); the plugin reads the model "
                   "runner's private batch state")
    if not wants_slots(vllm_config):
        out.append(f"the engine was built without lasa's steering slots (additional_config "
                   f"has no {CONFIG_KEY!r}): vLLM compiles the model at start, so steering "
                   "must be in it from the load; build it with lasa_vllm.engine_kwargs(), or "
                   "start a plain vLLM server with the flags `lasa vllm-args` prints "
                   f"(--additional-config '{{\"{CONFIG_KEY}\": {SLOTS_VERSION}}}' at least)")
    if not has_logits_processor(vllm_config):
        out.append("the plugin's logits processor is not loaded (it refuses bad lasa_* "
                   "settings at admission and forces the prefix/refuse openers); build the "
                   "engine with lasa_vllm.engine_kwargs() (--logits-processors "
                   f"{LOGITS_PROCESSOR})")
    try:
        graphs_ok = cuda_graphs_allowed(vllm_config)
    except SteeringConfigError as exc:
        out.append(str(exc))
        graphs_ok = False
    cudagraph = cudagraph_mode(vllm_config)
    if cudagraph != "NONE" and not graphs_ok:
        out.append(f"CUDA graphs are on (cudagraph_mode {cudagraph}): only the graph "
                   "steering replays inside them, and only behind its switch (untested on "
                   "GPU: engine_kwargs(cuda_graphs=True), additional_config "
                   f"{{\"{CONFIG_KEY}\": {{\"cuda_graphs\": true}}}}); else start vLLM with "
                   "cudagraph_mode NONE (compilation_config={'cudagraph_mode': 'NONE'}) or "
                   "enforce_eager=True")
    if getattr(vllm_config.scheduler_config, "enable_chunked_prefill", False):
        out += chunked_prefill_problems(vllm_config)
    pp = int(getattr(vllm_config.parallel_config, "pipeline_parallel_size", 1) or 1)
    if pp > 1:
        out.append(f"pipeline_parallel_size={pp}: the gate block and the steered blocks may "
                   "run on different stages; use tensor parallelism (pipeline_parallel_size=1)")
    if getattr(vllm_config, "speculative_config", None) is not None:
        out.append("speculative decoding is on: draft tokens would be steered and rejected; "
                   "turn it off")
    if bool(getattr(vllm_config, "use_v2_model_runner", False)):
        out.append("the V2 model runner is in use (another batch layout); set "
                   "VLLM_USE_V2_MODEL_RUNNER=0")
    return out


def chunked_prefill_problems(vllm_config: Any) -> list[str]:
    """Why chunked prefill cannot be exact in this engine (empty: it is)."""
    out: list[str] = []
    try:
        steering = slot_options(vllm_config).steering
    except SteeringConfigError:
        steering = "graph"  # the entry's own error is reported by cuda_graphs_allowed
    if steering != "graph":
        out.append("chunked prefill is on with the host steering, which needs a gate "
                   "request's whole prompt in one pass; use the graph steering (the "
                   "default) or start vLLM with enable_chunked_prefill=False "
                   "(--no-enable-chunked-prefill)")
    world = int(getattr(vllm_config.parallel_config, "world_size", 1) or 1)
    if world > 1:
        out.append(f"chunked prefill is on with {world} workers: a fired gate request whose "
                   "prompt was split is run again on the output rank's word, untested with "
                   "more than one worker; start vLLM with enable_chunked_prefill=False "
                   "(--no-enable-chunked-prefill) and max_num_batched_tokens >= "
                   "max_model_len")
    return out


def cudagraph_mode(vllm_config: Any) -> str:
    """vLLM's ``cudagraph_mode`` as a name (``NONE``, ``PIECEWISE``, ``FULL_AND_PIECEWISE``...)."""
    mode = getattr(vllm_config.compilation_config, "cudagraph_mode", None)
    name = getattr(mode, "name", None) or str(mode)
    return "NONE" if name in ("None", "NONE") or name.endswith(".NONE") else name


def cuda_graphs_allowed(vllm_config: Any) -> bool:
    """Whether the engine's entry lets the slots run inside CUDA graphs (the graph steering
    and the ``cuda_graphs`` switch); a launcher that gets False must start vLLM with
    ``cudagraph_mode`` ``NONE`` (or eager). Raises for an invalid entry."""
    opts = slot_options(vllm_config)
    return opts.cuda_graphs and opts.steering == "graph"


def check(vllm_config: Any, version: str) -> None:
    """Raise :class:`SteeringConfigError` listing every problem, or return."""
    found = problems(vllm_config, version)
    if found:
        raise SteeringConfigError("lasa steering cannot run exactly in this vLLM engine: "
                                  + "; ".join(found))
