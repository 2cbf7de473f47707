"""A server started as a subprocess for the vLLM server tests: wait until ``/health``
answers (or fail with the log's tail), stop it with SIGINT (then SIGKILL) afterwards."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a vLLM server subprocess: offline, a small KV cache, vLLM's
    own engine-core process (the in-process LLM tests switch that off)."""
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", **extra)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    return env


@contextlib.contextmanager
def running(cmd: list[str], port: int, log: Path, env: dict[str, str],
            timeout: float = 900) -> Iterator[str]:
    """Run ``cmd`` (a server on ``port``, output to ``log``); yield its base URL once
    ``/health`` answers 200. Raise with the log's tail if it exits or never answers."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}:\n"
                                   + log.read_text()[-4000:])
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"{cmd[:3]} did not start:\n" + log.read_text()[-4000:])
            time.sleep(1)
        yield base
    finally:
        stop(proc)


def exit_code(cmd: list[str], log: Path, env: dict[str, str], timeout: float = 900) -> int:
    """Run ``cmd`` (a server expected to refuse to start) to its end; its exit status."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        return proc.wait(timeout)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
