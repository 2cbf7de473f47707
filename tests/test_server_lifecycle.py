"""The server process's life without a model (lasa_serve.lifecycle): the engine closes
inside uvicorn's shutdown, and a dead engine stops the server with ``engine_died`` set.
The real processes (SIGTERM, vLLM's EngineCore killed) are tested in
``tests/vllm_plugin/test_vllm_serve_lifecycle.py``."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
sys.path.insert(0, str(Path(__file__).parent))
from conftest_server import free_port  # noqa: E402


class FakeRuntime:
    def __init__(self) -> None:
        self.closed = 0
        self.up = True
        self.backend = SimpleNamespace(alive=lambda: self.up)

    def close(self) -> None:
        self.closed += 1


def _server(runtime: FakeRuntime):
    from fastapi import FastAPI

    from lasa_serve.lifecycle import ServerProcess

    return ServerProcess(FastAPI(), runtime, host="127.0.0.1", port=free_port(),
                         log_level="warning")


def test_dead_engine_stops_the_server_and_closes_it():
    runtime = FakeRuntime()
    server = _server(runtime)
    threading.Timer(1.0, lambda: setattr(runtime, "up", False)).start()
    start = time.monotonic()
    server.run()  # returns once the watchdog saw the dead engine
    assert server.engine_died and time.monotonic() - start < 10
    assert runtime.closed >= 1


def test_a_stopped_server_closes_its_engine_in_shutdown():
    """Closed inside uvicorn's shutdown: on SIGTERM uvicorn re-raises the signal after it
    returns, so nothing after server.run() would run."""
    runtime = FakeRuntime()
    server = _server(runtime)
    seen = []
    original = server.shutdown

    async def shutdown(sockets=None):
        await original(sockets)
        seen.append(runtime.closed)  # already closed when shutdown() returns

    server.shutdown = shutdown
    threading.Timer(1.0, lambda: setattr(server, "should_exit", True)).start()
    server.run()
    assert seen == [1] and not server.engine_died
