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
    max_batch: int = 32
    max_n: int = 16
    max_batch_tokens: int = 2048  # tokens one worker iteration runs (decode rows + prefill)
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
                          max_batch_tokens=config.max_batch_tokens)

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
        self.vectors = VectorRegistry(None, config.vectors, extra_vectors, check=served.fits,
                                      shipped=SHIPPED_DIR if config.shipped_vectors else None)
        try:
            self._choose_default_vector()
        except BaseException:
            served.close()
            raise
        self.log_startup()

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
            log.warning("no vector fits this model: steering is off, /v1/moderations unavailable")
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
        self.served.close()
