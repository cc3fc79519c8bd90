"""Request counters and latency histograms in the Prometheus text exposition format (no client library)."""

from __future__ import annotations

import threading
from collections import defaultdict

# Seconds; attribution answers in milliseconds, generation in about a second on a CPU.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Thread-safe request metrics, labelled by route template (never the raw path) and status."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._buckets: dict[tuple[str, str], list[int]] = defaultdict(
            lambda: [0] * len(LATENCY_BUCKETS)
        )
        self._sums: dict[tuple[str, str], float] = defaultdict(float)
        self._counts: dict[tuple[str, str], int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, status)] += 1
            key = (method, route)
            buckets = self._buckets[key]
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self._sums[key] += seconds
            self._counts[key] += 1

    def render(self, counters: dict[str, tuple[str, float]] | None = None) -> str:
        """The exposition text; ``counters``: more counters, name -> (help, value)."""
        lines = []
        for name, (text, value) in (counters or {}).items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} counter", f"{name} {value}"]
        lines += [
            "# HELP fastgda_requests_total HTTP requests by method, route and status.",
            "# TYPE fastgda_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), count in sorted(self._requests.items()):
                lines.append(
                    f'fastgda_requests_total{{method="{method}",route="{route}",status="{status}"}} {count}'
                )
            lines += [
                "# HELP fastgda_request_duration_seconds Time from request to response.",
                "# TYPE fastgda_request_duration_seconds histogram",
            ]
            for (method, route), buckets in sorted(self._buckets.items()):
                labels = f'method="{method}",route="{route}"'
                for bound, count in zip(LATENCY_BUCKETS, buckets, strict=True):
                    lines.append(
                        f'fastgda_request_duration_seconds_bucket{{{labels},le="{bound}"}} {count}'
                    )
                total = self._counts[(method, route)]
                lines.append(
                    f'fastgda_request_duration_seconds_bucket{{{labels},le="+Inf"}} {total}'
                )
                lines.append(
                    f"fastgda_request_duration_seconds_sum{{{labels}}} {self._sums[(method, route)]:.6f}"
                )
                lines.append(f"fastgda_request_duration_seconds_count{{{labels}}} {total}")
        return "\n".join(lines) + "\n"
