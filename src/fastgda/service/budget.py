"""A shared budget of something the server holds at once (decoded pixels, request body bytes)."""

from __future__ import annotations

import threading


class Budget:
    """Units (pixels, bytes) the server holds at once, all requests together: a request reserves what it will
    hold before it holds it and releases it when done; a reservation that does not fit is refused (503)."""

    def __init__(self, capacity: int):
        self.capacity, self.held = capacity, 0
        self._lock = threading.Lock()

    def try_reserve(self, units: int) -> bool:
        with self._lock:
            if self.held + units > self.capacity:
                return False
            self.held += units
            return True

    def release(self, units: int) -> None:
        with self._lock:
            self.held -= units
