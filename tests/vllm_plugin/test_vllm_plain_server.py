"""lasa vectors in a *plain* vLLM OpenAI server (``python -m
vllm.entrypoints.openai.api_server``) started with the flags ``lasa vllm-args`` prints:
no ``install`` call, the workers install the files named in ``additional_config`` when the
model loads, and each request chooses its steering with ``vllm_xargs``.

The eager and compiled engine tests' mixed batch, sent concurrently through the real
``openai`` client (token-id prompts, so the HF engine's reference sees the same ids), to
the server in vLLM's default compiled mode (the vectors installed before it compiles):
unsteered requests equal plain transformers greedy decoding, steered ones the HF engine's
steered output, and the gates (read through vLLM's dev-mode ``/collective_rpc`` with the
worker extension's ``lasa_report``) fire on the HF gate's rows. Bad ``vllm_xargs`` are
HTTP 400s naming the key; a vector of another model stops the server's start naming the
field; two tensor-parallel ranks (eager) give the same results and decide alike.
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


def _server_cmd(port: int, vectors: dict[str, str], *extra: str,
                model: str | None = None) -> list[str]:
    """vLLM's OpenAI server (its default compiled mode unless ``extra`` says
    ``--enforce-eager``; SmolLM2 unless ``model``) with the flags of the ``lasa vllm-args``
    console script."""
    pairs = [f"--vector={k}={v}" for k, v in vectors.items()]
    printed = subprocess.run([str(BIN / "lasa"), "vllm-args", *pairs, "--max-model-len",
                              str(CTX)], capture_output=True, text=True, check=True).stdout
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model or str(ensure_embedded()), "--served-model-name", "smol",
            "--dtype", "float32", "--max-num-seqs", "8", "--seed", "0",
            "--port", str(port), *shlex.split(printed), *extra]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("log") / "vllm.log"
    env = server_env(VLLM_SERVER_DEV_MODE="1")  # for /collective_rpc (the report)
    with running(_server_cmd(port, {"smollm2": VECTOR}), port, log, env) as base:
        yield base, openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0,
                                  timeout=600), log


def _complete(client, request_id: str, ids: list[int], steering: dict, vector: str,
              max_tokens: int) -> list[int]:
    """A greedy token-id completion with ``steering`` as ``vllm_xargs``; its tokens. The
    plugin reports it as ``cmpl-<request_id>-0`` (vLLM's internal id, suffix stripped)."""
    extra = {"request_id": request_id, "return_token_ids": True}
    if steering:
        extra["vllm_xargs"] = lasa_vllm.xargs(**dict(steering, vector=vector))
    out = client.completions.create(model="smol", prompt=ids, max_tokens=max_tokens,
                                    temperature=0, extra_body=extra)
    return out.choices[0].model_extra["token_ids"]


def _report(base: str) -> list[dict[str, dict]]:
    """Every rank's ``lasa_report``, by the caller's request ids."""
    reply = httpx.post(base + "/collective_rpc", json={"method": "lasa_report"}, timeout=60)
    assert reply.status_code == 200, reply.text
    return [{lasa_vllm.external_id(k): v for k, v in r.items()}
            for r in reply.json()["results"]]


def _mixed_batch(base: str, client, hf, hf_mixed) -> None:
    """The mixed batch, sent concurrently, against the HF engine."""
    model, ids = hf
    with cf.ThreadPoolExecutor(len(MIXED)) as pool:
        got = list(pool.map(lambda case: _complete(client, f"case{case[0]}", ids[case[1][0]],
                                                    case[1][1], "smollm2", NEW),
                            enumerate(MIXED)))
    outs = [SimpleNamespace(request_id=f"cmpl-case{k}-0",  # what the shared checks read
                            outputs=[SimpleNamespace(token_ids=t)]) for k, t in enumerate(got)]
    report, = _report(base)
    vanilla = [eos_trimmed(model, hf_greedy(model, ids[i])[0]) for i, _ in MIXED]
    check_unsteered(outs, report, vanilla)
    check_steered(model, hf_mixed, outs, vanilla)
    check_gates(hf_mixed, outs, report)


def test_plain_server_mixed_batch(plain, hf, hf_mixed):
    base, client, log = plain
    assert "CompilationMode.DYNAMO_TRACE_ONCE" in log.read_text()  # vLLM's CPU default
    _mixed_batch(base, client, hf, hf_mixed)


@pytest.mark.parametrize("xargs,param,needle", [
    ({"lasa_vector": "nope"}, "vllm_xargs.lasa_vector", "no such vector"),
    ({"lasa_mode": "sometimes"}, "vllm_xargs.lasa_mode", "must be one of"),
    ({"lasa_strength": 1e9}, "vllm_xargs.lasa_strength", "finite number"),
    ({"lasa_colour": "red"}, "vllm_xargs", "unknown steering key"),
])
def test_plain_server_refuses_bad_settings(plain, xargs, param, needle):
    _, client, _ = plain
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
    cmd = _server_cmd(free_port(), {"other": str(tmp_path / "other.safetensors")},
                      "--enforce-eager")
    assert exit_code(cmd, log, server_env()) != 0
    text = log.read_text()
    assert "VectorMismatchError" in text and "num_layers" in text, text[-3000:]


# ------------------------------------------------------------------ tensor parallel
TP_NEW = 8


def _tiny_folder(path: Path) -> Path:
    """A randomly initialised Llama whose 4 heads split over 2 ranks (SmolLM2's 9 do not),
    with SmolLM2's tokenizer files."""
    import shutil

    import torch
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=512,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                            tie_word_embeddings=False, torch_dtype="float32")
    tf.LlamaForCausalLM(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ensure_embedded() / name, path / name)
    return path


