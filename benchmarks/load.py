"""Time of a second ``load_model('smollm2-135m-instruct')``, i.e. from the converted cache.

Each repeat runs in a fresh process, so nothing is shared but the OS page cache. Three
figures per process, medians over repeats:

* ``load``: the ``load_model`` call itself, with ``lasa_steer`` and transformers' model and
  tokenizer classes already imported (what a program that uses transformers pays per load);
* ``load incl. transformers imports``: the same call in a process that has imported only
  ``lasa_steer`` (transformers imports its modeling code lazily inside the first call);
* ``cold process``: interpreter start to a loaded model, all imports included;
* ``again in-process``: a second ``load_model`` call in the same process.

    python benchmarks/load.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

PREIMPORT = ("import time, json, lasa_steer; {pre}; t2=time.perf_counter(); "
             "lasa_steer.load_model('smollm2-135m-instruct'); t3=time.perf_counter(); "
             "lasa_steer.load_model('smollm2-135m-instruct'); t4=time.perf_counter(); "
             "print(json.dumps(dict(load=t3-t2, again=t4-t3)))")
WARM = PREIMPORT.format(pre="from transformers import AutoModelForCausalLM, AutoTokenizer; "
                            "import transformers.models.llama.modeling_llama")
LAZY = PREIMPORT.format(pre="pass")


def _run(code: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def _cold() -> float:
    """Interpreter start to loaded model, measured from outside the process."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import lasa_steer; "
                    "lasa_steer.load_model('smollm2-135m-instruct')"], check=True,
                   capture_output=True)
    return time.perf_counter() - t


def _fmt(name: str, xs: list[float]) -> str:
    return (f"{name:<36} median {statistics.median(xs):.2f} s "
            f"(min {min(xs):.2f}, max {max(xs):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    _run(LAZY)  # converts once if the cache is empty, and warms the page cache
    warm, lazy, cold = [], [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all three
        warm.append(_run(WARM))
        lazy.append(_run(LAZY))
        cold.append(_cold())
    print(f"second load_model('smollm2-135m-instruct'), {args.repeats} fresh processes each:")
    print(_fmt("load", [r["load"] for r in warm]))
    print(_fmt("load incl. transformers imports", [r["load"] for r in lazy]))
    print(_fmt("cold process (python start to model)", cold))
    print(_fmt("again in-process", [r["again"] for r in warm]))


if __name__ == "__main__":
    main()
