"""lasa vectors in a *plain* vLLM OpenAI server (``python -m
vllm.entrypoints.openai.api_server``) started with the flags ``lasa vllm-args`` prints:
no ``install`` call, the workers install the files named in ``additional_config`` when the
model loads, and each request chooses its steering with ``vllm_xargs``.

The eager and compiled engine tests' mixed batch, sent concurrently through the real
``openai`` client (token-id prompts, so the HF engine's reference sees the same ids):
unsteered requests equal plain transformers greedy decoding, steered ones the HF engine's
steered output, and the gates (read through vLLM's dev-mode ``/collective_rpc`` with the
worker extension's ``lasa_report``) fire on the HF gate's rows. Bad ``vllm_xargs`` are
HTTP 400s naming the key; a vector of another model stops the server's start naming the
field.
"""

from __future__ import annotations

import concurrent.futures as cf
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here (make setup-vllm)")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest_server import free_port  # noqa: E402
from server_process import exit_code, running, server_env  # noqa: E402
from vllm_cases import (MIXED, NEW, VECTOR, check_gates, check_steered,  # noqa: E402
                        check_unsteered, eos_trimmed, hf_greedy)

from lasa_steer import SteeringVector  # noqa: E402
from lasa_steer.engines import vllm as lasa_vllm  # noqa: E402
from lasa_steer.model.embedded import ensure_embedded  # noqa: E402

pytestmark = pytest.mark.vllm
BIN = Path(sys.executable).parent
CTX = 512


def _server_cmd(port: int, vectors: dict[str, str]) -> list[str]:
    """vLLM's OpenAI server (eager: the compiled graph's slots are tested elsewhere) with
    the flags of the ``lasa vllm-args`` console script."""
    pairs = [f"--vector={k}={v}" for k, v in vectors.items()]
    printed = subprocess.run([str(BIN / "lasa"), "vllm-args", *pairs, "--max-model-len",
                              str(CTX)], capture_output=True, text=True, check=True).stdout
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(ensure_embedded()), "--served-model-name", "smol",
            "--dtype", "float32", "--enforce-eager", "--max-num-seqs", "8", "--seed", "0",
            "--port", str(port), *shlex.split(printed)]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("log") / "vllm.log"
    env = server_env(VLLM_SERVER_DEV_MODE="1")  # for /collective_rpc (the report)
    with running(_server_cmd(port, {"smollm2": VECTOR}), port, log, env) as base:
        yield base, openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0,
                                  timeout=600)


def _complete(client, k: int, ids: list[int], steering: dict):
    extra = {"request_id": f"case{k}", "return_token_ids": True}
    if steering:
        extra["vllm_xargs"] = lasa_vllm.xargs(**dict(steering, vector="smollm2"))
    out = client.completions.create(model="smol", prompt=ids, max_tokens=NEW, temperature=0,
                                    extra_body=extra)
    token_ids = out.choices[0].model_extra["token_ids"]
    # the plugin reports vLLM's internal ids: "cmpl-<request_id>-<choice>" + a suffix
    return SimpleNamespace(request_id=f"cmpl-case{k}-0",
                           outputs=[SimpleNamespace(token_ids=token_ids)])


def test_plain_server_mixed_batch(plain, hf, hf_mixed):
    base, client = plain
    model, ids = hf
    with cf.ThreadPoolExecutor(len(MIXED)) as pool:
        outs = list(pool.map(lambda case: _complete(client, case[0], ids[case[1][0]],
                                                     case[1][1]), enumerate(MIXED)))
    reply = httpx.post(base + "/collective_rpc", json={"method": "lasa_report"}, timeout=60)
    assert reply.status_code == 200, reply.text
    report = {lasa_vllm.external_id(k): v for k, v in reply.json()["results"][0].items()}
    vanilla = [eos_trimmed(model, hf_greedy(model, ids[i])[0]) for i, _ in MIXED]
    check_unsteered(outs, report, vanilla)
    check_steered(model, hf_mixed, outs, vanilla)
    check_gates(hf_mixed, outs, report)


@pytest.mark.parametrize("xargs,param,needle", [
    ({"lasa_vector": "nope"}, "vllm_xargs.lasa_vector", "no such vector"),
    ({"lasa_mode": "sometimes"}, "vllm_xargs.lasa_mode", "must be one of"),
    ({"lasa_strength": 1e9}, "vllm_xargs.lasa_strength", "finite number"),
    ({"lasa_colour": "red"}, "vllm_xargs", "unknown steering key"),
])
def test_plain_server_refuses_bad_settings(plain, xargs, param, needle):
    _, client = plain
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smol", max_tokens=2,
                                       messages=[{"role": "user", "content": "Hi"}],
                                       extra_body={"vllm_xargs": xargs})
    assert err.value.status_code == 400
    assert err.value.body["param"] == param
    assert needle in err.value.body["message"]


def test_plain_server_refuses_a_vector_of_another_model(tmp_path):
    other = SteeringVector.load(VECTOR)
    other.model.num_layers = 24
    other.save(tmp_path / "other.safetensors")
    log = tmp_path / "vllm.log"
    cmd = _server_cmd(free_port(), {"other": str(tmp_path / "other.safetensors")})
    assert exit_code(cmd, log, server_env()) != 0
    text = log.read_text()
    assert "VectorMismatchError" in text and "num_layers" in text, text[-3000:]
