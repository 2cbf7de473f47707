"""``lasa serve`` (registered through the ``lasa_steer.commands`` entry point)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible steering server")
    p.set_defaults(func=lambda args: print("not implemented yet") or 2)
