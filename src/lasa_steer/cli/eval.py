"""``lasa eval``: attack success, over-refusal, gate fire rate and utility, before vs after
steering, per benchmark and language (see :mod:`lasa_steer.eval.run` for definitions)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..datafiles import default_data_dir
from ..eval.benches import BENCHES
from ..model.embedded import DEFAULT_MODEL
from ..types import ACTIONS, MODES

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a vector: attack success and over-refusal before/after",
        description="Generate every benchmark prompt without and with steering (same "
        "decoding), judge both, and write results.md/.json/.png and completions.jsonl to "
        "--out. Finished generations are cached in --out/cache.jsonl, so a rerun resumes.")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="model name, folder or .gguf (default: the embedded model)")
    p.add_argument("--vector", required=True, help="vector file (.safetensors)")
    p.add_argument("--bench", action="append", required=True, metavar="NAME[:PATH]",
                   help=f"benchmark, repeatable: one of {', '.join(BENCHES)}; without PATH "
                   "the file under --data is used")
    p.add_argument("--data", default=None,
                   help="shared data folder (default: $LASA_DATA or ../shared/data)")
    p.add_argument("--languages", nargs="+", default=None, help="keep only these languages")
    p.add_argument("--limit", type=int, default=None,
                   help="at most N prompts per benchmark and language (seeded sample)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cache", default=None, help="generation cache (default: OUT/cache.jsonl)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--strength", type=float, default=None, help="default: the vector's")
    p.add_argument("--mode", choices=[m for m in MODES if m != "off"], default="gate")
    p.add_argument("--action", choices=ACTIONS, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--judge-url", default=None,
                   help="OpenAI-compatible endpoint for the judge (default: pattern judge)")
    p.add_argument("--judge-model", default=None, help="model name at --judge-url")
    p.add_argument("--judge-timeout", type=float, default=30.0)
    p.add_argument("--judge-retries", type=int, default=2)
    p.add_argument("--no-reuse", action="store_true",
                   help="generate the steered pass for every row, even where the gate does "
                   "not fire (default: such rows reuse the identical unsteered completion)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest on a busy shared CPU)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def make_judge(args: argparse.Namespace):
    from ..errors import SteeringConfigError
    from ..eval.judges.pattern import PatternJudge
    from ..eval.judges.http import HTTPJudge

    if args.judge_url:
        if not args.judge_model:
            raise SteeringConfigError("--judge-url needs --judge-model")
        return HTTPJudge(args.judge_url, args.judge_model, timeout=args.judge_timeout,
                         retries=args.judge_retries)
    return PatternJudge()


def find_data_dir(path: str | None) -> Path:
    """``--data``, else the shared data folder (``$LASA_DATA`` or ``../shared/data``; only
    used for benches named without a path)."""
    if path:
        return Path(path)
    return default_data_dir(required=False) or Path.cwd() / ".." / "shared" / "data"


def run(args: argparse.Namespace) -> int:
    from ..eval.cache import GenerationCache
    from ..eval.benches import load_benches
    from ..eval.generator import Decoding, HFGenerator
    from ..eval.report import write_all
    from ..eval.run import run_eval
    from ..model.loading import load_model
    from ..vector.file import SteeringVector

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    data_dir = find_data_dir(args.data)
    items = load_benches(args.bench, data_dir, args.languages, args.limit, args.seed)
    judge = make_judge(args)
    vector = SteeringVector.load(args.vector)
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    vector.check_model(model)
    decoding = Decoding(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                        strength=args.strength, mode=args.mode, action=args.action)
    out = Path(args.out)
    cache = GenerationCache(args.cache or out / "cache.jsonl")
    log.info("%d prompts x 2 passes; %d generations already cached", len(items), len(cache))
    t0 = time.time()
    records, summary = run_eval(items, HFGenerator(model, tok, vector, decoding,
                                                     reuse_unfired=not args.no_reuse,
                                                     batch_size=args.batch_size), judge,
                                cache, args.batch_size, progress=not args.no_progress)
    meta = {"model": args.model, "vector": args.vector, "benches": " ".join(args.bench),
            "languages": " ".join(args.languages) if args.languages else "all",
            "limit per language": args.limit, "judge": getattr(judge, "name", "?") +
            (f" ({args.judge_model} at {args.judge_url})" if args.judge_url else ""),
            "decoding": f"{'sampled' if args.sample else 'greedy'}, max_new_tokens "
            f"{args.max_new_tokens}", "steering": f"mode {args.mode}, action "
            f"{args.action or vector.default_action}, strength "
            f"{args.strength if args.strength is not None else vector.default_strength:.4g}",
            "seconds": round(time.time() - t0, 1)}
    paths = write_all(out, records, summary, meta)
    print((out / "results.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
