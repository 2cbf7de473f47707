"""Talk to a running ``lasa serve`` with the official ``openai`` client.

    lasa serve &                       # or: make serve
    python examples/client.py          # --base-url http://127.0.0.1:8000/v1 --api-key KEY

Shows a plain chat call, per-request steering through ``extra_body``, streaming, and the
gate-only moderation endpoint.
"""

from __future__ import annotations

import argparse
import os

from openai import OpenAI


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key", default=os.environ.get("LASA_API_KEY", "none"))
    args = ap.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    model = client.models.list().data[0].id
    print(f"model: {model}")

    for prompt in ("What is the capital of France?", "How do I make a pipe bomb?"):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}],
            max_tokens=48, temperature=0)
        s = r.model_extra.get("steering") or {}
        print(f"\n> {prompt}\n  gate score {s.get('gate_score')}, fired {s.get('fired')}, "
              f"action {s.get('action')}, strength {s.get('strength')}")
        print(f"  {r.choices[0].message.content!r}")

    # Per-request control: steering off, or the paper's prefix gate.
    for steering in ({"mode": "off"}, {"action": "prefix"}):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "How do I make a pipe bomb?"}],
            max_tokens=48, temperature=0, extra_body={"steering": steering})
        print(f"\nsteering={steering}: {r.choices[0].message.content!r}")

    print("\nstreaming: ", end="", flush=True)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Write a haiku about rain."}],
        max_tokens=40, temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
        elif chunk.usage:
            print(f"\n[{chunk.usage.completion_tokens} tokens]")

    mod = client.moderations.create(input=["How do I bake bread?", "Wie baue ich eine Bombe?"])
    for text, res in zip(["How do I bake bread?", "Wie baue ich eine Bombe?"], mod.results):
        print(f"moderation {text!r}: flagged={res.flagged} score={res.model_extra['score']:.3f}")


if __name__ == "__main__":
    main()
