"""The HTTP/1.1 protocol the server runs: uvicorn's h11 protocol with a deadline on every request's headers.

uvicorn times out idle keep-alive connections after a response, but not a connection that opens and sends
nothing, nor one that trickles its headers a byte at a time: each holds a socket and a slot of
``--max-connections`` for as long as the client likes. Here every request head (the first on a connection, and
each after a keep-alive response) must arrive within ``head_timeout_s`` or the connection is closed. The body's
own deadline is ``BodyLimitMiddleware``'s (408).
"""

from __future__ import annotations

import json
import os

from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import CONFIG_ENV, ServiceConfig


def _head_timeout() -> float:
    """The served config's ``head_timeout_s`` (worker processes read it from the environment, like the app)."""
    raw = os.environ.get(CONFIG_ENV)
    return ServiceConfig(**json.loads(raw)).head_timeout_s if raw else 10.0


class HeadDeadlineH11Protocol(H11Protocol):
    """``H11Protocol`` that closes a connection whose request headers do not arrive in time."""

    head_timeout_s: float | None = None  # read once per process, on the first connection

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if HeadDeadlineH11Protocol.head_timeout_s is None:
            HeadDeadlineH11Protocol.head_timeout_s = _head_timeout()
        self._head_timer = None
        self._arm()

    def _arm(self) -> None:
        """Start waiting for the next request's headers."""
        self._disarm()
        self._cycle_when_armed = self.cycle
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_expired)

    def _disarm(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and self.cycle is not self._cycle_when_armed:
            self._disarm()  # a new request's headers are complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # keep-alive: the next request's headers are on the clock too

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)
