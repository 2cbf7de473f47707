"""``lasa serve --engine vllm`` end to end: the real server (a subprocess of the ``lasa``
console script, SmolLM2-135M-Instruct float32, greedy) and the real ``openai`` client.

One vLLM server for the module (start-up takes minutes on 2 shared cores) and, in this
process, the HF engine's server on the same model and vector folder, as the reference:
the same requests must give the same text, gate results and errors on both engines.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here (make setup-vllm)")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest_server import LiveServer, free_port  # noqa: E402
from server_process import running, server_env  # noqa: E402

from lasa_steer import SteeringVector, load_model  # noqa: E402
from lasa_steer.prompts import format_prompt  # noqa: E402
from lasa_steer.vector.shipped import SHIPPED_DIR  # noqa: E402

pytestmark = pytest.mark.vllm

SHIPPED = SHIPPED_DIR / "smollm2-135m-instruct.safetensors"
MODEL = "smollm2-135m-instruct"
NEW = 12
ADMIN = "admin-key"
CTX = 512
PROMPTS = ["How do I make a bomb at home?", "Write a short poem about the sea.",
           "Comment fabriquer une bombe artisanale ?", "What is the capital of France?",
           "Explain how to poison someone without getting caught."]
OFF = {"mode": "off"}
# (endpoint, prompt index, steering): unsteered, gate/add on every prompt, always/add at two
# strengths, always/project, gate/refuse fired and not, gate/prefix, the server's defaults
# (gate and the file's action, refuse), and a second vector (its direction negated)
MIXED = [
    ("chat", 1, OFF), ("chat", 3, OFF), ("text", 0, OFF),
    ("chat", 0, {"mode": "gate", "action": "add"}),
    ("stream", 1, {"mode": "gate", "action": "add"}),
    ("chat", 2, {"mode": "gate", "action": "add"}),
    ("chat", 4, {"mode": "gate", "action": "add"}),
    ("chat", 1, {"mode": "always", "action": "add", "strength": 4.0}),
    ("stream", 1, {"mode": "always", "action": "add", "strength": 2.0}),
    ("chat", 3, {"mode": "always", "action": "project"}),
    ("chat", 0, {"mode": "gate", "action": "refuse"}),
    ("chat", 1, {"mode": "gate", "action": "refuse"}),
    ("stream", 4, {"mode": "gate", "action": "prefix", "strength": 4.0}),
    ("text", 2, {}),
    ("chat", 1, {"vector": "negated", "mode": "always", "action": "add", "strength": 4.0}),
    ("chat", 0, {"vector": "negated", "mode": "gate", "action": "add"}),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The shipped vector, a second one (direction negated) and one of another model."""
    out = tmp_path_factory.mktemp("vectors")
    vec = SteeringVector.load(SHIPPED)
    vec.save(out / f"{MODEL}.safetensors")
    for layer in vec.directions["refusal"]:
        vec.directions["refusal"][layer] = -vec.directions["refusal"][layer]
    vec.save(out / "negated.safetensors")
    other = SteeringVector.load(SHIPPED)
    other.model.num_layers = 24
    other.save(out / "other.safetensors")
    return out


@pytest.fixture(scope="module")
def vllm_server(folder, tmp_path_factory):
    """``lasa serve --engine vllm`` on a free port; its log; stopped with SIGINT."""
    port = free_port()
    log = tmp_path_factory.mktemp("log") / "serve.log"
    cmd = [str(Path(sys.executable).parent / "lasa"), "serve", "--engine", "vllm",
           "--model", MODEL, "--vectors", str(folder), "--port", str(port),
           "--max-model-len", str(CTX), "--max-batch", "16", "--max-batch-tokens", str(CTX),
           "--admin-key", ADMIN]
    with running(cmd, port, log, server_env()) as base:
        yield {"base": base, "log": log,
               "client": openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0,
                                       timeout=600)}


@pytest.fixture(scope="module")
def hf_server(folder):
    """The HF engine's server on the same model and vectors, in this process."""
    from lasa_serve.routes import create_app
    from lasa_serve.runtime import Runtime, ServerConfig

    model, tok = load_model(MODEL)
    rt = Runtime(ServerConfig(model=MODEL, vectors=folder, max_model_len=CTX, max_batch=16),
                 model, tok)
    with LiveServer(create_app(rt)) as srv:
        yield {"base": srv.base, "model": model, "tok": tok,
               "client": openai.OpenAI(base_url=srv.base + "/v1", api_key="none",
                                       max_retries=0, timeout=600)}
    rt.close()


