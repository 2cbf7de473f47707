"""Arguments several ``lasa`` subcommands share, and argparse types that turn a malformed
value into a one-line usage error (never a traceback)."""

from __future__ import annotations

import argparse
from typing import Callable

from ..fit.bottleneck import DEFAULT_BAND
from ..fit.languages import IDENTIFY_SOURCES

MODEL_HELP = "model name, folder, hub id or .gguf file"


def comma_list(kind: Callable[[str], object], what: str) -> Callable[[str], list]:
    """An argparse type: comma-separated values of ``kind``."""
    def parse(text: str) -> list:
        try:
            return [kind(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated {what}")
    return parse


def band(text: str) -> tuple[float, float]:
    """An argparse type: ``LOW,HIGH`` depth fractions."""
    values = comma_list(float, "numbers")(text)
    if len(values) != 2 or not 0.0 <= values[0] < values[1] <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LOW,HIGH with 0 <= LOW < HIGH <= 1")
    return (float(values[0]), float(values[1]))


def add_model_and_data(p: argparse.ArgumentParser, band_help: str | None = None) -> None:
    """The positional model, the shared data folder and the bottleneck's depth band."""
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data-dir", help="the shared data folder (default ../shared/data)")
    p.add_argument("--band", type=band, default=DEFAULT_BAND, metavar="LOW,HIGH",
                   help=band_help or f"depth band for the bottleneck, as fractions (default "
                   f"{DEFAULT_BAND[0]},{DEFAULT_BAND[1]})")


def identify_sources(text: str) -> list[str]:
    """An argparse type: ``--identify``'s comma-separated corpora, or ``none``."""
    if text.strip() == "none":
        return []
    names = comma_list(str, "corpus names")(text)
    unknown = sorted(set(names) - set(IDENTIFY_SOURCES))
    if unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown corpus {unknown}; known: "
                                         f"{', '.join(IDENTIFY_SOURCES)} or none")
    return names


def add_identify(p: argparse.ArgumentParser) -> None:
    """``--identify``: the parallel corpora whose languages without labelled prompts the
    language-aware gate also identifies (``lasa fit`` and ``lasa calibrate``)."""
    default = ",".join(IDENTIFY_SOURCES)
    p.add_argument("--identify", type=identify_sources, default=list(IDENTIFY_SOURCES),
                   metavar="CORPORA",
                   help="parallel corpora (in --data-dir) whose languages without labelled "
                        "prompts get an identification centroid and the pooled threshold "
                        f"(default {default}; 'none' = only the labelled languages)")
