"""Everything one server process holds: config, model, tokenizer, engine, vectors, worker."""

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

from .metrics import Metrics
from .scheduler import Scheduler
from .vectors import VectorRegistry

log = logging.getLogger("lasa.server")


def default_vector_dir() -> Path:
    """``vectors/`` of a source checkout, else ``./vectors``."""
    repo = Path(__file__).resolve().parents[1] / "vectors"
    return repo if repo.is_dir() else Path("vectors")


@dataclass
class ServerConfig:
    model: str = DEFAULT_MODEL
    vectors: Path | None = None
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


class Runtime:
    """Loads the model and vectors and starts the model worker."""

    def __init__(self, config: ServerConfig, model: Any = None, tokenizer: Any = None,
                 extra_vectors: dict[str, SteeringVector] | None = None):
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        if model is None:
            model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
        self.model, self.tok = model, tokenizer
        # the refusal openers of actions 'prefix'/'refuse', tokenised once
        self.openers = Openers.for_tokenizer(tokenizer, end_of_turn(model))
        self.model_name = config.served_model_name or getattr(
            model, "lasa_model_name", None) or os.path.basename(str(config.model).rstrip("/"))
        limit = getattr(model.config, "max_position_embeddings", None) or 2048
        self.context = min(limit, config.max_model_len) if config.max_model_len else limit
        self.vectors = VectorRegistry(model, config.vectors, extra_vectors)
        self.vectors.scan()
        names = self.vectors.names()
        if config.default_vector is not None:
            if config.default_vector not in names:
                raise LasaError(
                    f"--default-vector {config.default_vector!r}: no such vector fits the "
                    f"model in {config.vectors}; loaded: {names or 'none'}; skipped: "
                    f"{self.vectors.skipped or 'none'}")
            self.default_vector: str | None = config.default_vector
        elif self.model_name in names:
            self.default_vector = self.model_name
        else:
            self.default_vector = names[0] if names else None
        self.metrics = Metrics()
        self.engine = SteeringEngine(model)
        self.scheduler = Scheduler(model, tokenizer, self.engine, self.metrics,
                                   max_batch=config.max_batch,
                                   max_batch_tokens=config.max_batch_tokens)
        self.log_startup()

    def log_startup(self) -> None:
        c = self.config
        log.info("lasa serve: model %s (%s, %d blocks, context %d tokens, %s on %s)",
                 self.model_name, c.model, len(self.engine.layer_map.blocks), self.context,
                 next(self.model.parameters()).dtype, next(self.model.parameters()).device)
        log.info("vectors from %s: %s", c.vectors, ", ".join(self.vectors.names()) or "none")
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
        self.scheduler.close()
        self.engine.remove()
