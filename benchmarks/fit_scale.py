"""Peak memory and wall time of ``lasa fit`` on a random model of a large shape.

    python benchmarks/fit_scale.py [--hidden 1024 --layers 16 --intermediate 2816
        --vocab 32000] [--per-language 8] [--threads 2] [--modes whole,offload]

Writes a random Llama of the given shape (float32 safetensors, a word-level tokenizer) and
a synthetic harmful/harmless mixture (made-up words labelled en, de, sw) to a temporary folder,
then runs ``lasa fit`` on it once per mode in a fresh process and reports the process's
peak resident memory (``wait4`` rusage, so model creation is not counted) and wall time:

* ``whole``: the model loaded whole on the CPU (``--device cpu``);
* ``offload``: ``--device-map`` with the second half of the blocks and the LM head on
  ``disk`` (``--offload-folder``), the rest on the CPU: what a model larger than memory
  does.

The weights are random, so the fit's figures (gate quality, refusal rate) mean nothing;
the time and memory do, as they depend on the shape only. Prints one JSON line per mode.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = {"en": "alpha beta gamma", "de": "delta epsilon zeta", "sw": "eta theta iota"}
TOPICS = {"harmful": "kill bomb poison weapon", "harmless": "bake cake bread garden"}


def write_model(folder: Path, args: argparse.Namespace) -> int:
    """A random Llama of the shape asked for, and its tokenizer; returns its parameters."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    config = tf.LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                            num_hidden_layers=args.layers, intermediate_size=args.intermediate,
                            num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                            max_position_embeddings=2048, pad_token_id=0, bos_token_id=1,
                            eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    words = sorted({w for t in (*WORDS.values(), *TOPICS.values()) for w in t.split()})
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({w: i + 4 for i, w in enumerate(words + [str(n) for n in range(1000)])})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                               eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def write_data(path: Path, per_language: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = []
    for lang, words in WORDS.items():
        for i in range(per_language):
            tail = " ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(4, 24)))
            rows.append({"text": f"{words} {TOPICS['harmful']} {tail}", "label": "harmful",
                         "lang": lang, "group": f"h{i}"})
            rows.append({"text": f"{words} {TOPICS['harmless']} {tail}", "label": "harmless",
                         "lang": lang})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def offload_map(layers: int) -> dict[str, str]:
    half = layers // 2
    out = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
           "lm_head": "disk"}
    out.update({f"model.layers.{i}": "cpu" if i < half else "disk" for i in range(layers)})
    return out


def run_fit(argv: list[str]) -> tuple[float, int, int]:
    """Run ``lasa fit`` in a fresh process: (wall s, peak RSS bytes, exit status)."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "lasa_steer.cli", "fit", *argv])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t, usage.ru_maxrss * 1024, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--per-language", type=int, default=8,
                    help="train rows per language and label (validation: the same)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="whole,offload")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lasa-fit-scale-") as tmp:
        root = Path(tmp)
        folder = root / "model"
        # in a child process, so the parent (whose children's peaks are read) stays small
        code = ("import sys, argparse, json; sys.path.insert(0, %r); import fit_scale as f; "
                "print(f.write_model(__import__('pathlib').Path(%r), argparse.Namespace(**%s)))"
                % (str(Path(__file__).parent), str(folder), json.dumps(vars(args))))
        params = int(subprocess.run([sys.executable, "-c", code], check=True,
                                    capture_output=True, text=True).stdout.split()[-1])
        train = write_data(root / "train.jsonl", args.per_language, 0)
        val = write_data(root / "val.jsonl", args.per_language, 1)
        weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        common = [str(folder), "--data", str(train), "--val", str(val), "--identify", "none",
                  "--dtype", "float32", "--capture-dtype", "model", "--threads",
                  str(args.threads), "--no-progress", "-o", str(root / "v.safetensors")]
        for mode in args.modes.split(","):
            place = (["--device", "cpu"] if mode == "whole" else
                     ["--device-map", json.dumps(offload_map(args.layers)),
                      "--offload-folder", str(root / "offload")])
            wall, peak, rc = run_fit(common + place)
            print(json.dumps({"mode": mode, "params": params, "weights_bytes": weights,
                              "shape": {k: getattr(args, k) for k in
                                        ("hidden", "layers", "intermediate", "heads",
                                         "kv_heads", "vocab")},
                              "train_rows": 6 * args.per_language, "threads": args.threads,
                              "exit": rc, "wall_s": round(wall, 1),
                              "peak_rss_gib": round(peak / 2**30, 3)}), flush=True)


if __name__ == "__main__":
    main()
