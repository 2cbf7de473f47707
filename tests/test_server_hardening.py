"""Hardening of the server against hostile or careless clients (issue 10): every test
drives a live server with raw HTTP, as a fuzzer or an attacker would."""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_server import LiveServer, write_vectors  # noqa: E402

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m-instruct"
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def live(smollm2, tmp_path_factory):
    from lasa_serve.routes import create_app
    from lasa_serve.runtime import Runtime, ServerConfig

    model, tok = smollm2
    folder = tmp_path_factory.mktemp("vectors")
    write_vectors(folder, model, tok)
    rt = Runtime(ServerConfig(model=MODEL, vectors=folder, default_vector="test-gate",
                              max_model_len=512, default_max_tokens=2), model, tok)
    try:
        with LiveServer(create_app(rt)) as srv, httpx.Client(base_url=srv.base,
                                                             timeout=60) as client:
            yield client, rt, srv.port
    finally:
        rt.close()


def _error(resp: httpx.Response, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    if param is not None:
        assert err["param"] == param, err
    return err


def _keepalive(port: int, method: str, path: str, body: str = "") -> tuple[int, dict]:
    """One request written by hand (httpx cannot encode a lone surrogate), then ``GET
    /v1/models`` on the same keep-alive connection, which must still be open."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body.encode() or None,
                     headers={"content-type": "application/json"})
        first = conn.getresponse()
        status, payload = first.status, json.loads(first.read() or b"null")
        conn.request("GET", "/v1/models")
        assert conn.getresponse().status == 200
        return status, payload
    finally:
        conn.close()


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions",
     '{"model": "%s", "messages": [{"role": "user", "content": "\\ud800 hi"}]}' % MODEL,
     "messages.0.content"),
    ("/v1/chat/completions", '{"model": "%s", "messages": [{"role": "user", "content": '
     '[{"type": "text", "text": "ok"}, {"type": "text", "text": "\\udfff"}]}]}' % MODEL,
     "messages.0.content.1.text"),
    ("/v1/completions", '{"model": "%s", "prompt": "\\udc00x"}' % MODEL, "prompt"),
    ("/v1/completions", '{"model": "%s", "prompt": ["ok", "\\udc00x"]}' % MODEL, "prompt.1"),
    ("/v1/moderations", '{"input": "\\udfff"}', "input"),
    ("/v1/moderations", '{"input": ["fine", "\\ud800"]}', "input.1"),
], ids=["chat", "chat-part", "completion", "completion-list", "moderation", "moderation-list"])
def test_lone_surrogate_is_a_400_and_the_connection_survives(live, path, body, param):
    status, payload = _keepalive(live[2], "POST", path, body)
    err = payload["error"]
    assert status == 400 and err["param"] == param, payload
    assert "surrogate" in err["message"] and err["code"] == "invalid_text"


def test_unexpected_error_keeps_the_connection(live, monkeypatch):
    """A bug answers 500 but does not take the client's keep-alive connection with it."""
    rt = live[1]

    def broken() -> dict:
        raise RuntimeError("bug")

    monkeypatch.setattr(rt.backend, "load", broken)
    status, payload = _keepalive(live[2], "GET", "/health")
    assert status == 500 and payload["error"]["code"] == "internal_error"


def test_reload_of_malformed_vector_file_is_a_400(live):
    """Metadata of the wrong JSON type: 400, and the loaded version keeps serving."""
    from safetensors.torch import save_file

    client, rt, _ = live
    good = rt.vectors.get("test-gate")
    path = rt.vectors.folder / "test-gate.safetensors"
    original = path.read_bytes()
    meta = {**good.metadata(), "clamp_targets": [2.0]}
    save_file(good.tensors(), str(path), metadata={"lasa": json.dumps(meta)})
    rt.config.admin_key = "admin"
    try:
        resp = client.post("/v1/steering/vectors/test-gate/load",
                           headers={"authorization": "Bearer admin"})
    finally:
        rt.config.admin_key = None
        path.write_bytes(original)
    err = _error(resp, 400, "name")
    assert err["code"] == "invalid_vector_file" and "clamp_targets" in err["message"]
    assert rt.vectors.get("test-gate") is good


@pytest.mark.parametrize("path,field,value", [
    ("/v1/chat/completions", "n", "2"),
    ("/v1/chat/completions", "stream", "yes"),
    ("/v1/chat/completions", "top_logprobs", False),
    ("/v1/chat/completions", "logprobs", 0),
    ("/v1/chat/completions", "max_tokens", "3"),
    ("/v1/chat/completions", "temperature", "0.5"),
    ("/v1/chat/completions", "seed", True),
    ("/v1/completions", "logprobs", False),
    ("/v1/completions", "echo", "true"),
    ("/v1/completions", "n", 1.5),
])
def test_loose_types_are_refused(live, path, field, value):
    """Values OpenAI rejects are not coerced: a 400 naming the field."""
    client = live[0]
    body = {"model": MODEL, field: value}
    body.update({"messages": MSGS} if "chat" in path else {"prompt": "hi"})
    _error(client.post(path, json=body), 400, field)


def test_strict_types_keep_valid_values(live):
    client = live[0]
    resp = client.post("/v1/completions", json={
        "model": MODEL, "prompt": "hi", "n": 1, "echo": False, "temperature": 0,
        "max_tokens": 1, "stream": False, "steering": {"mode": "off", "strength": 1}})
    assert resp.status_code == 200, resp.text
    # a JSON number without a fraction is an integer, as in JSON Schema (so in the OpenAPI
    # schema): "n": 1.0 and token id 12.0 are valid, not refused
    resp = client.post("/v1/completions", json={
        "model": MODEL, "prompt": [12.0, 13], "n": 1.0, "max_tokens": 1.0})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {"messages": MSGS, "steering": {"vector": ""}}, "steering.vector"),
    ("/v1/chat/completions", {"messages": MSGS, "steering": {"direction": ""}},
     "steering.direction"),
    ("/v1/completions", {"prompt": "hi", "steering": {"vector": ""}}, "steering.vector"),
    ("/v1/moderations", {"input": "hi", "model": ""}, "model"),
], ids=["chat-vector", "chat-direction", "completion-vector", "moderation-model"])
def test_empty_names_are_refused_not_defaulted(live, path, body, param):
    if "moderations" not in path:
        body = {"model": MODEL, **body}
    _error(live[0].post(path, json=body), 400, param)


