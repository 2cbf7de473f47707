"""Download the manifest's files into a data root, each checked against its sha256.

A file is written to ``<name>.part`` beside its destination, fsynced, checked and only
then renamed into place, so the destination is either absent or complete and verified. A
broken transfer is resumed from the ``.part`` file (HTTP ``Range``) and retried with a
backoff; a resumed file that fails its sha256 is downloaded once more from the start, and
a file that fails again is deleted and reported.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import DataError
from .manifest import DataFile, Dataset

CHUNK = 1 << 16
RETRIES = 4  # tries per file after the first
BACKOFF_S = 0.5  # doubled after each failed try
TIMEOUT_S = 60.0


class ChecksumError(DataError):
    """A downloaded file does not have the manifest's sha256."""


@dataclass
class Outcome:
    dataset: str
    path: Path
    status: str  # "present" (already there and verified), "fetched", "failed"
    detail: str = ""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform; the rename itself is atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _transfer(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (from its current size when the server honours
    ``Range``; from the start otherwise)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "lasa-steer data fetch"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the .part is complete
            return
        raise
    with response:
        resumed = have and response.status == 206
        expected = response.headers.get("Content-Length")
        written = 0
        with open(part, "ab" if resumed else "wb") as out:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                written += len(block)
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and written != int(expected):
            raise http.client.IncompleteRead(b"", int(expected) - written)


def fetch_file(url: str, dest: Path, sha256: str, retries: int = RETRIES,
               backoff: float = BACKOFF_S, timeout: float = TIMEOUT_S,
               sleep: Callable[[float], None] = time.sleep) -> None:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), check its sha256 and rename
    it into place; raise :class:`DataError` (nothing left at ``dest``) when it cannot."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    restarted = False
    delay = backoff
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout)
        except urllib.error.HTTPError as exc:
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                part.unlink(missing_ok=True)
                raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            last = exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            last = exc  # connection refused/reset, timeout, a cut transfer: resume
        else:
            got = sha256_of(part)
            if got == sha256:
                os.replace(part, dest)
                _fsync_dir(dest.parent)
                return
            part.unlink()
            if restarted:
                raise ChecksumError(f"{url}: sha256 {got} is not the manifest's {sha256}; "
                                    f"the file was deleted and {dest} not written")
            restarted = True  # a resumed file may be corrupt: once more from the start
            last = ChecksumError(f"sha256 {got} != {sha256}")
            continue
        if attempt < retries:
            sleep(delay)
            delay *= 2
    raise DataError(f"{url}: download failed after {retries + 1} tries ({last}); the "
                    f"partial file {part} is kept and the next fetch resumes it")


def fetch_dataset(ds: Dataset, root: Path, mirror: str | None = None,
                  log: Callable[[str], None] = print, **kwargs) -> list[Outcome]:
    """Every file of ``ds`` under ``root``: kept when present with the right sha256, else
    downloaded. A derived data set is only checked (it has no URL)."""
    out: list[Outcome] = []
    for file in ds.files:
        dest = ds.destination(root, file)
        out.append(_one(ds, file, dest, mirror, log, **kwargs))
    return out


def _one(ds: Dataset, file: DataFile, dest: Path, mirror: str | None,
         log: Callable[[str], None], **kwargs) -> Outcome:
    if dest.is_file():
        got = sha256_of(dest)
        if got == file.sha256:
            return Outcome(ds.name, dest, "present")
        if ds.derived:  # a copy the user placed: reported, never deleted
            return Outcome(ds.name, dest, "failed", f"sha256 {got} is not the manifest's "
                           f"{file.sha256}")
        log(f"  {dest}: sha256 {got[:12]}... is not the manifest's; deleted, fetching it "
            "again")
        dest.unlink()  # a fit must never read it
    url = ds.url(file, mirror)
    if url is None:
        return Outcome(ds.name, dest, "failed", "missing; derived data cannot be fetched")
    try:
        fetch_file(url, dest, file.sha256, **kwargs)
    except DataError as exc:
        return Outcome(ds.name, dest, "failed", str(exc))
    return Outcome(ds.name, dest, "fetched")
