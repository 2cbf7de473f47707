"""``lasa serve`` as users start it: a subprocess on a free port, startup logs, one call."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest_server import free_port  # noqa: E402
from lasa_steer.vector.shipped import SHIPPED_DIR  # noqa: E402

LASA = Path(sys.executable).parent / "lasa"


def _wait_healthy(proc, base: str, log) -> None:
    """Poll /health until the server answers; fail with its log if it dies or never does."""
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise AssertionError("server did not become healthy in 120 s:\n" + log.read_text())

def test_serve_help_lists_options():
    out = subprocess.run([str(LASA), "serve", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    for flag in ("--model", "--vectors", "--host", "--port", "--api-key", "--max-batch",
                 "--max-body-bytes", "--default-vector", "--log-level"):
        assert flag in out


@pytest.mark.slow
def test_serve_subprocess_logs_and_answers(smollm2, tmp_path):
    from conftest_server import make_test_vector

    model, tok = smollm2
    make_test_vector(model, tok).save(tmp_path / "vecs" / "smollm2-135m-instruct.safetensors")
    (tmp_path / "vecs" / "broken.safetensors").write_bytes(b"garbage")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(LASA), "serve", "--vectors", str(tmp_path / "vecs"),
                                 "--port", str(port), "--api-key", "k1", "--threads", "1"],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, base, log)
        text = log.read_text()
        assert "model smollm2-135m-instruct" in text
        assert "default vector smollm2-135m-instruct: gate at block 14" in text
        assert "threshold" in text and "skipped broken" in text
        import openai

        client = openai.OpenAI(base_url=base + "/v1", api_key="k1", max_retries=0)
        r = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=4,
                                           messages=[{"role": "user", "content": "Hi"}])
        assert r.model_extra["steering"]["vector"] == "smollm2-135m-instruct"
        assert httpx.get(base + "/v1/models").status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_serve_without_arguments_uses_shipped_vector(tmp_path):
    """No --model/--vectors: the embedded model with the repository's shipped vector."""
    shipped = SHIPPED_DIR / "smollm2-135m-instruct.safetensors"
    if not shipped.is_file():
        pytest.skip("the shipped vector is not fitted yet")
    from lasa_steer import SteeringVector

    gate = SteeringVector.load(shipped).gate
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(LASA), "serve", "--port", str(port)], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, base, log)
        text = log.read_text()
        assert f"default vector smollm2-135m-instruct: gate at block {gate.layer}" in text
        assert f"threshold {gate.threshold:.4g}" in text
        r = httpx.post(base + "/v1/moderations", json={"input": "Hello there"}).json()
        result = r["results"][0]  # the threshold of the language the gate identified
        assert r["model"] == "smollm2-135m-instruct" and result["threshold"] == \
            pytest.approx(gate.threshold_for(result["language"]))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
