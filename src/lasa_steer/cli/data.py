"""``lasa data list`` / ``lasa data fetch``: the fit data's manifest, and its download into
``$LASA_CACHE/data`` in the layout ``lasa fit`` reads (docs/data.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..datasets.manifest import Dataset, cache_data_dir, datasets, select


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list or fetch the fit data (PolyRefuse, NTREX, ...)",
                       description="The data sets lasa fit, calibrate and layers read: their "
                       "origin, license and sha256 (list), and their download (fetch).")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", help="print the manifest (per file: origin, URL, sha256, "
                          "license, destination)")
    ls.add_argument("names", nargs="*", metavar="NAME", help="data sets (default: all)")
    ls.add_argument("--json", action="store_true", help="machine-readable")
    fetch = verbs.add_parser("fetch", help="download data sets, each file checked by sha256")
    fetch.add_argument("names", nargs="*", metavar="NAME",
                       help="data sets (default: those of the default fit recipe whose license "
                       "is open; others only when named)")
    fetch.add_argument("--mirror", metavar="URL",
                       help="replace the scheme and host of every URL (e.g. an internal "
                       "mirror http://host:port; a path in URL is put before each file's)")
    for q in (ls, fetch):
        q.add_argument("--dir", type=Path, default=None,
                       help="data root (default $LASA_CACHE/data, ~/.cache/lasa_steer/data)")
    ls.set_defaults(func=run_list)
    fetch.set_defaults(func=run_fetch)


def manifest_json(chosen: list[Dataset], root: Path) -> dict[str, Any]:
    files, sets = [], []
    for ds in chosen:
        sets.append({"name": ds.name, "title": ds.title, "directory": str(root / ds.dir),
                     "repository": ds.repository, "commit": ds.commit, "license": ds.license,
                     "license_class": ds.license_class, "notes": ds.notes,
                     "default_recipe": ds.default, "fetched_by_default":
                     ds.default and not ds.restricted and not ds.derived,
                     "derived": ds.derived, "origins": list(ds.origins),
                     "how_to_get": ds.how_to_get.replace("DEST", str(root / ds.dir)),
                     "used_for": ds.used_for})
        for f in ds.files:
            dest = ds.destination(root, f)
            files.append({"dataset": ds.name, "name": f.path, "repository": ds.repository,
                          "commit": ds.commit, "source_path": f.source, "url": ds.url(f),
                          "sha256": f.sha256, "size": f.size, "license": ds.license,
                          "destination": str(dest), "present": dest.is_file(),
                          "derived": ds.derived})
    return {"root": str(root), "datasets": sets, "files": files}


def run_list(args: argparse.Namespace) -> int:
    root = args.dir or cache_data_dir()
    chosen = select(args.names) if args.names else list(datasets())
    if args.json:
        print(json.dumps(manifest_json(chosen, root), indent=1, ensure_ascii=False))
        return 0
    print(f"data root {root}  (lasa fit reads it; fill it with `lasa data fetch`)")
    for ds in chosen:
        fetched = "derived: not downloadable" if ds.derived else \
            "fetched by default" if ds.default and not ds.restricted else \
            "fetched only when named"
        print(f"\n{ds.name}: {ds.title}")
        print(f"  origin    {ds.origin}")
        print(f"  license   {ds.license}" + (f" ({ds.notes})" if ds.notes else ""))
        print(f"  used for  {ds.used_for}")
        print(f"  fetch     {fetched}; {len(ds.files)} files, "
              f"{sum(f.size for f in ds.files) / 1e6:.1f} MB -> {root / ds.dir}")
        for o in ds.origins:
            print(f"  origin    {o['dataset']}: {o['repository']} @ {o['commit']}, "
                  f"{o['path']} ({o['license']})")
        for f in ds.files:
            have = "present" if ds.destination(root, f).is_file() else "missing"
            print(f"    {f.path:<40} {have:<8} sha256 {f.sha256}  {ds.url(f) or '(derived)'}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from ..datasets.fetch import fetch_dataset

    root = args.dir or cache_data_dir()
    named = bool(args.names)
    failed = 0
    for ds in select(args.names):
        head = f"{ds.name} ({ds.origin}; license {ds.license}" + \
            (f"; {ds.notes}" if ds.notes else "") + ")"
        if ds.restricted and not named and not ds.derived:
            print(f"{head}: skipped, its license is not an open one; fetch it by name: "
                  f"lasa data fetch {ds.name}")
            continue
        print(f"{head} -> {root / ds.dir}", flush=True)
        outcomes = fetch_dataset(ds, root, args.mirror,
                                 log=lambda line: print(line, file=sys.stderr, flush=True))
        bad = [o for o in outcomes if o.status == "failed"]
        counts = {s: sum(o.status == s for o in outcomes) for s in ("fetched", "present")}
        if ds.derived and bad:
            print(f"  {ds.missing_message(root)}")
            failed += len(bad) if named else 0
            for o in bad:
                print(f"  {o.path}: {o.detail}", file=sys.stderr)
            continue
        for o in bad:
            print(f"  FAILED {o.path}: {o.detail}", file=sys.stderr)
        failed += len(bad)
        print(f"  {counts['fetched']} fetched, {counts['present']} already present, "
              f"{len(bad)} failed; sha256 checked")
    if failed:
        print(f"lasa data fetch: {failed} file(s) not in place", file=sys.stderr)
        return 1
    return 0