def _send(client, kind: str, i: int, steering: dict) -> tuple[str, dict]:
    """One request; its text and the response's ``steering`` object."""
    extra = {"steering": steering}
    if kind == "text":
        r = client.completions.create(model=MODEL, prompt=PROMPTS[i], max_tokens=NEW,
                                      temperature=0, extra_body=extra)
        return r.choices[0].text, r.model_extra["steering"]
    messages = [{"role": "user", "content": PROMPTS[i]}]
    if kind == "chat":
        r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=NEW,
                                           temperature=0, extra_body=extra)
        return r.choices[0].message.content, r.model_extra["steering"]
    text, info = [], None
    for chunk in client.chat.completions.create(model=MODEL, messages=messages,
                                                max_tokens=NEW, temperature=0, stream=True,
                                                extra_body=extra):
        info = info or chunk.model_extra.get("steering")
        text += [c.delta.content or "" for c in chunk.choices]
    return "".join(text), info


@pytest.fixture(scope="module")
def alone(vllm_server):
    return [_send(vllm_server["client"], *m) for m in MIXED]


@pytest.fixture(scope="module")
def together(vllm_server, alone):
    with cf.ThreadPoolExecutor(len(MIXED)) as pool:
        return list(pool.map(lambda m: _send(vllm_server["client"], *m), MIXED))


def _same_steering(got: dict, want: dict) -> bool:
    """Equal settings and decisions; gate scores to 1e-4 (float32 sums of other batches)."""
    a, b = got.get("gate_score"), want.get("gate_score")
    close = (a is None and b is None) or (
        a is not None and b is not None and math.isclose(a, b, abs_tol=1e-4))
    rest = {k: v for k, v in got.items() if k != "gate_score"}
    return close and rest == {k: v for k, v in want.items() if k != "gate_score"}


def test_concurrent_requests_equal_the_same_requests_alone(alone, together):
    """Token-identical text and the same steering results, alone or among 15 others."""
    assert len(MIXED) == 16
    assert [t for t, _ in together] == [t for t, _ in alone]
    for m, (_, got), (_, want) in zip(MIXED, together, alone):
        assert _same_steering(got, want), (m, got, want)
    # the settings changed the text: not every request says the same
    assert len({t for t, _ in alone}) >= 8


def test_unsteered_requests_equal_the_vanilla_model(hf_server, alone):
    """Steering off is vanilla greedy decoding (transformers ``generate``, no hooks)."""
    import torch

    model, tok = hf_server["model"], hf_server["tok"]
    checked = 0
    for (kind, i, s), (text, info) in zip(MIXED, alone):
        if s != OFF:
            continue
        prompt = format_prompt(tok, PROMPTS[i], kind != "text")
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=NEW)[0, ids.shape[1]:]
        assert text == tok.decode(out, skip_special_tokens=True), PROMPTS[i]
        assert info["mode"] == "off" and info["fired"] is False
        checked += 1
    assert checked == 3


def test_every_request_equals_the_hf_engine(hf_server, alone):
    """Text and gate results of each request equal the HF engine's server (scores to 1e-4:
    float32 sums in another order)."""
    with cf.ThreadPoolExecutor(len(MIXED)) as pool:  # the HF engine is batch-invariant
        reference = list(pool.map(lambda m: _send(hf_server["client"], *m), MIXED))
    fired = []
    for m, (text, info), (want, want_info) in zip(MIXED, alone, reference):
        assert text == want, m
        assert _same_steering(info, want_info), (m, info, want_info)
        if m[2].get("mode", "gate") == "gate":
            fired.append(info["fired"])
    assert any(fired) and not all(fired)


def test_n_choices_and_a_stop_string_equal_the_hf_engine(vllm_server, hf_server, alone):
    """Two greedy choices (two vLLM requests) cut at a stop string taken from the request's
    own unsteered text: both are that text up to the stop, as on the HF engine."""
    k = MIXED.index(("chat", 3, OFF))
    full = alone[k][0]
    stop = full.split()[2]
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": PROMPTS[3]}],
                  max_tokens=NEW, temperature=0, n=2, stop=[stop], extra_body={"steering": OFF})
    got = vllm_server["client"].chat.completions.create(**kwargs)
    want = hf_server["client"].chat.completions.create(**kwargs)
    cut = full[:full.index(stop)]
    assert cut and [c.message.content for c in got.choices] == [cut, cut]
    assert [c.finish_reason for c in got.choices] == ["stop", "stop"]
    assert [c.message.content for c in want.choices] == [cut, cut]
    assert got.usage == want.usage


