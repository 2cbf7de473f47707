"""``lasa data``: the manifest matches the shared data byte for byte, and ``lasa data fetch
--mirror`` downloads it from a local HTTP server (127.0.0.1, serving ../shared/data at the
manifest's URL paths) into the layout the fit's loaders find; corrupt files are rejected,
cut transfers resumed, derived and restricted data handled as documented."""

from __future__ import annotations

import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import require_shared_data
from lasa_steer import DataError, datafiles
from lasa_steer.cli import main
from lasa_steer.datafiles import data_folder
from lasa_steer.datasets.fetch import ChecksumError, fetch_file, sha256_of
from lasa_steer.datasets.manifest import dataset, datasets, select, with_mirror

pytestmark = pytest.mark.data
FETCHED_BY_DEFAULT = ["polyrefuse", "refusal_direction", "ntrex128", "nusax_mt"]


class Mirror:
    """A raw-file server: URL path -> the shared copy; faults injected per URL path."""

    def __init__(self, shared: Path):
        self.files: dict[str, Path] = {}
        for ds in datasets():
            for f in ds.files:
                url = ds.url(f)
                if url is not None:
                    self.files[urlsplit(url).path] = shared / ds.dir / f.path
        self.cut_once: dict[str, int] = {}  # path -> bytes sent before the connection drops
        self.fail_once: set[str] = set()  # path -> one 503
        self.corrupt: set[str] = set()  # path -> always one byte changed
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                mirror.requests.append((self.path, self.headers.get("Range")))
                path = mirror.files.get(self.path)
                if path is None:
                    self.send_error(404)
                    return
                if self.path in mirror.fail_once:
                    mirror.fail_once.discard(self.path)
                    self.send_error(503)
                    return
                body = path.read_bytes()
                if self.path in mirror.corrupt:
                    body = bytes([body[0] ^ 0x20]) + body[1:]
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                rest = body[start:]
                self.send_header("Content-Length", str(len(rest)))
                self.end_headers()
                cut = mirror.cut_once.pop(self.path, None)
                self.wfile.write(rest[:cut] if cut is not None else rest)
                if cut is not None:
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror():
    m = Mirror(require_shared_data())
    yield m
    m.close()


