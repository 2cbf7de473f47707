"""``lasa serve`` (registered through the ``lasa_steer.commands`` entry point)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from lasa_steer.model.embedded import DEFAULT_MODEL
from lasa_steer.types import MODES, REQUEST_ACTIONS

from .runtime import ServerConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible steering server",
                       description="Serve a model with per-request steering over the OpenAI "
                       "API (chat, completions, moderations).")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                   help="hf: the transformers scheduler (default); vllm: vLLM's AsyncLLM with "
                   "the lasa plugin (the `vllm` extra; make setup-vllm)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"hub id, local folder, .gguf file or embedded name (default {DEFAULT_MODEL})")
    p.add_argument("--vectors", type=Path, default=None,
                   help="folder of vector files; requests name them by file stem. They are "
                   "served beside the shipped vectors; a file named like a shipped one "
                   "replaces it")
    p.add_argument("--no-shipped-vectors", dest="shipped_vectors", action="store_false",
                   help="serve only --vectors' files, not the vectors shipped in the package")
    p.add_argument("--allow-unsteered", action="store_true",
                   help="start even when no vector fits the model, serving without steering "
                   "(/health and /v1/models say steering is off); default: refuse to start")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("LASA_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default $LASA_API_KEY)")
    p.add_argument("--admin-key", default=os.environ.get("LASA_ADMIN_KEY"),
                   help="key for loading vectors at run time (default: the API key; "
                   "without either, admin actions are off)")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients send (default: the model's name)")
    p.add_argument("--default-vector", default=None,
                   help="vector used when a request names none (default: the one named "
                   "after the model, else the first that fits)")
    p.add_argument("--mode", dest="default_mode", choices=MODES,
                   default="gate", help="default steering mode (default gate)")
    p.add_argument("--action", dest="default_action",
                   choices=REQUEST_ACTIONS, default=None,
                   help="default action (default: the vector file's)")
    p.add_argument("--strength", dest="default_strength", type=float, default=None,
                   help="default strength (default: the vector file's)")
    p.add_argument("--operating-point", dest="default_operating_point", default=None,
                   metavar="NAME",
                   help="the gates' default operating point, e.g. recall (default: each "
                        "vector file's, no-harm for the shipped one); a request may name "
                        "another in steering.operating_point")
    p.add_argument("--max-batch", type=int, default=32,
                   help="rows decoded together (default 32; vLLM: max_num_seqs)")
    p.add_argument("--max-n", type=int, default=16, help="largest n per request (default 16)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20,
                   help="request body limit in bytes (default 1 MiB)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="context window in tokens (default: the model's; vLLM: max_model_len)")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="longest prompt (or moderation input) in tokens; longer is a 400 "
                   "(default: the context)")
    p.add_argument("--max-batch-tokens", type=int, default=2048,
                   help="tokens one model step may run: decode rows plus prompt prefill; "
                   "longer prompts are prefilled in chunks between decode steps (default 2048; "
                   "vLLM: max_num_batched_tokens)")
    p.add_argument("--no-chunked-prefill", action="store_true",
                   help="vLLM engine: prefill every prompt in one step (max_num_batched_tokens "
                   "at least the context), as before chunked prefill was exact")
    p.add_argument("--no-prefix-caching", action="store_true",
                   help="vLLM engine: turn vLLM's prefix caching off")
    p.add_argument("--kv-budget", type=_bytes, default=None, metavar="SIZE",
                   help="KV-cache bytes the running requests may reserve (e.g. 8GiB); each "
                   "row reserves (prompt + max_tokens) tokens, a request waits while it does "
                   "not fit and is a 400 when it never can (default: 90%% of free CUDA "
                   "memory, or half the available host memory; HF engine only)")
    p.add_argument("--max-moderation-inputs", type=int, default=64,
                   help="most texts in one /v1/moderations request (default 64)")
    p.add_argument("--default-max-tokens", type=int, default=512,
                   help="max_tokens when a request gives none (default 512)")
    p.add_argument("--max-tokens-limit", type=int, default=None,
                   help="cap every request's max_tokens at this (default: the context)")
    p.add_argument("--kv-space", type=float, default=None, metavar="GIB",
                   help="vLLM: KV cache memory in GiB (kv_cache_memory_bytes; wins over "
                   "VLLM_CPU_KVCACHE_SPACE). Default on the CPU: VLLM_CPU_KVCACHE_SPACE if set, "
                   "else --max-batch x context x the model's KV bytes per token, at most 3 GiB "
                   "and a quarter of the machine's memory; on a GPU: vLLM's own")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default auto)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1 (default: cuda if present; refused with vLLM)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (refused with vLLM: VLLM_CPU_OMP_THREADS_BIND)")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        model=args.model, vectors=args.vectors, shipped_vectors=args.shipped_vectors,
        host=args.host,
        port=args.port, api_key=args.api_key or None, admin_key=args.admin_key or None,
        served_model_name=args.served_model_name, default_vector=args.default_vector,
        default_mode=args.default_mode, default_action=args.default_action,
        default_strength=args.default_strength,
        default_operating_point=args.default_operating_point,
        max_batch=args.max_batch, max_n=args.max_n, max_body_bytes=args.max_body_bytes,
        max_model_len=args.max_model_len, default_max_tokens=args.default_max_tokens,
        max_tokens_limit=args.max_tokens_limit, max_prompt_tokens=args.max_prompt_tokens,
        max_batch_tokens=args.max_batch_tokens, kv_budget=args.kv_budget,
        max_moderation_inputs=args.max_moderation_inputs,
        dtype=args.dtype, device=args.device, threads=args.threads, engine=args.engine,
        allow_unsteered=args.allow_unsteered, kv_space=args.kv_space,
        chunked_prefill=not args.no_chunked_prefill, prefix_caching=not args.no_prefix_caching)


ENGINE_DEAD_EXIT = 3  # the exit status when the engine died (a supervisor restarts)


def _bytes(text: str) -> int:
    from .budget import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def run(args: argparse.Namespace) -> int:
    from .lifecycle import ServerProcess
    from .routes import create_app
    from .runtime import Runtime

    logging.getLogger().setLevel(args.log_level.upper())
    logging.getLogger("lasa.server").setLevel(args.log_level.upper())
    runtime = Runtime(config_from_args(args))
    app = create_app(runtime)
    logging.getLogger("lasa.server").info("listening on http://%s:%d (OpenAI base URL "
                                          "http://%s:%d/v1)", args.host, args.port,
                                          args.host, args.port)
    server = ServerProcess(app, runtime, host=args.host, port=args.port,
                           log_level=args.log_level)
    server.run()
    return ENGINE_DEAD_EXIT if server.engine_died else 0
