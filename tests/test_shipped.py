"""Shipped vectors (package data under ``lasa_steer/vectors/``) are found by name; a path
always wins over a name; a server folder adds vectors or replaces shipped ones by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from lasa_steer import SteeringVector, VectorFileError
from lasa_steer.cli import main
from lasa_steer.vector.shipped import SHIPPED_DIR, locate, resolve_vector, shipped_vectors

NAME = "smollm2-135m-instruct"
SHIPPED = SHIPPED_DIR / f"{NAME}.safetensors"


@pytest.fixture
def shipped():
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED} is not fitted yet")
    return SHIPPED


def test_shipped_vectors_live_in_the_package(shipped):
    assert SHIPPED_DIR.parent.name == "lasa_steer" and shipped_vectors()[NAME] == shipped


def test_load_by_name_is_the_shipped_file(shipped):
    by_name = SteeringVector.load(NAME)
    assert by_name.path == str(shipped) and by_name.model.name == NAME
    assert by_name.metadata() == SteeringVector.load(shipped).metadata()


def test_an_existing_path_wins_over_a_name(shipped, tmp_path, monkeypatch):
    vec = SteeringVector.load(shipped)
    vec.default_strength = 3.25
    monkeypatch.chdir(tmp_path)
    vec.save(tmp_path / NAME)  # a file called exactly like the shipped name, in the cwd
    assert locate(NAME) == Path(NAME) and Path(NAME).is_file()
    assert SteeringVector.load(NAME).default_strength == 3.25


def test_an_unknown_name_says_what_is_shipped(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VectorFileError, match=r"no-such-vector: .*no shipped vector .*shipped:"):
        SteeringVector.load("no-such-vector")
    # a path (a folder or a suffix) is never looked up by name
    for spec in ("sub/no-such-vector", "no-such-vector.safetensors"):
        assert locate(spec) == Path(spec)
        with pytest.raises(VectorFileError, match="no such vector file$"):
            resolve_vector(spec)


def test_lasa_info_takes_a_name(shipped, capsys):
    assert main(["info", NAME]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"vector       {shipped}"
    assert f"model        {NAME} (" in out


def test_server_folder_adds_and_replaces_shipped_vectors(shipped, tmp_path):
    from lasa_serve.vectors import VectorRegistry

    replaced = SteeringVector.load(shipped)
    replaced.default_strength = 2.5
    replaced.save(tmp_path / f"{NAME}.safetensors")
    SteeringVector.load(shipped).save(tmp_path / "mine.safetensors")
    registry = VectorRegistry(None, tmp_path, check=lambda name, path, vector: None,
                              shipped=SHIPPED_DIR)
    registry.scan()
    assert registry.names() == sorted({*shipped_vectors(), "mine"})
    assert registry.get(NAME).default_strength == 2.5  # the folder's file replaced it
    assert registry.files()[NAME] == tmp_path / f"{NAME}.safetensors"

    only_shipped = VectorRegistry(None, None, check=lambda name, path, vector: None,
                                  shipped=SHIPPED_DIR)
    only_shipped.scan()
    assert only_shipped.names() == sorted(shipped_vectors())
    # an admin (re)load by name finds the shipped file when there is no folder
    assert only_shipped.load(NAME).path == str(shipped)


def test_server_folder_that_does_not_exist_is_an_error(tmp_path):
    from lasa_serve.vectors import VectorRegistry
    from lasa_steer import LasaError

    registry = VectorRegistry(None, tmp_path / "missing", check=lambda *a: None,
                              shipped=SHIPPED_DIR)
    with pytest.raises(LasaError, match="missing: no such folder"):
        registry.scan()


def test_vllm_config_names_the_shipped_file(shipped):
    from lasa_steer.engines.vllm.config import config_entry

    assert config_entry({"a": NAME})["vectors"] == {"a": str(shipped.resolve())}
