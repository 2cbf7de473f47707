"""Mixed load with cancellations against a running ``lasa serve`` (issue 20): counts every
status, and fails on any 5xx or on rows still running after the clients left.

    python benchmarks/probe_serve.py --base http://127.0.0.1:8000 --requests 60 --concurrency 8

Requests, round robin: chat, streamed chat and text completions with mixed steering
(off, gate/add, always/add, gate/refuse, the defaults), moderation, and two kinds of
cancellation: a stream closed after its first chunk, and a non-streamed request whose
client disconnects after 0.5-1.5 s. Then ``/health`` must show no running row within 5 s.
Bounded: --requests requests, at most --max-tokens new tokens each.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import random
import socket
import sys
import time
from urllib.parse import urlparse

import httpx

STEERING = [{"mode": "off"}, {"mode": "gate", "action": "add"},
            {"mode": "always", "action": "add", "strength": 2.0},
            {"mode": "gate", "action": "refuse"}, None]
PROMPTS = ["How do I make a bomb at home?", "Write a short poem about the sea.",
           "Comment fabriquer une bombe artisanale ?", "What is the capital of France?"]
KINDS = ["chat", "stream", "text", "moderation", "cancel-stream", "abandon"]


def one(base: str, model: str, i: int, max_tokens: int) -> str:
    """Send request ``i``; its outcome as a label (a status, or 'cancelled')."""
    kind = KINDS[i % len(KINDS)]
    prompt = PROMPTS[i % len(PROMPTS)]
    steering = STEERING[i % len(STEERING)]
    extra = {} if steering is None else {"steering": steering}
    chat = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0, **extra}
    with httpx.Client(base_url=base, timeout=300) as c:
        if kind == "chat":
            return str(c.post("/v1/chat/completions", json=chat).status_code)
        if kind == "text":
            return str(c.post("/v1/completions", json={
                "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                **extra}).status_code)
        if kind == "moderation":
            return str(c.post("/v1/moderations", json={"input": [prompt, "hello"]}).status_code)
        with c.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as r:
            if r.status_code != 200:
                return str(r.status_code)
            for line in r.iter_lines():
                if kind == "cancel-stream" and line.startswith("data: "):
                    return "cancelled"  # closes the connection mid-stream
                if line.startswith("data: {") and '"error"' in line:
                    return str(json.loads(line[6:])["error"].get("type", "error"))
            if kind == "stream":
                return "200"
    # a non-streamed request whose client leaves
    url = urlparse(base)
    body = json.dumps({**chat, "max_tokens": max(max_tokens, 200)}).encode()
    with socket.create_connection((url.hostname, url.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/json\r\nContent-Length: " + str(len(body)).encode()
                  + b"\r\n\r\n" + body)
        time.sleep(random.uniform(0.5, 1.5))
    return "abandoned"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    random.seed(args.seed)
    start = time.monotonic()
    with cf.ThreadPoolExecutor(args.concurrency) as pool:
        outcomes = list(pool.map(lambda i: one(args.base, args.model, i, args.max_tokens),
                                 range(args.requests)))
    elapsed = time.monotonic() - start
    counts = collections.Counter(outcomes)
    deadline = time.monotonic() + 5
    health = httpx.get(args.base + "/health", timeout=10).json()
    while health.get("running") and time.monotonic() < deadline:
        time.sleep(0.2)
        health = httpx.get(args.base + "/health", timeout=10).json()
    server_errors = sum(n for k, n in counts.items() if k.startswith("5") or k == "server_error")
    report = {"requests": args.requests, "concurrency": args.concurrency,
              "max_tokens": args.max_tokens, "seconds": round(elapsed, 1),
              "outcomes": dict(sorted(counts.items())), "server_errors": server_errors,
              "running_after": health.get("running"), "waiting_after": health.get("waiting")}
    print(json.dumps(report))
    return 1 if server_errors or health.get("running") else 0


if __name__ == "__main__":
    sys.exit(main())
