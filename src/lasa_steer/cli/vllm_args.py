"""``lasa vllm-args``: the flags that make a plain vLLM OpenAI server serve lasa vectors.

Prints them on one line, quoted for the shell (hence ``eval``)::

    eval python -m vllm.entrypoints.openai.api_server --model MODEL "$(lasa vllm-args \\
        --vector smollm2=smollm2-135m-instruct --default-vector smollm2 \\
        --max-model-len 4096)"

Each file is read first (a corrupt or unreadable one stops here, not in vLLM's workers);
whether it fits the served model is checked by the workers at start. Needs no vLLM.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..engines.vllm.config import server_args
from ..errors import SteeringConfigError
from ..types import ACTIONS, MODES
from ..vector.file import SteeringVector


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vllm-args", help="print the vLLM server flags that serve lasa vectors (eval "
                       "python -m vllm.entrypoints.openai.api_server ... \"$(lasa vllm-args "
                       "...)\")")
    p.add_argument("--vector", action="append", default=[], metavar="NAME=FILE",
                   help="a vector file and the name requests use for it (lasa_vector); "
                   "repeatable")
    p.add_argument("--vectors", metavar="DIR",
                   help="every *.safetensors in DIR, named by file stem (as lasa serve does)")
    p.add_argument("--default-vector", metavar="NAME",
                   help="the vector of a request without lasa_* keys (default: unsteered)")
    p.add_argument("--default-mode", choices=MODES, default="gate")
    p.add_argument("--default-action", choices=ACTIONS)
    p.add_argument("--default-strength", type=float)
    p.add_argument("--max-model-len", type=int, metavar="N",
                   help="also pass --max-model-len N and the token budget it needs "
                   "(--max-num-batched-tokens N: prompts are never chunked)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="skip the config-fingerprint check (hidden size and block count "
                   "are still checked)")
    p.set_defaults(func=run)


def vectors_of(pairs: list[str], folder: str | None) -> dict[str, Path]:
    """Name -> file from ``--vector NAME=FILE`` and ``--vectors DIR``; every file read."""
    out: dict[str, Path] = {}
    if folder is not None:
        files = sorted(Path(folder).glob("*.safetensors"))
        if not files:
            raise SteeringConfigError(f"--vectors {folder}: no .safetensors files there")
        out.update({f.stem: f for f in files})
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SteeringConfigError(f"--vector {pair!r}: expected NAME=FILE")
        out[name] = Path(path)
    if not out:
        raise SteeringConfigError("give at least one --vector NAME=FILE or --vectors DIR")
    for path in out.values():
        SteeringVector.load(path)  # raises a clear error for a missing or corrupt file
    return out


def run(args: argparse.Namespace) -> int:
    vectors = vectors_of(args.vector, args.vectors)
    flags = server_args(vectors, args.default_vector, args.default_mode, args.default_action,
                        args.default_strength, args.allow_mismatch, args.max_model_len)
    print(shlex.join(flags))
    return 0