def test_health_answers_head(live):
    resp = live[0].head("/health")
    assert resp.status_code == 200 and resp.content == b""


def test_openapi_schema_states_enforced_limits(live):
    """What the server refuses, the schema says (generated clients and fuzzers agree)."""
    schemas = live[0].get("/openapi.json").json()["components"]["schemas"]
    chat, completion = schemas["ChatCompletionRequest"], schemas["CompletionRequest"]
    part = schemas["TextPart"]
    assert part["properties"]["type"].get("const") == "text" and "text" in part["required"]
    assert {"const": False, "type": "boolean"}.items() <= \
        chat["properties"]["logprobs"]["anyOf"][0].items()
    assert completion["properties"]["logprobs"]["anyOf"][0]["maximum"] == 0
    listed = [b for b in schemas["ModerationRequest"]["properties"]["input"]["anyOf"]
              if b.get("type") == "array"]
    assert listed[0]["minItems"] == 1
    assert schemas["Steering"]["properties"]["vector"]["anyOf"][0]["pattern"]


@pytest.mark.parametrize("path,body,param", [
    ("/v1/moderations", {"input": []}, "input"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages.0.content.0.type"),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "logprobs": 2}, "logprobs"),
])
def test_schema_violations_name_the_field(live, path, body, param):
    _error(live[0].post(path, json=body), 400, param)


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {"model": MODEL, "messages": [
        {"role": "user", "content": "one two three four five six seven eight nine ten"}]},
     "messages"),
    ("/v1/completions", {"model": MODEL, "prompt": [[20, 21], list(range(20, 40))]}, "prompt"),
    ("/v1/moderations", {"input": ["hi", "one two three four five six seven eight nine"]},
     "input"),
], ids=["chat", "completion", "moderation"])
def test_prompt_longer_than_max_prompt_tokens_is_a_400(live, path, body, param):
    rt = live[1]
    rt.config.max_prompt_tokens = 8
    try:
        err = _error(live[0].post(path, json=body), 400, param)
    finally:
        rt.config.max_prompt_tokens = None
    assert err["code"] == "context_length_exceeded", err
    assert live[0].post(path, json={**body, "max_tokens": 1} if "moder" not in path
                        else {"input": "hi"}).status_code == 200


def test_limit_flags_reach_the_config():
    import argparse

    from lasa_serve.cli import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--max-prompt-tokens", "100", "--max-batch-tokens",
                              "256", "--max-moderation-inputs", "3"])
    config = config_from_args(args)
    assert (config.max_prompt_tokens, config.max_batch_tokens,
            config.max_moderation_inputs) == (100, 256, 3)


def test_schema_states_vector_name_pattern_and_moderation_count(live):
    client, rt = live[0], live[1]
    spec = client.get("/openapi.json").json()
    params = spec["paths"]["/v1/steering/vectors/{name}/load"]["post"]["parameters"]
    assert params[0]["name"] == "name" and params[0]["schema"]["pattern"]
    listed = [b for b in spec["components"]["schemas"]["ModerationRequest"]["properties"][
        "input"]["anyOf"] if b.get("type") == "array"]
    assert listed[0]["maxItems"] == rt.config.max_moderation_inputs
    too_many = {"input": ["hi"] * (rt.config.max_moderation_inputs + 1)}
    _error(client.post("/v1/moderations", json=too_many), 400, "input")


# ------------------------------------------------------------------ issue 20: strict input
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("steering,key", [
    ({"mode": "always", "strenght": 4}, "strenght"),
    ({"vector": "test-gate", "modes": "off"}, "modes"),
    ({"Mode": "off"}, "Mode"),
])
def test_unknown_steering_key_is_a_400_naming_it(live, path, steering, key):
    """A typo in a safety control is refused, not silently served with the default."""
    body = {"model": MODEL, "max_tokens": 1, "steering": steering}
    body.update({"messages": MSGS} if "chat" in path else {"prompt": "hi"})
    err = _error(live[0].post(path, json=body), 400, f"steering.{key}")
    assert err["code"] == "unknown_parameter" and key in err["message"]
    assert "strength" in err["message"]  # the known keys are listed


