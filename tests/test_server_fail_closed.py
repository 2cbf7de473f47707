"""The server fails closed (issue 18.1): without a vector that fits the served model it
refuses to start, naming the model and why each file was rejected, unless started with
``--allow-unsteered``; then ``/health`` and ``/v1/models`` say steering is off and a
request that asks for steering is refused, never served unsteered."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

pytest.importorskip("fastapi")
sys.path.insert(0, str(Path(__file__).parent))
from conftest_server import LiveServer  # noqa: E402

from lasa_steer import LasaError, SteeringVector  # noqa: E402
from lasa_steer.vector.shipped import SHIPPED_DIR  # noqa: E402

pytestmark = pytest.mark.slow
SHIPPED = SHIPPED_DIR / "smollm2-135m-instruct.safetensors"
MODEL = "smollm2-135m-instruct"
MSGS = [{"role": "user", "content": "Hi"}]


def _other_models_vector(folder: Path) -> None:
    """A vector of another model (24 blocks, SmolLM2 has 30) and a file that is no vector."""
    if not SHIPPED.is_file():
        pytest.skip("the shipped vector is absent")
    vec = SteeringVector.load(SHIPPED)
    vec.model.num_layers = 24
    folder.mkdir(parents=True, exist_ok=True)
    vec.save(folder / "other-model.safetensors")
    (folder / "garbage.safetensors").write_bytes(b"not a safetensors file")


def _runtime(smollm2, folder: Path, **config):
    from lasa_serve.runtime import Runtime, ServerConfig

    model, tok = smollm2
    return Runtime(ServerConfig(model=MODEL, vectors=folder, default_max_tokens=2, **config),
                   model, tok)


def test_start_with_only_another_models_vector_is_refused(smollm2, tmp_path):
    _other_models_vector(tmp_path / "v")
    with pytest.raises(LasaError) as info:
        _runtime(smollm2, tmp_path / "v")
    msg = str(info.value)
    assert f"no steering vector fits the served model {MODEL}" in msg
    # each file with the reason it was rejected: the field that does not fit, the bad file
    assert "other-model.safetensors: " in msg and "num_layers" in msg
    assert "garbage.safetensors: " in msg
    assert "--allow-unsteered" in msg


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_start_without_vector_files_is_refused(smollm2, tmp_path, make):
    folder = tmp_path / "v"
    if make == "empty":
        folder.mkdir()
    with pytest.raises(LasaError, match="no such folder" if make == "missing"
                       else "no .safetensors file in"):
        _runtime(smollm2, folder)


def test_lasa_serve_exits_nonzero_without_serving(tmp_path, capsys):
    """The command: exit status 1 and the reason on stderr, before it listens."""
    from lasa_steer.cli.main import main

    (tmp_path / "empty").mkdir()
    assert main(["serve", "--no-shipped-vectors", "--vectors", str(tmp_path / "empty"),
                 "--port", "1", "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "lasa serve: error: no steering vector fits the served model" in err
    assert "--allow-unsteered" in err


def test_allow_unsteered_says_steering_is_off_and_refuses_steered_requests(smollm2, tmp_path):
    from lasa_serve.routes import create_app

    _other_models_vector(tmp_path / "v")
    rt = _runtime(smollm2, tmp_path / "v", allow_unsteered=True)
    try:
        with LiveServer(create_app(rt)) as srv, httpx.Client(base_url=srv.base,
                                                             timeout=60) as c:
            health = c.get("/health")
            assert health.status_code == 200
            assert health.json()["steering"] == "off"
            assert health.json()["default_vector"] is None
            assert c.get("/v1/models").json()["data"][0]["steering"] == "off"
            assert c.get(f"/v1/models/{MODEL}").json()["steering"] == "off"
            # no steering asked: served, and the response says it was not steered
            r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": MSGS})
            assert r.status_code == 200 and r.json()["steering"]["mode"] == "off"
            r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": MSGS,
                                                     "steering": {"mode": "off"}})
            assert r.status_code == 200
            # steering asked for: an error, on both endpoints, streamed or not
            for body in ({"model": MODEL, "messages": MSGS, "steering": {"mode": "always"}},
                         {"model": MODEL, "messages": MSGS, "steering": {"strength": 4.0}},
                         {"model": MODEL, "messages": MSGS, "stream": True,
                          "steering": {"mode": "gate"}},
                         {"model": MODEL, "prompt": "Hi", "steering": {"action": "add"}}):
                path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
                r = c.post(path, json=body)
                assert r.status_code == 400, (body, r.text)
                err = r.json()["error"]
                assert err["param"] == "steering" and err["code"] == "steering_unavailable"
            r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": MSGS,
                                                     "steering": {"vector": "other-model"}})
            assert r.status_code == 404 and r.json()["error"]["code"] == "vector_not_found"
            assert c.post("/v1/moderations", json={"input": "hi"}).status_code == 404
    finally:
        rt.close()


def test_a_fitting_vector_turns_steering_on(smollm2, tmp_path):
    from lasa_serve.routes import create_app

    if not SHIPPED.is_file():
        pytest.skip("the shipped vector is absent")
    (tmp_path / "v").mkdir()
    SteeringVector.load(SHIPPED).save(tmp_path / "v" / f"{MODEL}.safetensors")
    rt = _runtime(smollm2, tmp_path / "v")
    try:
        with LiveServer(create_app(rt)) as srv, httpx.Client(base_url=srv.base,
                                                             timeout=60) as c:
            assert c.get("/health").json()["steering"] == "on"
            assert c.get("/v1/models").json()["data"][0]["steering"] == "on"
    finally:
        rt.close()
