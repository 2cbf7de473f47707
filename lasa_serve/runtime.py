"""Everything one server process holds: config, tokenizer, vectors, metrics and the engine
(:class:`~lasa_serve.backend.Backend`: the HF scheduler, or vLLM with ``engine='vllm'``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lasa_steer import LasaError, SteeringEngine, SteeringVector, load_model
from lasa_steer.model.embedded import DEFAULT_MODEL
from lasa_steer.steering.api import end_of_turn
from lasa_steer.steering.openers import Openers
from lasa_steer.vector.shipped import SHIPPED_DIR

from .backend import Served
from .metrics import Metrics
from .scheduler import Scheduler
from .vectors import VectorRegistry

log = logging.getLogger("lasa.server")


def no_vector_message(model_name: str, config: "ServerConfig", files: dict[str, Path],
                      skipped: dict[str, str]) -> str:
    """Why no vector serves the model: where vectors were looked for, each file's reason."""
    places = ([str(SHIPPED_DIR) + " (shipped)"] if config.shipped_vectors else []) + \
        ([str(config.vectors)] if config.vectors is not None else [])
    where = " and ".join(places) or "nowhere (no --vectors folder, shipped vectors off)"
    if not files:
        why = f"no .safetensors file in {where}"
    else:
        why = f"every vector file in {where} was rejected: " + "; ".join(
            f"{files[name]}: {skipped.get(name, 'not loaded')}"
            for name in sorted(files))
    source = "" if str(config.model) == model_name else f" ({config.model})"
    return (f"no steering vector fits the served model {model_name}{source}: {why}. "
            "Refusing to serve it unsteered: fit a vector for this model (lasa fit), point "
            "--vectors at a folder that holds one, or start with --allow-unsteered to serve "
            "without steering")


@dataclass
class ServerConfig:
    model: str = DEFAULT_MODEL
    vectors: Path | None = None  # --vectors: adds vectors, or replaces shipped ones by name
    shipped_vectors: bool = False  # also serve the package's vectors (lasa serve's default)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    admin_key: str | None = None
    served_model_name: str | None = None
    default_vector: str | None = None
    default_mode: str = "gate"
    default_action: str | None = None  # None: the vector file's default
    default_strength: float | None = None  # None: the vector file's default
    default_operating_point: str | None = None  # None: the vector file's default point
    max_batch: int = 32
    max_n: int = 16
    max_batch_tokens: int = 2048  # tokens one worker iteration runs (decode rows + prefill)
    kv_budget: int | None = None  # KV-cache bytes (HF engine); None: from free memory
    max_prompt_tokens: int | None = None  # None: the context less one token
    max_body_bytes: int = 1 << 20
    max_model_len: int | None = None
    default_max_tokens: int = 512
    max_tokens_limit: int | None = None  # hard cap on any request's max_tokens
    max_moderation_inputs: int = 64
    dtype: str | None = None
    device: str | None = None
    threads: int | None = None
    engine: str = "hf"  # or "vllm" (lasa_serve.vllm_backend)
    # serve without steering when no vector fits the model (default: refuse to start)
    allow_unsteered: bool = False
    kv_space: float | None = None  # vLLM's KV cache in GiB (None: lasa_serve.kv_space)
    chunked_prefill: bool = True  # vLLM: prompts over max_batch_tokens run in chunks
    prefix_caching: bool = True  # vLLM: shared prompt prefixes reuse KV (lasa_steer...cache)


