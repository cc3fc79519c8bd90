"""The peak resident memory of this process during a block of work (each build step records its own).

The operating system keeps one high-water mark per process (``ru_maxrss``), which only rises: a step after a
larger one would report the larger one's peak. So a sampling thread reads the current resident size
(``/proc/self/statm`` on Linux) every few milliseconds during the block; where the block raised the process's
high-water mark, that exact figure is used instead. Memory of other processes (Ray workers) is not counted.
"""

from __future__ import annotations

import os
import resource
import sys
import threading

SAMPLE_SECONDS = 0.02


def _max_rss_bytes() -> int:
    """The process's high-water mark so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024


def current_rss_bytes() -> int | None:
    """The resident size now, or None where ``/proc`` is absent."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.bytes``: the most resident memory during the block."""

    def __init__(self, interval: float = SAMPLE_SECONDS):
        self.interval, self.bytes = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="peak-memory")

    def __enter__(self) -> PeakMemory:
        self._high_before = _max_rss_bytes()
        self.bytes = current_rss_bytes() or 0
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        high = _max_rss_bytes()
        if (
            high > self._high_before
        ):  # the block set a new high for the process: that figure is exact
            self.bytes = max(self.bytes, high)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = current_rss_bytes()
            if now is None:
                return
            self.bytes = max(self.bytes, now)
