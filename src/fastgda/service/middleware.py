"""ASGI middleware: the request body limit, clients that leave, security headers, and one structured log line
plus metrics per request."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import anyio
from starlette.routing import Match

from .metrics import Metrics

logger = logging.getLogger("fastgda.service")

# Scope keys shared by the middleware and the handlers: the request's "client left" flag (a threading.Event the
# pool's work checks between chunks), and the status the access log records instead of the one sent.
CLIENT_LEFT = "fastgda.client_left"
STATUS_OVERRIDE = "fastgda.status_override"


class _BodyTooLarge(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


class _BodiesOverBudget(Exception):
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
    body passes the limit, before the application reads any more of it; 408 to a body that has not fully
    arrived ``timeout_s`` seconds after the application began reading it (slow or stalled clients); and 503 with
    Retry-After when the bodies of all requests together would pass ``budget`` (a ``Budget`` of bytes: a
    declared body is reserved whole before it is read, a streamed one as it arrives; released when the request
    ends), so that many clients sending large bodies at once cannot exhaust the server's memory."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 30.0, budget=None):
        self.app, self.max_bytes, self.timeout_s, self.budget = app, max_bytes, timeout_s, budget

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = {"detail": f"the request body is larger than {self.max_bytes} bytes"}
        busy = {
            "detail": "the server holds as many request bodies as it can at once; retry shortly"
        }
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, too_large)
        reserved = 0
        if declared is not None and declared.isdigit() and self.budget is not None:
            if not self.budget.try_reserve(int(declared)):
                return await _send_json(send, 503, busy, [(b"retry-after", b"1")])
            reserved = int(declared)
        try:
            await self._limited(scope, receive, send, reserved, too_large, busy)
        finally:
            if self.budget is not None:
                self.budget.release(reserved)

    async def _limited(self, scope, receive, send, reserved: int, too_large: dict, busy: dict):
        received, started, complete, deadline = 0, False, False, None
        streamed = 0  # bytes of an undeclared (chunked) body reserved as they arrive

        async def limited_receive():
            nonlocal received, complete, deadline, streamed
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
                if not reserved and self.budget is not None and received > streamed:
                    if not self.budget.try_reserve(received - streamed):
                        raise _BodiesOverBudget
                    streamed = received
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
        except _BodiesOverBudget:
            if not started:
                await _send_json(
                    send, 503, busy, [(b"retry-after", b"1"), (b"connection", b"close")]
                )
        finally:
            if self.budget is not None:
                self.budget.release(streamed)


# Methods a metric may be labelled with: clients choose the method, and any other string would add a series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
CLIENT_CLOSED = 499  # nginx's status for a client that went away before the answer (never sent)


class ClientGoneMiddleware:
    """Stop a request whose client has left, and record it as 499.

    Once the body of a request that announces one has arrived, a watcher waits for the connection's end. If it
    ends before the answer is complete (the client closed, or half-closed its side as some clients do after
    sending: the server then cannot tell it from leaving, and answers nobody, as nginx does), the request's
    ``CLIENT_LEFT`` event is set (work in the pool checks it between chunks of queries and stops), the handler is
    cancelled, and the access log records 499 instead of whatever status was sent into the closed connection.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        left = scope[CLIENT_LEFT] = threading.Event()
        if not _has_body(scope):
            # Nothing to wait for: body-less requests (health checks, pages, images) are answered at once, so
            # they skip the watcher's task group, the costliest part of this layer at high request rates.
            return await self.app(scope, receive, send)
        body_done, answered = anyio.Event(), False

        async def watched_receive():
            event = await receive()
            if event["type"] == "http.request" and not event.get("more_body", False):
                body_done.set()
            elif event["type"] == "http.disconnect" and not answered:
                left.set()
            return event

        async def tracked_send(event):
            nonlocal answered
            if event["type"] == "http.response.body" and not event.get("more_body", False):
                answered = True
            await send(event)

        async with anyio.create_task_group() as group:

            async def watch():
                await body_done.wait()
                while True:  # after the body, receive only ever reports the end of the connection
                    event = await receive()
                    if event["type"] == "http.disconnect":
                        break
                if not answered:
                    left.set()
                    scope[STATUS_OVERRIDE] = CLIENT_CLOSED
                    group.cancel_scope.cancel()

            group.start_soon(watch)
            failure = None
            try:
                await self.app(scope, watched_receive, tracked_send)
            except anyio.get_cancelled_exc_class():
                raise  # the watcher's cancellation (or the server's): the task group ends it
            except BaseException as exc:  # noqa: BLE001 - raised again below, outside the task group
                # Kept, so the layers outside see it as it is, not wrapped in an exception group.
                failure = exc
            finally:
                group.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if left.is_set():
            scope[STATUS_OVERRIDE] = CLIENT_CLOSED


def _has_body(scope) -> bool:
    """Whether the request announces a body (a positive Content-Length, or chunked Transfer-Encoding)."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (
            name == b"content-length" and value.strip() not in (b"0", b"")
        ):
            return True
    return False


# The page loads its script and styles from /static and shows images from the API (blob: URLs) or data: URIs;
# nothing else may run, load, frame it or be framed. /docs replaces script-src with its inline script's hash.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_CSP_BYTES = CONTENT_SECURITY_POLICY.encode()
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeadersMiddleware:
    """Every answer carries nosniff, DENY framing, no referrer, and the content security policy (unless a route
    set its own, as /docs does)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def secured_send(event):
            if event["type"] == "http.response.start":
                headers = list(event.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in SECURITY_HEADERS if n not in names]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", _CSP_BYTES))
                event = {**event, "headers": headers}
            await send(event)

        await self.app(scope, receive, secured_send)


class AccessLogMiddleware:
    """Times every request, records it in ``metrics`` under its route template, and logs one JSON line."""

    def __init__(self, app, metrics: Metrics, routes):
        self.app, self.metrics, self.routes = app, metrics, routes

    def _route(self, scope) -> str:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
        # Never the raw path: clients choose it, and it would explode the label set.
        return "unmatched"

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
            status = scope.get(STATUS_OVERRIDE, status)
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