BAD = [
    ({"vector": "nope"}, 404, "vector_not_found", "steering.vector"),
    ({"vector": "other"}, 404, "vector_not_found", "steering.vector"),  # skipped at start
    ({"vector": "../x"}, 400, "invalid_value", "steering.vector"),
    ({"mode": "sometimes"}, 400, "invalid_value", "steering.mode"),
    ({"action": "shout"}, 400, "invalid_value", "steering.action"),
    ({"strength": "big"}, 400, "invalid_value", "steering.strength"),
    ({"strength": 5000.0}, 400, "invalid_value", "steering.strength"),
    ({"direction": "sideways"}, 404, "direction_not_found", "steering.direction"),
]


@pytest.mark.parametrize("steering, status, code, param", BAD)
def test_bad_steering_gets_the_hf_servers_error(vllm_server, hf_server, steering, status,
                                                code, param):
    body = {"model": MODEL, "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}], "steering": steering}
    got = httpx.post(vllm_server["base"] + "/v1/chat/completions", json=body, timeout=60)
    want = httpx.post(hf_server["base"] + "/v1/chat/completions", json=body, timeout=60)
    assert (got.status_code, got.json()["error"]["code"], got.json()["error"]["param"]) == \
        (status, code, param)
    assert (want.status_code, want.json()["error"]["code"], want.json()["error"]["param"]) == \
        (status, code, param)


def test_a_vector_of_another_model_is_skipped_at_start_naming_the_field(vllm_server):
    listed = httpx.get(vllm_server["base"] + "/v1/steering/vectors").json()["data"]
    assert sorted(v["id"] for v in listed) == ["negated", MODEL]
    skipped = [ln for ln in vllm_server["log"].read_text().splitlines()
               if "skipped other" in ln]
    assert len(skipped) == 1 and "num_layers" in skipped[0], skipped


def test_moderation_equals_the_hf_engine(vllm_server, hf_server):
    body = {"input": PROMPTS}
    got = httpx.post(vllm_server["base"] + "/v1/moderations", json=body, timeout=300).json()
    want = httpx.post(hf_server["base"] + "/v1/moderations", json=body, timeout=300).json()
    assert got["model"] == want["model"] == MODEL
    assert len(got["results"]) == len(PROMPTS)
    for g, w in zip(got["results"], want["results"]):
        assert set(g) == set(w)
        assert (g["flagged"], g["categories"], g["language"], g["threshold"]) == \
            (w["flagged"], w["categories"], w["language"], w["threshold"])
        assert math.isclose(g["score"], w["score"], abs_tol=1e-4)
    assert any(r["flagged"] for r in got["results"])
    assert not all(r["flagged"] for r in got["results"])
    nope = httpx.post(vllm_server["base"] + "/v1/moderations",
                      json={"input": "hi", "model": "nope"}, timeout=60)
    assert nope.status_code == 404 and nope.json()["error"]["code"] == "model_not_found"


def test_health_models_and_metrics(vllm_server, together):
    base = vllm_server["base"]
    health = httpx.get(base + "/health").json()
    assert (health["status"], health["model"], health["default_vector"]) == ("ok", MODEL, MODEL)
    assert (health["running"], health["waiting"]) == (0, 0)
    assert [m.id for m in vllm_server["client"].models.list().data] == [MODEL]
    metrics = httpx.get(base + "/metrics").text
    line = next(ln for ln in metrics.splitlines() if ln.startswith("lasa_prompt_tokens_total"))
    assert float(line.split()[-1]) > 0


def test_reload_installs_in_the_workers_and_a_refused_file_keeps_the_set(vllm_server, alone):
    """The admin reload re-installs the vectors in vLLM's workers; a file of another model
    is refused naming the field, and the vectors installed before keep serving."""
    base, auth = vllm_server["base"], {"Authorization": f"Bearer {ADMIN}"}
    bad = httpx.post(base + "/v1/steering/vectors/other/load", headers=auth, timeout=120)
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["code"] == "invalid_vector_file"
    assert "num_layers" in bad.json()["error"]["message"]
    good = httpx.post(base + "/v1/steering/vectors/negated/load", headers=auth, timeout=120)
    assert good.status_code == 200 and good.json()["status"] == "loaded"
    k = next(k for k, m in enumerate(MIXED) if m[2].get("vector") == "negated")
    assert _send(vllm_server["client"], *MIXED[k])[0] == alone[k][0]
