"""The ``lasa`` command line. Each subcommand lives in its own module with a
``register(subparsers)`` function: ``lasa_steer.cli.<name>`` inside the library, or
any module named in the ``lasa_steer.commands`` entry-point group (how ``lasa serve`` from
the separate ``lasa_serve`` package plugs in without the library importing it)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib.metadata import entry_points

from .. import __version__
from ..errors import LasaError

COMMANDS = ("calibrate", "data", "eval", "export_gguf", "fit", "import_gguf", "info", "layers",
            "vllm_args")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lasa", description="Language-agnostic safety steering at the semantic bottleneck.")
    parser.add_argument("--version", action="version", version=f"lasa-steer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name}").register(sub)
    for ep in entry_points(group="lasa_steer.commands"):
        try:
            register = ep.load()
        except ImportError as exc:  # e.g. the server extra is not installed
            stub = sub.add_parser(ep.name, help=f"(unavailable: {exc})")
            stub.set_defaults(func=lambda args, exc=exc, name=ep.name: _unavailable(name, exc))
            continue
        register(sub)
    return parser


def _unavailable(name: str, exc: Exception) -> int:
    print(f"lasa {name}: unavailable ({exc}). Install the extra: pip install "
          f"'lasa-steer[server]'", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LasaError as exc:
        print(f"lasa {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lasa {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