@pytest.fixture
def no_shared_data(tmp_path, monkeypatch):
    """Only $LASA_CACHE/data can hold data: no checkout folder, no ../shared from the cwd."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LASA_CACHE", str(cache))
    monkeypatch.delenv("LASA_DATA", raising=False)
    monkeypatch.setattr(datafiles, "CHECKOUT_DATA", tmp_path / "no-checkout")
    work = tmp_path / "work" / "dir"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    return cache / "data"


def test_manifest_is_the_shared_data_byte_for_byte():
    shared = require_shared_data()
    for ds in datasets():
        for f in ds.files:
            copy = shared / ds.dir / f.path
            assert copy.stat().st_size == f.size, copy
            assert sha256_of(copy) == f.sha256, copy
        assert ds.derived == all(f.source is None for f in ds.files)
        assert ds.derived or (ds.repository and len(ds.commit or "") == 40)


def test_list_json_gives_each_file_its_origin(tmp_path, capsys):
    assert main(["data", "list", "--json", "--dir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    names = {d["name"] for d in out["datasets"]}
    assert set(FETCHED_BY_DEFAULT) | {"safety_mix"} <= names
    for f in out["files"]:
        assert set(f) >= {"name", "repository", "commit", "url", "sha256", "license",
                          "destination"}
        assert f["destination"].startswith(str(tmp_path)) and not f["present"]
        if f["derived"]:
            assert f["url"] is None
        else:
            assert f["url"] == (f"https://raw.githubusercontent.com/{f['repository']}/"
                                f"{f['commit']}/{f['source_path']}")
    mix = next(d for d in out["datasets"] if d["name"] == "safety_mix")
    assert mix["derived"] and not mix["fetched_by_default"] and len(mix["origins"]) == 8
    assert "cannot download or rebuild" in mix["how_to_get"]


def test_fetch_default_data_then_the_fit_finds_it(mirror, no_shared_data, capsys):
    # nothing anywhere: the error names the data set and the command
    with pytest.raises(DataError, match=r"'polyrefuse' .*`lasa data fetch polyrefuse`"):
        data_folder("polyrefuse")
    assert main(["data", "fetch", "--mirror", mirror.base]) == 0
    out = capsys.readouterr().out
    for name in FETCHED_BY_DEFAULT:
        ds = dataset(name)
        assert f"{name} ({ds.repository} @ {ds.commit}; license {ds.license}" in out
        for f in ds.files:
            assert sha256_of(ds.destination(no_shared_data, f)) == f.sha256
    assert "safety_mix" in out and "cannot download or rebuild" in out
    assert not list(no_shared_data.rglob("*.part"))
    # the fit's loaders read the fetched layout
    from lasa_steer.fit.data import load_ntrex, load_nusax, load_polyrefuse
    from lasa_steer.fit.hard_negatives import refusal_direction_hard_negatives
    from lasa_steer.fit.languages import identification_texts

    assert data_folder("polyrefuse") == (no_shared_data / "polyrefuse").resolve()
    train = load_polyrefuse(None, "train")
    assert len({e.lang for e in train}) == 14 and len(train) == 14 * 460
    assert len(load_ntrex()) == 1997 and "jv" in load_nusax().langs
    assert len(refusal_direction_hard_negatives(None, 5)) == 5
    fit_texts, _ = identification_texts({"en"}, per_language=3, check=1)
    assert {"vi", "sw", "jv"} <= set(fit_texts)
    # a second fetch downloads nothing
    before = len(mirror.requests)
    assert main(["data", "fetch", "ntrex128", "--mirror", mirror.base]) == 0
    assert len(mirror.requests) == before and "0 fetched, 24 already present" in \
        capsys.readouterr().out


def test_corrupt_download_is_rejected_and_not_left_in_place(mirror, no_shared_data, capsys):
    ds = dataset("nusax_mt")
    bad = next(f for f in ds.files if f.path == "test.csv")
    mirror.corrupt.add(urlsplit(ds.url(bad)).path)
    assert main(["data", "fetch", "nusax_mt", "--mirror", mirror.base]) == 1
    err = capsys.readouterr().err
    assert "sha256" in err and "not the manifest's" in err
    dest = ds.destination(no_shared_data, bad)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    # the other files are in place, but the incomplete data set is not used
    assert ds.destination(no_shared_data, ds.files[0]).is_file()
    with pytest.raises(DataError, match="lasa data fetch nusax_mt"):
        data_folder("nusax_mt")
    # a corrupt file already in place is deleted and fetched again
    mirror.corrupt.clear()
    dest.write_bytes(b"tampered")
    assert main(["data", "fetch", "nusax_mt", "--mirror", mirror.base]) == 0
    assert sha256_of(dest) == bad.sha256


def test_cut_transfer_resumes_and_a_failure_is_retried(mirror, tmp_path):
    ds = dataset("refusal_direction")
    f = next(x for x in ds.files if x.path == "harmless_train.json")
    path = urlsplit(ds.url(f)).path
    mirror.cut_once[path] = f.size // 3
    mirror.fail_once.add(path)
    dest = tmp_path / "harmless_train.json"
    fetch_file(ds.url(f, mirror.base), dest, f.sha256, sleep=lambda s: None)
    assert sha256_of(dest) == f.sha256
    ranges = [r for p, r in mirror.requests if p == path]
    # 503, then the full file cut at a third, then the rest from where it stopped
    assert ranges == [None, None, f"bytes={f.size // 3}-"]
    assert not (tmp_path / "harmless_train.json.part").exists()


def test_a_corrupt_part_file_is_refetched_from_the_start(mirror, tmp_path):
    ds = dataset("polyrefuse")
    f = next(x for x in ds.files if x.path == "LICENSE")
    dest = tmp_path / "LICENSE"
    dest.with_name("LICENSE.part").write_bytes(b"garbage from an earlier try")
    fetch_file(ds.url(f, mirror.base), dest, f.sha256, sleep=lambda s: None)
    assert sha256_of(dest) == f.sha256
    path = urlsplit(ds.url(f)).path
    assert [r for p, r in mirror.requests if p == path] == ["bytes=27-", None]


def test_a_file_that_stays_corrupt_is_an_error(mirror, tmp_path):
    ds = dataset("polyrefuse")
    f = next(x for x in ds.files if x.path == "LICENSE")
    mirror.corrupt.add(urlsplit(ds.url(f)).path)
    with pytest.raises(ChecksumError, match="not written"):
        fetch_file(ds.url(f, mirror.base), tmp_path / "LICENSE", f.sha256, sleep=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_mirror_keeps_the_partial_file_for_the_next_fetch(tmp_path):
    with pytest.raises(DataError, match="after 2 tries"):
        fetch_file("http://127.0.0.1:9/x", tmp_path / "x", "0" * 64, retries=1,
                   sleep=lambda s: None, timeout=2)
    assert not (tmp_path / "x").exists()


def test_derived_data_is_checked_never_downloaded(mirror, no_shared_data, capsys):
    assert main(["data", "fetch", "safety_mix", "--mirror", mirror.base]) == 1
    assert "cannot download or rebuild" in capsys.readouterr().out
    assert mirror.requests == []
    with pytest.raises(DataError, match="'safety_mix' is not present: derived data"):
        data_folder("safety_mix")
    ds = dataset("safety_mix")
    shared = require_shared_data()
    for f in ds.files:  # a copy placed by hand is verified
        dest = ds.destination(no_shared_data, f)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((shared / ds.dir / f.path).read_bytes())
    assert main(["data", "fetch", "safety_mix"]) == 0
    assert "0 fetched, 2 already present" in capsys.readouterr().out
    assert data_folder("safety_mix") == (no_shared_data / "safety_mix").resolve()


def test_restricted_license_is_fetched_only_when_named(mirror, no_shared_data, capsys,
                                                       monkeypatch):
    import lasa_steer.cli.data as cli_data

    nc = dataclasses.replace(dataset("nusax_mt"), license="CC BY-NC 4.0",
                             license_class="noncommercial")
    monkeypatch.setattr(cli_data, "select", lambda names: [nc])
    assert main(["data", "fetch", "--mirror", mirror.base]) == 0
    assert "skipped, its license is not an open one; fetch it by name: lasa data fetch " \
        "nusax_mt" in capsys.readouterr().out and mirror.requests == []
    assert main(["data", "fetch", "nusax_mt", "--mirror", mirror.base]) == 0
    assert "license CC BY-NC 4.0" in capsys.readouterr().out
    assert all(nc.destination(no_shared_data, f).is_file() for f in nc.files)


def test_mirror_replaces_scheme_and_host():
    url = "https://raw.githubusercontent.com/o/r/abc/d/f.json"
    assert with_mirror(url, "http://127.0.0.1:8080") == "http://127.0.0.1:8080/o/r/abc/d/f.json"
    assert with_mirror(url, "http://m.local/raw/") == "http://m.local/raw/o/r/abc/d/f.json"
    with pytest.raises(DataError, match="--mirror"):
        with_mirror(url, "m.local")
    with pytest.raises(DataError, match="unknown data set"):
        select(["nope"])


def test_explicit_data_dir_without_the_data_set_names_it(tmp_path):
    with pytest.raises(DataError, match=r"'refusal_direction' .*lasa data fetch "
                                        r"refusal_direction"):
        data_folder("refusal_direction", tmp_path)