def _hf_run(model, vector: Path, ids: list[int], steering: dict):
    """The HF engine's greedy tokens (to the first end of sequence) and ``(score, fired)``."""
    out, gate = hf_greedy(model, ids, vector=vector, new=TP_NEW, **steering)
    return eos_trimmed(model, out), None if gate is None else gate[:2]


def test_plain_server_tensor_parallel(tmp_path):
    """Two tensor-parallel ranks on the CPU (vLLM's multiprocessing executor; eager): gate
    and always requests equal the HF engine's output, both ranks report the same decisions
    (each decides alone from the same all-reduced block outputs), and the gates fire on
    the HF gate's rows."""
    import os
    import random

    import torch

    from helpers import make_vector

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("two tensor-parallel CPU workers need two cores")
    from transformers import AutoModelForCausalLM

    folder = _tiny_folder(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 5000) for _ in range(n)] for n in (5, 9, 14, 20, 27, 33)]
    path = tmp_path / "tiny.safetensors"
    make_vector(model, gate_layer=1, threshold=0.0, norm=8.0).save(path)
    scores = sorted(_hf_run(model, path, p, {"mode": "gate", "action": "add",
                                             "strength": 0.0})[1][0] for p in prompts)
    # a threshold between the middle scores, so that half the gates fire
    make_vector(model, gate_layer=1, threshold=(scores[2] + scores[3]) / 2, norm=8.0).save(path)
    cases = [(i, {"mode": "gate", "action": "add", "strength": 4.0})
             for i in range(len(prompts))] + \
        [(0, {}), (3, {"mode": "always", "action": "add", "strength": 4.0}),
         (4, {"mode": "always", "action": "project"})]
    expected = [_hf_run(model, path, prompts[i], s) for i, s in cases]
    plain = [_hf_run(model, path, p, {})[0] for p in prompts]

    port = free_port()
    cmd = _server_cmd(port, {"tiny": str(path)}, "--tensor-parallel-size", "2",
                      "--enforce-eager", model=str(folder))
    # one core per rank (vLLM's automatic binding wants a NUMA node per worker)
    env = server_env(VLLM_SERVER_DEV_MODE="1", VLLM_CPU_OMP_THREADS_BIND=f"{cores[0]}|{cores[1]}")
    with running(cmd, port, tmp_path / "vllm.log", env) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0,
                               timeout=600)

        with cf.ThreadPoolExecutor(len(cases)) as pool:
            got = list(pool.map(lambda k: _complete(client, f"tp{k}", prompts[cases[k][0]],
                                                    cases[k][1], "tiny", TP_NEW),
                                range(len(cases))))
        reports = _report(base)
    assert len(reports) == 2
    assert {k: reports[1][k] for k in reports[0]} == reports[0]
    fired = []
    for k, ((i, steering), (tokens, gate)) in enumerate(zip(cases, expected)):
        assert got[k] == tokens, (k, steering)
        rep = reports[0][f"cmpl-tp{k}-0"]
        if steering.get("mode") == "gate":
            assert rep["fired"] is gate[1]
            assert abs(rep["gate_score"] - gate[0]) <= 1e-4 * max(1.0, abs(gate[0]))
            fired.append(gate[1])
    assert any(fired) and not all(fired)
    # steering changed the text of the fired and always rows (so it ran on both ranks)
    changed = [got[k] != plain[i] for k, (i, s) in enumerate(cases) if s]
    assert sum(changed) >= 3, changed
