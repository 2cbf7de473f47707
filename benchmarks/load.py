"""Time of a second ``load_model('smollm2-135m-instruct')`` (from the converted cache), in a
fresh process each repeat so nothing is shared: median of repeats, import time excluded.

    python benchmarks/load.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CODE = ("import time, lasa_steer; t=time.perf_counter(); "
        "lasa_steer.load_model('smollm2-135m-instruct'); print(time.perf_counter()-t)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    subprocess.run([sys.executable, "-c", CODE], check=True, capture_output=True)  # converts once
    times = [float(subprocess.run([sys.executable, "-c", CODE], check=True, capture_output=True,
                                  text=True).stdout.strip().splitlines()[-1])
             for _ in range(args.repeats)]
    print(f"second load_model: median {statistics.median(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f}, {args.repeats} fresh processes)")


if __name__ == "__main__":
    main()