def start_hf(config: ServerConfig, metrics: Metrics, model: Any = None,
             tokenizer: Any = None) -> Served:
    """The HF engine: a transformers model, its :class:`SteeringEngine` and the scheduler's
    worker thread."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if model is None:
        model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    engine = SteeringEngine(model)
    scheduler = Scheduler(model, tokenizer, engine, metrics, max_batch=config.max_batch,
                          max_batch_tokens=config.max_batch_tokens,
                          kv_budget=config.kv_budget)

    def close() -> None:
        scheduler.close()
        engine.remove()

    param = next(model.parameters())
    return Served(
        backend=scheduler, tokenizer=tokenizer,
        name=getattr(model, "lasa_model_name", None) or os.path.basename(
            str(config.model).rstrip("/")),
        context=getattr(model.config, "max_position_embeddings", None) or 2048,
        vocab_size=int(getattr(model.config, "vocab_size", 0) or len(tokenizer)),
        end_of_turn=end_of_turn(model),
        fits=lambda name, path, vector: vector.check_model(model),
        description=f"{len(engine.layer_map.blocks)} blocks, {param.dtype} on {param.device}, "
                    "HF engine",
        close=close)


class Runtime:
    """Starts the engine, loads the vectors that fit its model, holds the shared state."""

    def __init__(self, config: ServerConfig, model: Any = None, tokenizer: Any = None,
                 extra_vectors: dict[str, SteeringVector] | None = None):
        self.config = config
        self.metrics = Metrics()
        self._closed = False
        # the engine's check (served.fits) applies once the engine runs
        self.vectors = VectorRegistry(None, config.vectors, extra_vectors,
                                      check=lambda *a: self.served.fits(*a),
                                      shipped=SHIPPED_DIR if config.shipped_vectors else None)
        if config.vectors is not None and not config.vectors.is_dir():
            raise LasaError(f"--vectors {config.vectors}: no such folder")
        if not (config.allow_unsteered or extra_vectors or self.vectors.files()):
            # nothing could fit: say so before loading the model (minutes with vLLM)
            raise LasaError(no_vector_message(config.served_model_name or str(config.model),
                                              config, {}, {}))
        if config.engine == "vllm":
            if model is not None or extra_vectors:
                raise LasaError("engine 'vllm' loads its model and vectors from --model and "
                                "--vectors (no in-memory model or vectors)")
            from .vllm_backend import start_vllm  # vLLM is imported only here

            self.served = start_vllm(config, self.metrics)
        elif config.engine == "hf":
            self.served = start_hf(config, self.metrics, model, tokenizer)
        else:
            raise LasaError(f"--engine {config.engine!r}: use 'hf' or 'vllm'")
        served = self.served
        self.backend = served.backend
        self.tok = served.tokenizer
        self.vocab_size = served.vocab_size
        # the refusal openers of actions 'prefix'/'refuse', tokenised once
        self.openers = Openers.for_tokenizer(self.tok, served.end_of_turn)
        self.model_name = config.served_model_name or served.name
        limit = served.context
        self.context = min(limit, config.max_model_len) if config.max_model_len else limit
        try:
            self._choose_default_vector()
            if self.default_vector is None and not config.allow_unsteered:
                raise LasaError(no_vector_message(self.model_name, config,
                                                  self.vectors.files(), self.vectors.skipped))
        except BaseException:
            served.close()
            raise
        self.log_startup()

    @property
    def steering_on(self) -> bool:
        """Whether requests can be steered: a vector fits the model (without one, the
        server only starts with ``allow_unsteered``)."""
        return self.default_vector is not None

    def _choose_default_vector(self) -> None:
        config = self.config
        self.vectors.scan()
        names = self.vectors.names()
        if config.default_vector is not None:
            if config.default_vector not in names:
                raise LasaError(
                    f"--default-vector {config.default_vector!r}: no such vector fits the "
                    f"model in {self.vector_source()}; loaded: {names or 'none'}; skipped: "
                    f"{self.vectors.skipped or 'none'}")
            self.default_vector: str | None = config.default_vector
        elif self.model_name in names:
            self.default_vector = self.model_name
        else:
            self.default_vector = names[0] if names else None

    def vector_source(self) -> str:
        places = [str(p) for p in (self.vectors.shipped, self.config.vectors) if p is not None]
        return " + ".join(places) or "no folder"

    def log_startup(self) -> None:
        c = self.config
        log.info("lasa serve: model %s (%s, %s, context %d tokens)", self.model_name, c.model,
                 self.served.description, self.context)
        log.info("vectors from %s: %s", self.vector_source(), ", ".join(self.vectors.names()) or "none")
        for name, why in self.vectors.skipped.items():
            log.info("  skipped %s: %s", name, why)
        if self.default_vector is None:
            log.warning("no vector fits this model: steering is OFF (--allow-unsteered); "
                        "requests that ask for steering are refused, /v1/moderations "
                        "unavailable")
            return
        v = self.vectors.get(self.default_vector)
        assert v is not None
        gate = (f"gate at block {v.gate.layer} ({v.gate.site}, {v.gate.pooling} pooling), "
                f"threshold {v.gate.threshold:.4g}" if v.gate else "no gate")
        log.info("default vector %s: %s; steers blocks %s (%s); action %s, strength %s, "
                 "mode %s", self.default_vector, gate, v.layers(), v.site,
                 c.default_action or v.default_action,
                 c.default_strength if c.default_strength is not None else v.default_strength,
                 c.default_mode)

    def close(self) -> None:
        """Stop the engine (idempotent: the app's shutdown and the command both call it)."""
        if not self._closed:
            self._closed = True
            self.served.close()
