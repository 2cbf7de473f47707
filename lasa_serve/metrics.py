"""Prometheus text-format metrics, kept by hand (no extra dependency).

Counters and histograms are updated from the web side and from the model worker, so every
update takes one lock.
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {c}'
               for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum:.6f}", f"{name}_count{suffix} {self.total}"]
        return out


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.http_latency: dict[str, _Histogram] = {}
        self.gen_latency = _Histogram(LATENCY_BUCKETS)
        self.batch_sizes = _Histogram(BATCH_BUCKETS)
        self.prompt = 0
        self.completion = 0
        self.gate_evaluated = 0
        self.gate_fired = 0
        self.steered = 0
        self.moderated = 0
        self.moderation_flagged = 0
        self.running = 0
        self.waiting = 0

    def request(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(path, status)] += 1
            self.http_latency.setdefault(path, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def prompt_tokens(self, n: int) -> None:
        with self._lock:
            self.prompt += n

    def completion_tokens(self, n: int) -> None:
        with self._lock:
            self.completion += n

    def gate(self, fired: bool, evaluated: bool) -> None:
        with self._lock:
            self.gate_evaluated += int(evaluated)
            self.gate_fired += int(fired and evaluated)
            self.steered += int(fired)

    def gate_scored(self, inputs: int, flagged: int) -> None:
        with self._lock:
            self.moderated += inputs
            self.moderation_flagged += flagged

    def latency(self, seconds: float) -> None:
        with self._lock:
            self.gen_latency.observe(seconds)

    def batch(self, rows: int) -> None:
        with self._lock:
            self.batch_sizes.observe(rows)

    def set_load(self, running: int, waiting: int) -> None:
        self.running, self.waiting = running, waiting

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP lasa_requests_total HTTP requests by path and status.",
                     "# TYPE lasa_requests_total counter"]
            for (path, status), n in sorted(self.requests.items()):
                lines.append(f'lasa_requests_total{{path="{path}",status="{status}"}} {n}')
            lines += ["# HELP lasa_request_duration_seconds HTTP request latency.",
                      "# TYPE lasa_request_duration_seconds histogram"]
            for path, h in sorted(self.http_latency.items()):
                lines += h.lines("lasa_request_duration_seconds", f'path="{path}"')
            lines += ["# HELP lasa_generation_seconds Time from submission to the last token.",
                      "# TYPE lasa_generation_seconds histogram"]
            lines += self.gen_latency.lines("lasa_generation_seconds")
            lines += ["# HELP lasa_decode_batch_rows Rows per decode step.",
                      "# TYPE lasa_decode_batch_rows histogram"]
            lines += self.batch_sizes.lines("lasa_decode_batch_rows")
            for name, kind, value, help_ in (
                ("lasa_prompt_tokens_total", "counter", self.prompt, "Prompt tokens prefilled."),
                ("lasa_completion_tokens_total", "counter", self.completion,
                 "Tokens generated."),
                ("lasa_gate_evaluations_total", "counter", self.gate_evaluated,
                 "Prompts scored by the gate during generation."),
                ("lasa_gate_fires_total", "counter", self.gate_fired,
                 "Prompts whose gate score passed the threshold."),
                ("lasa_steered_requests_total", "counter", self.steered,
                 "Requests steered (gate fired or mode 'always')."),
                ("lasa_moderation_inputs_total", "counter", self.moderated,
                 "Texts scored by /v1/moderations."),
                ("lasa_moderation_flagged_total", "counter", self.moderation_flagged,
                 "Texts flagged by /v1/moderations."),
                ("lasa_running_rows", "gauge", self.running, "Rows in the running batch."),
                ("lasa_waiting_requests", "gauge", self.waiting, "Requests waiting to join."),
            ):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"
