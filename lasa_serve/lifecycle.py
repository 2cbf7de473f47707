"""The server process's life: uvicorn plus the engine, stopped together.

* SIGTERM / Ctrl-C: uvicorn stops accepting, lets requests finish (5 s grace), then the
  engine is closed *inside* uvicorn's shutdown. (uvicorn re-raises the signal that stopped
  it once it returns, so code after ``server.run()`` never runs on SIGTERM: closing there
  left vLLM's EngineCore and worker processes running, re-parented to PID 1.)
* A dead engine (vLLM's core process gone, or the HF worker thread): ``/health`` answers 503
  at once (the route asks the backend), in-flight requests get an error from the engine,
  and a watchdog stops the server, which exits with status 3 so that a supervisor restarts
  it. The server does not restart the engine itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import uvicorn

log = logging.getLogger("lasa.server")
WATCH_EVERY = 0.5  # seconds between the watchdog's looks at the engine
GRACE = 5  # seconds uvicorn gives open requests on shutdown


class ServerProcess(uvicorn.Server):
    """uvicorn's server that owns ``runtime``: closes it on shutdown, stops on its death."""

    def __init__(self, app: Any, runtime: Any, **config: Any):
        super().__init__(uvicorn.Config(app, timeout_graceful_shutdown=GRACE, **config))
        self.runtime = runtime
        self.engine_died = False
        self._stop_watch = threading.Event()

    def run(self, sockets: Any = None) -> None:
        watch = threading.Thread(target=self._watch, name="lasa-engine-watchdog", daemon=True)
        watch.start()
        try:
            super().run(sockets)
        finally:
            self._stop_watch.set()
            self.runtime.close()  # idempotent; for exits that skip shutdown()

    async def shutdown(self, sockets: Any = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            log.info("stopping the engine")
            await asyncio.to_thread(self.runtime.close)

    def _watch(self) -> None:
        while not self._stop_watch.wait(WATCH_EVERY):
            if not self.runtime.backend.alive():
                self.engine_died = True
                log.error("the engine died: /health answers 503, the server stops (exit "
                          "status 3; a supervisor should restart it)")
                self.should_exit = True
                return
