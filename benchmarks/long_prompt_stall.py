"""Long-prompt stall: how long running streams wait for tokens while a long prompt is
prefilled, with vLLM's chunked prefill on and off.

For each server (``--servers``: ``lasa-vllm`` = ``lasa serve --engine vllm``, steering
gate + add; ``vllm`` = vanilla vLLM's OpenAI server; each with chunked prefill on, and with
``--no-chunked-prefill`` / ``--no-enable-chunked-prefill`` as ``...-nochunk``), one server at
a time (started, measured, stopped: two compiled vLLM servers fit beside each other, four do
not), each repeat:

1. opens ``--streams`` streaming chat requests (greedy, ``--stream-tokens`` new tokens,
   open-ended prompts) and waits until every one has streamed ``--warm-tokens`` chunks;
2. sends one prompt of ``--long-tokens`` tokens (harmless text, a different first line each
   repeat so that no repeat finds it in the prefix cache) with ``max_tokens=1``, and takes
   the time to its response as its prefill time;
3. collects, from every running stream, the gaps between consecutive content chunks that
   overlap the long request's [sent, answered] window (a gap that straddles the window's
   start or end counts whole), and their largest, p50 and p95; and the p50 gap of the same
   streams before the long prompt was sent (the ordinary decode step).

It reports the median over ``--repeats`` of each figure. With chunked prefill the long
prompt is prefilled ``--max-batch-tokens`` tokens per step beside the running decodes, so
the largest gap should be about one chunk's time; without it, the running streams wait for
the whole prefill. Both servers get the same ``max_num_seqs``, ``max_model_len`` and token
budget (without chunked prefill the budget is raised to the context, as ``lasa serve``
does); prefix caching stays on (vLLM's default). The machine is shared: the load average is
printed with every repeat and stored. Usage::

    VLLM_CPU_KVCACHE_SPACE=2 python benchmarks/long_prompt_stall.py --repeats 3 \\
        --json out/stall.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import (MODEL, PROMPTS, REPO, Server, free_port, lasa_vllm_cmd,  # noqa: E402
                   vector_folder, vllm_cmd)

SERVERS = ("lasa-vllm", "lasa-vllm-nochunk", "vllm", "vllm-nochunk")
STEER = {"steering": {"mode": "gate", "action": "add"}}
# harmless filler for the long prompt (SmolLM2's tokenizer: ~70 tokens a paragraph)
PARAGRAPH = ("Paragraph {i}. The village market opens at dawn. Farmers bring baskets of "
             "apples, pears and fresh bread; children run between the stalls while the baker "
             "sings an old song about the river, the mill and the long summer evenings. ")


def prompt_tokens(tok, text: str) -> int:
    """Tokens of ``text`` as one user message in the model's chat prompt."""
    chat = tok.apply_chat_template([{"role": "user", "content": text}],
                                   add_generation_prompt=True, tokenize=False)
    return len(tok(chat, add_special_tokens=False)["input_ids"])


