"""``lasa import-gguf IN.gguf MODEL -o OUT.safetensors``: turn a llama.cpp control vector
into a lasa vector file for MODEL (ungated, strength baked in)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-gguf", help="convert a llama.cpp control vector (.gguf) into a "
                                           "lasa vector file for a model")
    p.add_argument("gguf", help="control vector file (general.architecture = controlvector)")
    p.add_argument("model", help="the model it is for: name, folder, hub id or .gguf file "
                                 "(its hidden size and block count are checked)")
    p.add_argument("-o", "--out", required=True, help="output vector file (.safetensors)")
    p.add_argument("--name", default="control", help="direction name (default %(default)s)")
    p.add_argument("--blocks", help="dotted path of the decoder block list, for architectures "
                                    "the layer map does not know")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..vector.gguf import import_gguf
    from ..model.loading import load_model

    model, _ = load_model(args.model)
    vec = import_gguf(args.gguf, model, args.name, args.blocks)
    out = vec.save(args.out)
    blocks = ", ".join(str(b) for b in vec.layers())
    print(f"wrote {out}: direction {args.name!r} added to the output of block(s) {blocks} "
          "(resid_post), strength 1 = as in the control vector, no gate (steer with "
          "mode='always')")
    return 0
