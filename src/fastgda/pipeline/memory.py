"""The peak resident memory of this process during a block of work (each build step records its own).

Two figures, because memory-mapped files count as resident while their pages are cached: the whole resident set
(what ``top`` shows), and its anonymous part (the process's own arrays and tensors: what it needs, and what an
out-of-memory kill counts), without the pages of memory-mapped files, which the kernel drops under pressure. An
encoding of 10 GB written through a memory map can show 10 GB resident and need none of it.

The operating system keeps one high-water mark per process (``ru_maxrss``), which only rises: a step after a
larger one would report the larger one's peak. So a sampling thread reads ``/proc/self/status`` every few
milliseconds during the block; where the block raised the process's high-water mark, that exact figure is used
for the whole resident set. Elsewhere than Linux only the high-water mark is known. Memory of other processes
(Ray workers) is not counted.
"""

from __future__ import annotations

import resource
import sys
import threading

SAMPLE_SECONDS = 0.02


def _max_rss_bytes() -> int:
    """The process's high-water mark so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value) if sys.platform == "darwin" else int(value) * 1024


def resident_bytes() -> tuple[int, int] | None:
    """(whole resident set, its anonymous part) now, in bytes; None where ``/proc`` is absent."""
    try:
        with open("/proc/self/status", "rb") as handle:
            fields = dict(
                line.split(b":", 1) for line in handle.read().splitlines() if b":" in line
            )
        kib = {name: int(fields[name].split()[0]) * 1024 for name in (b"VmRSS", b"RssAnon")}
    except (OSError, ValueError, KeyError, IndexError):
        return None
    return kib[b"VmRSS"], kib[b"RssAnon"]


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.bytes`` (the whole resident set's peak during the block)
    and ``peak.anonymous_bytes`` (its anonymous part's; None where it cannot be read)."""

    def __init__(self, interval: float = SAMPLE_SECONDS):
        self.interval, self.bytes, self.anonymous_bytes = interval, 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="peak-memory")

    def __enter__(self) -> PeakMemory:
        self._high_before = _max_rss_bytes()
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._take()
        high = _max_rss_bytes()
        if (
            high > self._high_before
        ):  # the block set a new high for the process: that figure is exact
            self.bytes = max(self.bytes, high)

    def _take(self) -> bool:
        now = resident_bytes()
        if now is None:
            return False
        self.bytes = max(self.bytes, now[0])
        self.anonymous_bytes = max(self.anonymous_bytes or 0, now[1])
        return True

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._take():
                return