def long_prompt(tok, n_tokens: int, tag: str) -> str:
    """A harmless user message whose chat prompt holds at least ``n_tokens`` tokens."""
    head = f"Run {tag}. Read these notes and then say OK.\n\n"
    text, i = head, 0
    while True:
        have = prompt_tokens(tok, text)
        if have >= n_tokens:
            return text
        # about 70 tokens a paragraph: add what is missing in one go
        for _ in range(max(1, (n_tokens - have) // 80)):
            text += PARAGRAPH.format(i=i)
            i += 1


class Stream(threading.Thread):
    """One streaming chat request; the arrival time of each content chunk."""

    def __init__(self, base: str, prompt: str, max_tokens: int, extra: dict | None):
        super().__init__(daemon=True)
        self.body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
                     "max_tokens": max_tokens, "temperature": 0, "stream": True,
                     **(extra or {})}
        self.base = base
        self.times: list[float] = []
        self.error: str | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.base + "/v1/chat/completions", json=self.body,
                              timeout=900) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    choices = chunk.get("choices") or []
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        self.times.append(time.perf_counter())
        except Exception as exc:  # noqa: BLE001 - reported with the repeat
            self.error = f"{type(exc).__name__}: {exc}"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def one_repeat(srv: Server, tok, args, rep: int) -> dict:
    streams = [Stream(srv.base, PROMPTS[(rep * args.streams + i) % len(PROMPTS)],
                      args.stream_tokens, srv.extra) for i in range(args.streams)]
    prompt = long_prompt(tok, args.long_tokens, f"{srv.key}-{rep}-{time.time_ns()}")
    n_long = prompt_tokens(tok, prompt)
    for s in streams:
        s.start()
    deadline = time.time() + 300
    while any(len(s.times) < args.warm_tokens and s.is_alive() for s in streams):
        if time.time() > deadline:
            raise RuntimeError("streams did not start within 300 s")
        time.sleep(0.02)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1, "temperature": 0, **(srv.extra or {})}
    r = httpx.post(srv.base + "/v1/chat/completions", json=body, timeout=900)
    t1 = time.perf_counter()
    r.raise_for_status()
    for s in streams:
        s.join()
    errors = [s.error for s in streams if s.error]
    if errors:
        raise RuntimeError(f"stream failed: {errors[0]}")
    during, before, spans = [], [], []
    for k, s in enumerate(streams):
        for a, b in zip(s.times, s.times[1:]):
            if b > t0 and a < t1:
                during.append(b - a)
                spans.append((k, a, b))
            elif b <= t0:
                before.append(b - a)
    # the stalls: gaps over 4x the ordinary step (before the long prompt), from / to (s
    # after the long request was sent), per stream
    step = statistics.median(before) if before else 0.1
    long_gaps = [[k, round(a - t0, 2), round(b - t0, 2)] for k, a, b in spans
                 if b - a > 4 * step]
    if not during:
        raise RuntimeError("no stream was running while the long prompt was prefilled "
                           "(raise --stream-tokens)")
    row = {"repeat": rep, "load_avg_1m": round(load, 2), "long_prompt_tokens": n_long,
           "long_prefill_s": round(t1 - t0, 3), "max_gap_s": round(max(during), 3),
           "p50_gap_s": round(statistics.median(during), 4),
           "p95_gap_s": round(pct(during, 0.95), 3),
           "gaps_during": len(during),
           "long_gaps": long_gaps,  # [stream, start, end] in s from the long request's send
           "p50_gap_before_s": round(statistics.median(before), 4) if before else None}
    print(f"   {srv.key:<18} repeat {rep + 1}: load {load:.1f}, long prompt {n_long} tokens "
          f"answered in {row['long_prefill_s']} s; running streams' gaps during it: max "
          f"{row['max_gap_s']} s, p50 {row['p50_gap_s']} s, p95 {row['p95_gap_s']} s "
          f"({len(during)} gaps; p50 before {row['p50_gap_before_s']} s)", flush=True)
    return row


