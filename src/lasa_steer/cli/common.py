"""Arguments several ``lasa`` subcommands share, and argparse types that turn a malformed
value into a one-line usage error (never a traceback)."""

from __future__ import annotations

import argparse
from typing import Callable

from ..fit.bottleneck import DEFAULT_BAND
from ..fit.languages import IDENTIFY_SOURCES

MODEL_HELP = "model name, folder, hub id or .gguf file"
DATA_DIR_HELP = ("data root (default: $LASA_CACHE/data, filled by `lasa data fetch`, else "
                 "../shared/data of a checkout; each data set from the first that holds it)")


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
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
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


DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def device_map(text: str) -> str | dict:
    """An argparse type: ``--device-map``'s accelerate strategy, one device, a JSON object
    of module name to device (a GPU index, ``cpu`` or ``disk``), or a JSON file of one."""
    import json
    from pathlib import Path

    value = text.strip()
    if value in DEVICE_MAP_STRATEGIES:
        return value
    if value.startswith("{") or value.endswith(".json"):
        try:
            loaded = json.loads(value if value.startswith("{") else Path(value).read_text())
        except (OSError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: not a readable JSON device map ({exc})")
        if not isinstance(loaded, dict) or not loaded:
            raise argparse.ArgumentTypeError(f"{text!r}: a device map is a non-empty JSON "
                                             "object of module name to device")
        return loaded
    import torch

    try:
        torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use {', '.join(DEVICE_MAP_STRATEGIES)}, a device, or a JSON map")
    return value


def max_memory(text: str) -> dict:
    """An argparse type: ``--max-memory 0=20GiB,cpu=60GiB`` (per device, for a device map)."""
    out: dict = {}
    for part in comma_list(str, "DEVICE=SIZE pairs")(text):
        dev, sep, size = part.partition("=")
        if not sep or not size.strip():
            raise argparse.ArgumentTypeError(f"{text!r}: expected DEVICE=SIZE pairs, e.g. "
                                             "0=20GiB,cpu=60GiB")
        dev = dev.strip()
        out[int(dev) if dev.isdigit() else dev] = size.strip()
    return out


def add_placement(p: argparse.ArgumentParser, dtype_default: str | None = None) -> None:
    """Where and in which dtype the model is loaded (``lasa fit``/``layers``/``calibrate``);
    a device map spreads a model larger than one device over GPUs, the CPU and disk."""
    p.add_argument("--device", default=None,
                   help="device for the whole model (default: cuda when present, else cpu)")
    p.add_argument("--dtype", default=dtype_default,
                   help="model dtype: float32, bfloat16 or float16 (default: "
                        + (dtype_default or "float32 on the CPU, bf16/fp16 on CUDA") + ")")
    p.add_argument("--device-map", type=device_map, default=None, metavar="MAP",
                   help="let accelerate place the model: auto, balanced, sequential, a "
                        "device, or a JSON object/file of module name to device (GPU index, "
                        "cpu or disk); the model is never moved afterwards")
    p.add_argument("--max-memory", type=max_memory, default=None, metavar="DEV=SIZE,...",
                   help="memory per device for --device-map auto, e.g. 0=20GiB,cpu=60GiB")
    p.add_argument("--offload-folder", default=None, metavar="DIR",
                   help="folder for the weights a --device-map puts on 'disk'")


def load_placed(args: argparse.Namespace):
    """``load_model`` with the options of :func:`add_placement`."""
    from ..model.loading import load_model

    extra = {"max_memory": args.max_memory} if args.max_memory else {}
    return load_model(args.model, dtype=args.dtype, device=args.device,
                      device_map=args.device_map, offload_folder=args.offload_folder, **extra)


def mixture_sources(text: str) -> list[str]:
    """An argparse type: one mixture source (``NAME[:ROLE][*WEIGHT][@LIMIT]``) or ``none``."""
    from ..errors import FitConfigError
    from ..fit.mixture import SourceSpec
    if text.strip() == "none":
        return []
    try:
        SourceSpec.parse(text)
    except FitConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return [text]


def operating_point(text: str):
    """An argparse type: ``NAME=LOOKALIKE_FPR,HARMLESS_FPR``."""
    from ..errors import FitConfigError
    from ..fit.operating_points import parse_point
    try:
        return parse_point(text)
    except FitConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def add_mixture(p: argparse.ArgumentParser) -> None:
    """The gate's data mixture and operating points (``lasa fit``, ``lasa calibrate``)."""
    from ..fit.mixture import BUILTIN, default_specs
    default = " ".join(f"{s.name}{f'*{s.weight:g}' if s.weight != 1 else ''}@{s.limit}"
                       for s in default_specs())
    p.add_argument("--mixture", type=mixture_sources, nargs="+", default=None,
                   metavar="SOURCE",
                   help="the gate's training data, sources NAME[:ROLE][*WEIGHT][@LIMIT]: "
                        f"built-in {', '.join(BUILTIN)}, or a JSONL/CSV file (text,label,lang"
                        ",group; ROLE = role of its harmless rows: harmless or lookalike); "
                        f"'none' keeps the PolyRefuse-only gate (default: {default})")
    p.add_argument("--operating-point", type=operating_point, action="append", default=None,
                   metavar="NAME=LOOK,HARMLESS", dest="operating_points",
                   help="an operating point: thresholds at these FPRs on look-alikes and on "
                        "ordinary harmless prompts (repeat; the first is the default; "
                        "default: no-harm=0.03,0.01, balanced=0.05,0.02 and recall=0.08,0.03)")


def mixture_specs(args: argparse.Namespace):
    """The parsed ``--mixture`` (None: the default recipe; [] for 'none')."""
    from ..fit.mixture import SourceSpec, default_specs
    if args.mixture is None:
        return default_specs()
    names = [x for group in args.mixture for x in group]
    return [SourceSpec.parse(x) for x in names]
