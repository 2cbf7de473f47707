"""Wall time per fit step: a fit's total time alone does not say which step to speed up
(issue 21 asks for a one-command fit in about 20 minutes on 2 CPU cores)."""

from __future__ import annotations

import logging
import time


class StepClock:
    """Records the seconds since the previous mark under each step's name, and logs them
    (a ``--no-progress`` fit then still shows where it is)."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._last = time.perf_counter()
        self.steps: dict[str, float] = {}

    def mark(self, step: str) -> None:
        now = time.perf_counter()
        self.steps[step] = round(self.steps.get(step, 0.0) + now - self._last, 1)
        self._last = now
        self._log.info("%s: %.0f s", step, self.steps[step])