def spec(key: str, args, vectors: Path, folder: Path, bin_dir: Path) -> dict:
    """Command line of one server; ``-nochunk`` turns chunked prefill off."""
    chunked = not key.endswith("-nochunk")
    port = free_port()
    if key.startswith("lasa-vllm"):
        cmd = lasa_vllm_cmd(bin_dir, folder, vectors, port, "float32", args.max_model_len,
                            args.max_batch_tokens, chunked, True)
        return dict(name=f"lasa serve --engine vllm (gate + add), chunked prefill "
                         f"{'on' if chunked else 'off'}", cmd=cmd, port=port, extra=STEER)
    cmd = vllm_cmd(bin_dir, folder, port, "float32", args.max_model_len, args.max_batch_tokens,
                   chunked, True)
    return dict(name=f"vanilla vLLM, chunked prefill {'on' if chunked else 'off'}", cmd=cmd,
                port=port, extra=None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default=",".join(SERVERS),
                    help=f"comma-separated, of {', '.join(SERVERS)} (default: all, in turn)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--streams", type=int, default=4, help="running streams (default 4)")
    ap.add_argument("--stream-tokens", type=int, default=256,
                    help="max_tokens of each running stream (default 256)")
    ap.add_argument("--warm-tokens", type=int, default=8,
                    help="chunks every stream has before the long prompt is sent (default 8)")
    ap.add_argument("--long-tokens", type=int, default=4500,
                    help="tokens of the long prompt (default 4500)")
    ap.add_argument("--max-model-len", type=int, default=8192,
                    help="max_model_len (default 8192, SmolLM2's context)")
    ap.add_argument("--max-batch-tokens", type=int, default=2048,
                    help="token budget per step (default 2048, vLLM's CPU server default)")
    ap.add_argument("--kv-space", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE (GiB)")
    ap.add_argument("--vllm-venv", type=Path, default=REPO / ".venv-vllm")
    ap.add_argument("--start-timeout", type=float, default=1200)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    keys = [k.strip() for k in args.servers.split(",") if k.strip()]
    if not keys or set(keys) - set(SERVERS):
        ap.error(f"--servers takes {', '.join(SERVERS)}")
    if args.long_tokens + 16 > args.max_model_len:
        ap.error("--long-tokens must fit in --max-model-len")

    from transformers import AutoTokenizer

    cache = Path(os.environ.setdefault("LASA_CACHE", str(REPO / ".lasa_cache")))
    folder = cache / "models" / MODEL
    if not folder.is_dir():
        from lasa_steer import load_model

        load_model(MODEL)  # converts the embedded model into the cache folder
    tok = AutoTokenizer.from_pretrained(folder)
    tmp = Path(tempfile.mkdtemp(prefix="lasa-stall-"))
    vectors, vector_note = vector_folder(tmp)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "VLLM_CPU_KVCACHE_SPACE": str(args.kv_space)}
    git = os.popen(f"git -C {REPO} log -1 --format='%h %cI'").read().strip()
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git,
               "command": " ".join([Path(sys.executable).name] + sys.argv),
               "cpu_count": os.cpu_count(), "vector": vector_note, "servers": {},
               "failed": {}, **{k: v for k, v in vars(args).items()
                                if k not in ("json", "vllm_venv", "servers")}}
    for key in keys:
        sp = spec(key, args, vectors, folder, args.vllm_venv / "bin")
        srv = Server(key, sp["name"], sp["cmd"], env, sp["port"], tmp / f"{key}.log", MODEL,
                     sp["extra"], args.start_timeout)
        try:
            if not srv.start(args.streams):
                results["failed"][key] = srv.error
                continue
            rows = [one_repeat(srv, tok, args, rep) for rep in range(args.repeats)]
        except Exception as exc:  # noqa: BLE001 - reported, the next server runs
            results["failed"][key] = f"{type(exc).__name__}: {exc}"
            print(f"!! {key}: {results['failed'][key]}", flush=True)
            continue
        finally:
            srv.stop()
        med = {f: round(statistics.median(r[f] for r in rows), 4)
               for f in ("long_prefill_s", "max_gap_s", "p50_gap_s", "p95_gap_s",
                         "load_avg_1m")}
        befores = [r["p50_gap_before_s"] for r in rows if r["p50_gap_before_s"] is not None]
        med["p50_gap_before_s"] = round(statistics.median(befores), 4) if befores else None
        results["servers"][key] = {"server": sp["name"], "command": sp["cmd"],
                                   "median": med, "repeats": rows}
        print(f"== {key}: median of {args.repeats}: long prefill {med['long_prefill_s']} s, "
              f"running streams' max gap {med['max_gap_s']} s (p50 {med['p50_gap_s']} s, p95 "
              f"{med['p95_gap_s']} s; p50 before {med['p50_gap_before_s']} s), load "
              f"{med['load_avg_1m']}", flush=True)
    print("\nserver                 long prefill  max gap  p50 gap  p95 gap  p50 before  load")
    for key, res in results["servers"].items():
        m = res["median"]
        print(f"{key:<22} {m['long_prefill_s']:>10.2f} s {m['max_gap_s']:>6.2f} s "
              f"{m['p50_gap_s']:>6.3f} s {m['p95_gap_s']:>6.2f} s {m['p50_gap_before_s']!s:>9} s"
              f"  {m['load_avg_1m']:.1f}")
    if results["failed"]:
        print("failed:", results["failed"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    print(f"server logs in {tmp}")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
