"""``lasa serve --engine vllm`` as a process (issue 20): a bounded KV cache, a client that
leaves a non-streamed request frees its slot, SIGTERM stops the engine's processes too, and
a dead engine makes ``/health`` fail, errors the requests in flight and stops the server
(exit status 3). Two servers, each with a 1 GiB KV cache; a few minutes on 2 cores."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here (make setup-vllm)")
httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest_server import free_port  # noqa: E402
from server_process import server_env, stop  # noqa: E402

pytestmark = pytest.mark.vllm
MODEL = "smollm2-135m-instruct"
MSGS = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def _session(sid: int) -> list[psutil.Process]:
    """The live processes of session ``sid`` (the server started a new one)."""
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    return out


def _start(tmp_path: Path, name: str) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = tmp_path / f"{name}.log"
    env = server_env()
    env.pop("VLLM_CPU_KVCACHE_SPACE")  # --kv-space bounds it
    cmd = [str(Path(sys.executable).parent / "lasa"), "serve", "--engine", "vllm",
           "--model", MODEL, "--port", str(port), "--max-model-len", "512",
           "--max-batch", "4", "--max-batch-tokens", "512", "--kv-space", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 900
    while True:
        assert proc.poll() is None, log.read_text()[-4000:]
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return proc, base, log
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, log.read_text()[-4000:]
        time.sleep(1)


def _running(base: str) -> int:
    return int(httpx.get(base + "/health", timeout=5).json()["running"])


def _abandon(base: str, seconds: float) -> None:
    """A non-streamed request of 300 tokens whose client leaves after ``seconds``."""
    port = int(base.rsplit(":", 1)[1])
    body = ('{"model": "%s", "max_tokens": 300, "temperature": 0, "messages": '
            '[{"role": "user", "content": "Write a long story about a lighthouse keeper."}]}'
            % MODEL).encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/json\r\nContent-Length: " + str(len(body)).encode()
                  + b"\r\n\r\n" + body)
        time.sleep(seconds)


def test_kv_space_disconnect_seeds_and_sigterm(tmp_path):
    proc, base, log = _start(tmp_path, "a")
    try:
        assert "vLLM KV cache: --kv-space 1 GiB" in log.read_text()
        assert "Explicitly set (1.0" in log.read_text()  # vLLM's own line
        # a client that leaves a non-streamed request frees its slot within ~1 s
        _abandon(base, 3.0)
        left = time.monotonic()
        while _running(base) and time.monotonic() - left < 10:
            time.sleep(0.1)
        freed = time.monotonic() - left
        assert _running(base) == 0 and freed < 1.5, freed
        # the extreme seeds serve every choice; one beyond them is a 400 naming seed
        for seed in (2 ** 53 - 1, -(2 ** 53 - 1)):
            r = httpx.post(base + "/v1/chat/completions", timeout=120, json={
                "model": MODEL, "messages": MSGS, "max_tokens": 2, "temperature": 1,
                "seed": seed, "n": 3})
            assert r.status_code == 200 and len(r.json()["choices"]) == 3, r.text
        r = httpx.post(base + "/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": MSGS, "max_tokens": 2, "seed": 2 ** 64})
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
        assert len(_session(proc.pid)) >= 3  # the server, vLLM's EngineCore and a worker
        # SIGTERM: the server and every process of its session end within 30 s
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        deadline = time.monotonic() + 30
        while _session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _session(proc.pid) == [], [p.name() for p in _session(proc.pid)]
    finally:
        stop(proc)
        for p in _session(proc.pid):
            p.kill()


def test_dead_engine_fails_health_errors_requests_and_exits(tmp_path):
    proc, base, log = _start(tmp_path, "b")
    try:
        core = [p for p in _session(proc.pid) if "EngineCore" in " ".join(
            [p.name(), *p.cmdline()])]
        assert core, [(p.name(), p.cmdline()) for p in _session(proc.pid)]
        with cf.ThreadPoolExecutor(1) as pool:
            inflight = pool.submit(httpx.post, base + "/v1/chat/completions", timeout=120,
                                   json={"model": MODEL, "messages": MSGS,
                                         "max_tokens": 300, "temperature": 0})
            time.sleep(2.0)
            core[0].kill()
            killed = time.monotonic()
            status = None
            while time.monotonic() - killed < 10:
                try:
                    status = httpx.get(base + "/health", timeout=2).status_code
                except httpx.HTTPError:
                    status = "gone"
                if status != 200:
                    break
                time.sleep(0.2)
            assert status != 200 and time.monotonic() - killed < 10
            r = inflight.result(60)  # an error, not a hang
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead", r.text
        assert proc.wait(60) == 3, log.read_text()[-3000:]
        deadline = time.monotonic() + 30
        while _session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _session(proc.pid) == []
    finally:
        stop(proc)
        for p in _session(proc.pid):
            p.kill()
