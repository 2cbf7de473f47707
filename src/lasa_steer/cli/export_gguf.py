"""``lasa export-gguf VECTOR OUT.gguf``: write an additive direction as a llama.cpp control
vector (for llama.cpp ``--control-vector`` and repeng)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-gguf", help="export an additive direction as a llama.cpp "
                                           "control vector (.gguf)")
    p.add_argument("vector", help="lasa vector file (.safetensors)")
    p.add_argument("out", help="output .gguf path")
    p.add_argument("--direction", help="direction name (default: the file's default)")
    p.add_argument("--strength", type=float, help="baked-in strength (default: the file's)")
    p.add_argument("--layers", help="comma-separated 0-based blocks (default: all of the "
                                    "direction's)")
    p.add_argument("--action", help="action to export (only 'add' is expressible)")
    p.add_argument("--ungated", action="store_true",
                   help="export a gated vector's direction; it will then steer EVERY prompt")
    p.add_argument("--model-hint", help="controlvector.model_hint (default from the model)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..vector.gguf import export_gguf

    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    out = export_gguf(args.vector, args.out, args.direction, args.strength, layers,
                      args.action, args.ungated, args.model_hint)
    print(f"wrote {out}")
    return 0
