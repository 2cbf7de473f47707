"""The manifest of the fit data (``manifest.json``, package data): for each data set its
origin (repository @ commit), license and files (path in the data folder, path at the
origin, sha256, size).

Files are byte copies of their origin, downloaded from the raw files of the repository at
the pinned commit. A *derived* data set (built from several origins with filtering) has no
URL: it is listed with its origins and sha256 values so that a copy can be checked, never
downloaded. Data whose license is not an open one (non-commercial, or none stated) is
fetched only when named.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..errors import DataError

MANIFEST = Path(__file__).with_name("manifest.json")
LICENSE_CLASSES = ("open", "noncommercial", "unstated")


def cache_data_dir() -> Path:
    """``$LASA_CACHE/data`` (default ``~/.cache/lasa_steer/data``): where ``lasa data fetch``
    writes and where the fit looks first."""
    from ..model.embedded import cache_root

    return cache_root() / "data"


@dataclass(frozen=True)
class DataFile:
    path: str  # inside the data set's folder
    source: str | None  # path in the origin repository (None: derived)
    sha256: str
    size: int


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    dir: str  # the data set's folder inside a data root (the layout the fit reads)
    repository: str | None
    commit: str | None
    license: str
    license_class: str
    notes: str
    default: bool  # part of the default fit recipe
    derived: bool
    used_for: str
    how_to_get: str
    origins: tuple[dict, ...]
    files: tuple[DataFile, ...]
    url_template: str

    @property
    def restricted(self) -> bool:
        """Fetched only when named: a non-commercial license or none stated."""
        return self.license_class != "open"

    @property
    def origin(self) -> str:
        if self.derived:
            return "derived from " + ", ".join(o["repository"] for o in self.origins)
        return f"{self.repository} @ {self.commit}"

    def url(self, file: DataFile, mirror: str | None = None) -> str | None:
        if file.source is None:
            return None
        url = self.url_template.format(repository=self.repository, commit=self.commit,
                                       source=file.source)
        return with_mirror(url, mirror) if mirror else url

    def destination(self, root: Path, file: DataFile) -> Path:
        return root / self.dir / file.path

    def missing_message(self, root: Path | None = None) -> str:
        """What to do when this data set is not found."""
        dest = (root or cache_data_dir()) / self.dir
        if self.derived:
            return f"data set {self.name!r} is not present: " + \
                self.how_to_get.replace("DEST", str(dest))
        how = f"fetch it with `lasa data fetch {self.name}`"
        if self.restricted:
            how += f" (license: {self.license}; fetched only when named)"
        return (f"data set {self.name!r} ({self.origin}, {self.license}) is not present; "
                f"{how}, which writes {dest}")


def with_mirror(url: str, mirror: str) -> str:
    """``url`` with the scheme and host of ``mirror``; a path in ``mirror`` is prepended
    (``http://mirror/raw`` + ``/OWNER/REPO/...``)."""
    m, u = urlsplit(mirror), urlsplit(url)
    if not m.scheme or not m.netloc:
        raise DataError(f"--mirror {mirror!r}: expected a URL such as http://host:port")
    return urlunsplit((m.scheme, m.netloc, m.path.rstrip("/") + u.path, u.query, ""))


def _dataset(entry: dict, template: str) -> Dataset:
    files = tuple(DataFile(f["path"], f.get("source"), f["sha256"], int(f["size"]))
                  for f in entry["files"])
    if entry["license_class"] not in LICENSE_CLASSES:
        raise DataError(f"{MANIFEST}: {entry['name']}: license_class "
                        f"{entry['license_class']!r} not in {LICENSE_CLASSES}")
    return Dataset(entry["name"], entry["title"], entry["dir"], entry.get("repository"),
                   entry.get("commit"), entry["license"], entry["license_class"],
                   entry.get("notes", ""), bool(entry.get("default")),
                   bool(entry.get("derived")), entry.get("used_for", ""),
                   entry.get("how_to_get", ""), tuple(entry.get("origins", ())), files,
                   template)


@lru_cache(maxsize=None)
def _load(path: str) -> tuple[Dataset, ...]:
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    return tuple(_dataset(e, raw["url_template"]) for e in raw["datasets"])


def datasets() -> tuple[Dataset, ...]:
    return _load(os.fspath(MANIFEST))


def dataset(name: str) -> Dataset | None:
    return next((d for d in datasets() if d.name == name), None)


def select(names: list[str] | None) -> list[Dataset]:
    """The named data sets (unknown names are an error); with no names, every data set
    of the default recipe."""
    if not names:
        return [d for d in datasets() if d.default]
    known = {d.name: d for d in datasets()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DataError(f"unknown data set(s) {unknown}; known: {', '.join(known)}")
    return [known[n] for n in dict.fromkeys(names)]
