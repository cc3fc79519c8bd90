"""ASGI middleware: the request body limit, and one structured log line plus metrics per request."""

from __future__ import annotations

import json
import logging
import time
import uuid

import anyio
from starlette.routing import Match

from .metrics import Metrics

logger = logging.getLogger("fastgda.service")


class _BodyTooLarge(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyLimitMiddleware:
    """Answer 413 to a body above ``max_bytes``: at once from Content-Length, or as soon as a streamed (chunked)
    body passes the limit, before the application reads any more of it; and 408 to a body that has not fully
    arrived ``timeout_s`` seconds after the application began reading it (slow or stalled clients)."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 30.0):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = {"detail": f"the request body is larger than {self.max_bytes} bytes"}
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, too_large)
        received, started, complete, deadline = 0, False, False, None

        async def limited_receive():
            nonlocal received, complete, deadline
            if complete:  # after the body, receive only waits for a disconnect: no deadline
                return await receive()
            deadline = deadline or time.monotonic() + self.timeout_s
            try:
                with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                    event = await receive()
            except TimeoutError:
                raise _BodyTooSlow from None
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                complete = not event.get("more_body", False)
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return event

        async def tracking_send(event):
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, too_large)
        except _BodyTooSlow:
            if not started:
                detail = f"the request body did not arrive within {self.timeout_s:g} s"
                await _send_json(send, 408, {"detail": detail}, [(b"connection", b"close")])


# Methods a metric may be labelled with: clients choose the method, and any other string would add a series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
CLIENT_CLOSED = 499  # nginx's status for a client that went away before the answer (never sent)


class AccessLogMiddleware:
    """Times every request, records it in ``metrics`` under its route template, and logs one JSON line."""

    def __init__(self, app, metrics: Metrics, routes):
        self.app, self.metrics, self.routes = app, metrics, routes

    def _route(self, scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
        return (
            "unmatched"  # never the raw path: clients choose it, and it would explode the label set
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), 500
        request_id = uuid.uuid4().hex[:12]

        async def recording_send(event):
            nonlocal status
            if event["type"] == "http.response.start":
                status = event["status"]
                event = {
                    **event,
                    "headers": [*event["headers"], (b"x-request-id", request_id.encode())],
                }
            await send(event)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            seconds = time.perf_counter() - began
            route = self._route(scope)
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.metrics.observe(method, route, status, seconds)
            logger.info(
                json.dumps(
                    {
                        "event": "request",
                        "request_id": request_id,
                        "method": method,
                        "route": route,
                        "status": status,
                        "ms": round(seconds * 1000, 2),
                    }
                )
            )