@pytest.mark.parametrize("seed", [2 ** 64, 2 ** 70, -(2 ** 63) - 1, 2 ** 63, 2 ** 53])
@pytest.mark.parametrize("stream", [False, True])
def test_seed_outside_the_json_safe_range_is_a_400_naming_seed(live, seed, stream):
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 2, "seed": seed,
            "temperature": 1, "stream": stream}
    err = _error(live[0].post("/v1/chat/completions", json=body), 400, "seed")
    assert err["code"] == "invalid_value"


@pytest.mark.parametrize("seed", [2 ** 53 - 1, -(2 ** 53 - 1)])
def test_extreme_seeds_serve_every_choice(live, seed):
    """The largest and smallest seeds, with n=3 (choice k samples with seed + k)."""
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 2, "seed": seed,
            "temperature": 1, "n": 3}
    resp = live[0].post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["choices"]) == 3


def test_lone_surrogate_in_a_message_name_is_a_400(live):
    body = ('{"model": "%s", "messages": [{"role": "user", "name": "\\ud800x", '
            '"content": "hi"}]}' % MODEL)
    status, payload = _keepalive(live[2], "POST", "/v1/chat/completions", body)
    err = payload["error"]
    assert status == 400 and err["param"] == "messages.0.name", payload
    assert err["code"] == "invalid_text"


def test_lone_surrogate_in_a_stop_string_is_a_400(live):
    body = '{"model": "%s", "prompt": "hi", "stop": ["ok", "\\udfff"]}' % MODEL
    status, payload = _keepalive(live[2], "POST", "/v1/completions", body)
    assert status == 400 and payload["error"]["param"] == "stop.1", payload
    assert payload["error"]["code"] == "invalid_text"


@pytest.mark.parametrize("raw", [b'{"model": "\xff\xfe", "prompt": "hi"}', b"\xc3\x28",
                                 b'{"prompt": "\xed\xa0\x80"}'])
def test_body_that_is_not_utf8_is_invalid_json(live, raw):
    resp = live[0].post("/v1/completions", content=raw,
                        headers={"content-type": "application/json"})
    err = _error(resp, 400, "body")
    assert err["code"] == "invalid_json" and "UTF-8" in err["message"]


def test_malformed_json_names_the_body(live):
    resp = live[0].post("/v1/completions", content=b'{"prompt": ',
                        headers={"content-type": "application/json"})
    err = _error(resp, 400, "body")
    assert err["code"] == "invalid_json"


def test_limits_checked_at_run_time_have_a_code(live):
    client, rt = live[0], live[1]
    n = min(rt.config.max_n, rt.config.max_batch) + 1
    err = _error(client.post("/v1/chat/completions", json={"model": MODEL, "messages": MSGS,
                                                           "n": n}), 400, "n")
    assert err["code"] == "invalid_value"
    too_many = {"input": ["hi"] * (rt.config.max_moderation_inputs + 1)}
    err = _error(client.post("/v1/moderations", json=too_many), 400, "input")
    assert err["code"] == "invalid_value"


@pytest.mark.parametrize("stop,param", [([""], "stop.0"), (["ok", ""], "stop.1"), ("", "stop")])
def test_empty_stop_string_is_refused(live, stop, param):
    err = _error(live[0].post("/v1/completions", json={"model": MODEL, "prompt": "hi",
                                                        "stop": stop}), 400, param)
    assert err["code"] == "invalid_value"


# ------------------------------------------------------------------ issue 20: lifecycle
def test_abandoned_non_streamed_request_frees_its_row(live):
    """The client leaves a 300-token request while its tokens flow: the row is dropped
    within about a second (the disconnect is polled while events arrive, not only when
    they stop)."""
    import socket
    import time

    client, rt, port = live
    body = json.dumps({"model": MODEL, "messages": MSGS, "max_tokens": 300,
                       "temperature": 0}).encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/json\r\nContent-Length: " + str(len(body)).encode()
                  + b"\r\n\r\n" + body)
        deadline = time.monotonic() + 30
        while client.get("/health").json()["running"] == 0:
            assert time.monotonic() < deadline, "the request never ran"
            time.sleep(0.05)
        time.sleep(1.0)
    left = time.monotonic()
    while client.get("/health").json()["running"] and time.monotonic() - left < 10:
        time.sleep(0.05)
    assert client.get("/health").json()["running"] == 0
    assert time.monotonic() - left < 1.5


def test_dead_engine_fails_health(live, monkeypatch):
    client, rt, _ = live
    assert client.get("/health").json()["status"] == "ok"
    monkeypatch.setattr(rt.backend, "alive", lambda: False)
    resp = client.get("/health")
    assert resp.status_code == 503 and resp.json()["status"] == "engine_dead"
    assert client.head("/health").status_code == 503
