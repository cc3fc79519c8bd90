"""The service under hostile input (issue 19): each defect reproduced first, on a real server where it needs one.

No request may stall or exhaust the server; errors are one short line in one shape; logs and metrics tell the
truth about clients that leave, bodies over the limit and made-up methods; slow clients are cut off.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from _live_server import live_server  # noqa: E402
from fastgda.service.app import create_app  # noqa: E402
from fastgda.service.config import ServiceConfig  # noqa: E402

PROMPT = "a large cyan circle in the center on a black background"


def png(width: int, height: int, seed: int = 0, noise: bool = True) -> bytes:
    """A noise PNG (large bytes), or a flat one (a few kB that still decode to width x height pixels)."""
    rng = np.random.default_rng(seed)
    pixels = (
        rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        if noise
        else np.zeros((height, width, 3), np.uint8)
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def app_client(served):
    config = ServiceConfig(
        attributor=str(served["attributor"]), model=str(served["model"]), generate_steps=2,
        max_body_bytes=32 * 2**20, max_request_pixels=3 * 512 * 512, max_inflight_pixels=4 * 512 * 512,
    )  # fmt: skip
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        yield client


def test_validation_errors_are_one_short_line_in_one_shape(app_client):
    """A million bad elements once came back as a 225 MB list of errors; every error is now one line of a few
    hundred bytes, {"detail": "<text>"}, on every endpoint."""
    million = {"features": ["a"] * 1_000_000}
    answers = [
        app_client.post("/v1/attribute", json=million),
        app_client.post("/v1/attribute/batch", json={"queries": [million]}),
        app_client.post(
            "/v1/attribute/batch", json={"queries": [{"prompt": 5, "image": [1]}] * 64}
        ),
        app_client.post("/v1/attribute/batch", json={"queries": "none"}),
        app_client.post(
            "/v1/generate-and-attribute", json={"prompt": ["x"] * 100_000, "seed": "a"}
        ),
        app_client.post("/v1/generate-and-attribute", json={"seed": 1}),
        app_client.get("/v1/train/not-a-number"),
        app_client.get("/v1/train/3/image", params={"size": "huge"}),
    ]
    for answer in answers:
        assert answer.status_code == 422, answer.text[:300]
        body = answer.json()
        assert set(body) == {"detail"} and isinstance(body["detail"], str), answer.text[:300]
        assert len(answer.content) < 500 and "\n" not in body["detail"], answer.text[:600]


def test_a_lone_surrogate_in_a_prompt_is_422_everywhere(app_client, served):
    surrogate = '{"prompt": "red \\ud800 circle", "seed": 0}'
    image = base64.b64encode(served["query_image"].read_bytes()).decode()
    prompt = '"red \\ud800 circle"'  # JSON text: the escape reaches the server as a lone surrogate
    batch = '{"queries": [{"prompt": ' + prompt + ', "image": "' + image + '"}]}'
    single = '{"prompt": ' + prompt + ', "image": "' + image + '"}'
    headers = {"content-type": "application/json"}
    for path, body in [("/v1/generate-and-attribute", surrogate), ("/v1/attribute/batch", batch),
                       ("/v1/attribute", single)]:  # fmt: skip
        answer = app_client.post(path, content=body, headers=headers)
        assert answer.status_code == 422 and "surrogate" in answer.json()["detail"], path


def test_line_wrapped_base64_is_accepted(app_client, served):
    raw = served["query_image"].read_bytes()
    plain = base64.b64encode(raw).decode()
    wrapped = "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76)) + "\n"  # GNU base64
    one = app_client.post("/v1/attribute", json={"image": plain, "prompt": PROMPT, "k": 5})
    other = app_client.post("/v1/attribute", json={"image": wrapped, "prompt": PROMPT, "k": 5})
    assert other.status_code == 200, other.text
    assert [r["id"] for r in other.json()["results"]] == [r["id"] for r in one.json()["results"]]


def test_pixel_budgets_refuse_before_decoding(app_client):
    """A request declaring more pixels than its limit is 413 from the headers alone; a server already holding
    its budget answers 503 with Retry-After; the budget is whole again after every request."""
    image = base64.b64encode(png(512, 512)).decode()
    queries = [{"image": image, "prompt": PROMPT}] * 4  # 4 x 512^2 > 3 x 512^2
    over = app_client.post("/v1/attribute/batch", json={"queries": queries})
    assert over.status_code == 413 and "per request" in over.json()["detail"]
    service = app_client.app.state.service
    assert service.pixels.held == 0
    fits = app_client.post("/v1/attribute/batch", json={"queries": queries[:3], "k": 3})
    assert fits.status_code == 200 and service.pixels.held == 0
    service.pixels.held = service.pixels.capacity - 1000  # as if other requests held it
    try:
        busy = app_client.post("/v1/attribute", json={"image": image, "prompt": PROMPT})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    finally:
        service.pixels.held = 0
    broken = app_client.post(
        "/v1/attribute", json={"image": image[: len(image) // 2], "prompt": PROMPT}
    )
    assert (
        broken.status_code == 422 and service.pixels.held == 0
    )  # a failed decode gives its pixels back


def metric(text: str, method: str, route: str, status: int) -> int:
    key = f'fastgda_requests_total{{method="{method}",route="{route}",status="{status}"}} '
    return sum(int(line.split()[-1]) for line in text.splitlines() if line.startswith(key))


def test_oversized_bodies_are_413_and_counted_as_413(app_client):
    """Chunked bodies over the limit were 400 "error parsing the body" on /batch and /generate-and-attribute and
    counted as 500; a Content-Length over the limit was answered but neither logged nor counted."""

    def chunks():
        yield b'{"queries": ['
        for _ in range(40):
            yield b" " * 2**20  # 40 MB in all, over the 32 MB limit

    before = app_client.get("/metrics").text
    for path in ("/v1/attribute/batch", "/v1/generate-and-attribute", "/v1/attribute"):
        streamed = app_client.post(
            path, content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413, (path, streamed.text[:200])
    declared = app_client.post("/v1/attribute/batch", content=b" " * (32 * 2**20 + 1),
                               headers={"content-type": "application/json"})  # fmt: skip
    assert declared.status_code == 413
    after = app_client.get("/metrics").text
    route = "/v1/attribute/batch"
    assert metric(after, "POST", route, 413) - metric(before, "POST", route, 413) == 2
    assert metric(after, "POST", route, 500) == metric(before, "POST", route, 500)


def test_metric_labels_are_a_closed_set(app_client):
    for n in range(30):
        app_client.request(f"MADEUP{n}", "/v1/info")
    text = app_client.get("/metrics").text
    assert "MADEUP" not in text and 'method="other"' in text


def test_docs_are_offline_documented_and_declare_the_token(served):
    """/docs and /openapi.json stay open (the API's shape is public; they hold no data), /redoc is gone (it loads
    a CDN script), and the bearer scheme is declared so "Authorize" can send the token."""
    config = ServiceConfig(attributor=str(served["attributor"]), token="t0ken")
    with TestClient(create_app(config)) as bare:
        docs = bare.get("/docs")
        assert docs.status_code == 200 and "cdn" not in docs.text.lower()
        assert bare.get("/redoc").status_code == 404
        schema = bare.get("/openapi.json").json()
        schemes = schema["components"]["securitySchemes"]
        assert [s["scheme"].lower() for s in schemes.values()] == ["bearer"]
        assert schema["paths"]["/v1/info"]["get"]["security"]
        body = schema["paths"]["/v1/attribute/batch"]["post"]["requestBody"]["content"]
        ref = body["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert "queries" in schema["components"]["schemas"][ref]["properties"]
        assert bare.get("/v1/info").status_code == 401


@pytest.fixture(scope="module")
def live(served, tmp_path_factory):
    """A real server with short deadlines and room for a batch of large images."""
    log = tmp_path_factory.mktemp("faults") / "server.log"
    flags = ("--body-timeout-s", "1.5", "--head-timeout-s", "1.5", "--pool-size", "2",
             "--max-request-pixels", str(8 * 4096**2), "--max-inflight-pixels", str(8 * 4096**2))  # fmt: skip
    with live_server(served["attributor"], log, *flags) as (url, port):
        yield url, port, log


def test_a_batch_of_large_images_never_blocks_health(live):
    """Decoding ran on the event loop: a batch of large PNGs left /healthz unanswered for tens of seconds. Now
    it decodes in the pool: /healthz answers within a second, several times, while the batch is in flight (the
    issue's case: flat 4096x4096 PNGs of a few kB each, within every limit)."""
    url, _, _ = live
    image = base64.b64encode(png(4096, 4096, noise=False)).decode()
    body = json.dumps({"queries": [{"image": image, "prompt": PROMPT}] * 8, "k": 3})
    done = {}

    def batch():
        done["status"] = httpx.post(f"{url}/v1/attribute/batch", content=body,
                                    headers={"content-type": "application/json"}, timeout=300).status_code  # fmt: skip

    thread = threading.Thread(target=batch)
    thread.start()
    time.sleep(0.5)
    waits = []
    while thread.is_alive() and len(waits) < 20:
        began = time.perf_counter()
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        waits.append(time.perf_counter() - began)
        time.sleep(0.1)
    thread.join()
    assert done["status"] == 200
    assert len(waits) >= 2, "the batch finished before health could be probed: make it larger"
    assert max(waits) < 1.0, waits


def raw_request(
    port: int, head: bytes, body: bytes = b"", then_close: bool = False, wait: float = 0.0
):
    """Send raw bytes; return what the server answered (b"" if it closed without answering)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        if then_close:
            return b""
        time.sleep(wait)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_clients_that_leave_or_stall_are_cut_off_and_reported_truly(live):
    """A client leaving mid-upload was an unhandled error with two tracebacks, counted as 500; trickling bodies
    and idle connections were never timed out."""
    url, port, log = live
    head = (b"POST /v1/attribute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n")  # fmt: skip
    raw_request(port, head, b'{"prompt": "' + b"x" * 1000, then_close=True)
    slow = raw_request(port, head, b'{"prompt": "')  # then nothing: the body deadline is 1.5 s
    assert slow.startswith(b"HTTP/1.1 408"), slow[:200]
    began = time.perf_counter()
    idle = raw_request(port, b"")  # connects, sends nothing
    assert idle == b"" and time.perf_counter() - began < 8
    trickle = raw_request(port, b"GET /healthz HTTP/1.1\r\nHo")  # headers never finish
    assert trickle == b""
    time.sleep(0.5)
    metrics = httpx.get(f"{url}/metrics").text
    assert metric(metrics, "POST", "/v1/attribute", 500) == 0, metrics
    assert metric(metrics, "POST", "/v1/attribute", 499) == 1
    assert metric(metrics, "POST", "/v1/attribute", 408) == 1
    text = log.read_text()
    assert "Traceback" not in text and "Exception in ASGI" not in text, text[-3000:]


def test_deeply_nested_json_is_422_without_a_traceback(app_client, caplog):
    """959 nested lists gave 500 and two tracebacks (RecursionError escaped the body parser); 958 gave 422."""
    for depth in (958, 959, 5_000, 400_000):
        body = "[" * depth + "]" * depth
        for path in ("/v1/attribute", "/v1/attribute/batch", "/v1/generate-and-attribute"):
            with caplog.at_level("INFO", logger="fastgda.service"):
                answer = app_client.post(
                    path, content=body, headers={"content-type": "application/json"}
                )
            assert answer.status_code == 422, (depth, path, answer.text[:200])
            assert len(answer.content) < 500 and set(answer.json()) == {"detail"}
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info], caplog.text[
        -2000:
    ]


def test_every_error_body_is_bounded_whatever_the_request_echoes(app_client):
    """An out-of-range k of 4,000 digits came back in a 4 KB error body."""
    huge = "9" * 4000
    image = png(8, 8)
    answers = [
        app_client.post("/v1/attribute", files={"image": ("q.png", image, "image/png")},
                        data={"prompt": PROMPT, "k": huge}),
        app_client.post("/v1/attribute", json={"features": [0.0], "k": int(huge)}),
        app_client.post("/v1/attribute/batch", json={"queries": [{"features": [0.0]}], "k": int(huge)}),
        app_client.get("/v1/train/" + huge),
        app_client.get("/v1/train/1/image", params={"size": huge}),
    ]  # fmt: skip
    for answer in answers:
        assert 400 <= answer.status_code < 500, answer.text[:200]
        assert len(answer.content) < 500 and set(answer.json()) == {"detail"}, answer.text[:600]


def test_responses_carry_security_headers_and_the_page_allows_no_inline_script(app_client):
    import hashlib
    import re

    for path in ("/", "/healthz", "/v1/info", "/static/app.js", "/nowhere"):
        answer = app_client.get(path)
        headers = answer.headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer"
        policy = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy, path
        script = re.search(r"script-src ([^;]*)", policy).group(1)
        assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script, path
    page = app_client.get("/").text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page) and " on" + "click=" not in page
    # /docs runs Swagger UI's one inline script: allowed by its hash, nothing else inline.
    docs = app_client.get("/docs")
    inline = re.findall(r"<script>(.*?)</script>", docs.text, re.DOTALL)
    assert inline
    policy = docs.headers["content-security-policy"]
    for code in inline:
        digest = __import__("base64").b64encode(hashlib.sha256(code.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy
    assert "'unsafe-inline'" not in re.search(r"script-src ([^;]*)", policy).group(1)


def _holds(results: list[dict], removed: set[int]) -> bool:
    return any(r["id"] in removed for r in results)


def test_a_takedown_reaches_a_running_server_under_load(served, tmp_path):
    """`fastgda attributor remove` while the server runs: the ids came back until a restart. Now the server
    notices the attributor's new manifest and swaps the takedowns in; under load, no request fails, and no
    answer to a request sent after the takedown's stated delay holds a removed id."""
    import shutil

    from fastgda.cli import main

    folder = tmp_path / "attributor"
    shutil.copytree(served["attributor"], folder)
    poll = 0.5
    log = tmp_path / "server.log"
    flags = ("--takedown-poll-s", str(poll), "--pool-size", "2")
    image = base64.b64encode(served["query_image"].read_bytes()).decode()
    body = {"image": image, "prompt": PROMPT, "k": 10}
    with live_server(folder, log, *flags) as (url, _):
        first = httpx.post(f"{url}/v1/attribute", json=body, timeout=30).json()["results"]
        removed = {r["id"] for r in first[:3]}
        answers, failures, stop = [], [], threading.Event()

        def load():
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    sent = time.monotonic()
                    response = client.post(f"{url}/v1/attribute", json=body)
                    if response.status_code != 200:
                        failures.append(response.status_code)
                    else:
                        answers.append((sent, time.monotonic(), response.json()["results"]))

        threads = [threading.Thread(target=load) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        args = ["attributor", "remove", "--attributor", str(folder), "--ids"]
        began = time.monotonic()  # from here the server may take the ids down at any moment
        assert main([*args, *map(str, sorted(removed))]) == 0
        taken_down = time.monotonic()
        time.sleep(4 * poll + 2.0)
        stop.set()
        for thread in threads:
            thread.join()
        info = httpx.get(f"{url}/v1/info", timeout=10).json()
    assert not failures, failures
    before = [results for _, answered, results in answers if answered < began]
    after = [results for sent, _, results in answers if sent > taken_down + poll + 1.0]
    assert before and all(_holds(r, removed) for r in before)  # the ids were served until then
    assert after and not any(_holds(r, removed) for r in after), "a removed id came back"
    assert info["removed"] == len(removed)
    assert "Traceback" not in log.read_text()


def test_a_client_that_leaves_stops_its_work_and_is_logged_499(live):
    """A client that half-closes after sending got no answer and was logged 200; a batch whose client had gone
    kept computing. Now the server notices the end of the connection, stops the request's work at the next
    chunk of queries, and logs 499."""
    url, port, log = live
    # 64 of these: 2.4 MB, within the body limit.
    image = base64.b64encode(png(96, 96, seed=3)).decode()
    body = json.dumps({"queries": [{"image": image, "prompt": PROMPT}] * 64, "k": 3}).encode()
    head = (b"POST /v1/attribute/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")  # fmt: skip
    before = httpx.get(f"{url}/metrics").text
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)  # half-close: sent, and now gone
        answer = sock.recv(65536)
    assert answer == b""  # nobody is there to read an answer
    time.sleep(1.0)
    after = httpx.get(f"{url}/metrics").text
    route = "/v1/attribute/batch"
    assert metric(after, "POST", route, 499) - metric(before, "POST", route, 499) == 1, after
    assert metric(after, "POST", route, 200) == metric(before, "POST", route, 200)

    def counter(text: str, name: str) -> int:
        lines = [line for line in text.splitlines() if line.startswith(name + " ")]
        return int(float(lines[0].split()[-1])) if lines else 0

    left = counter(after, "fastgda_left_queries_total") - counter(
        before, "fastgda_left_queries_total"
    )
    assert left == 64, after
    # Its work stopped: the passes answered fewer than its 64 queries (none, when it left before decoding).
    computed = counter(after, "fastgda_pass_queries_total") - counter(
        before, "fastgda_pass_queries_total"
    )
    assert computed < 64, "the batch was computed for nobody"
    ok = httpx.post(
        f"{url}/v1/attribute", json={"image": image, "prompt": PROMPT, "k": 3}, timeout=30
    )
    assert ok.status_code == 200
    assert "Traceback" not in log.read_text()


def test_request_bodies_held_at_once_are_budgeted():
    """256 connections could each hold an 8 MiB body (and its parsed copies) at once: the bodies of all requests
    together now fit a budget; one that does not fit is 503 with Retry-After, declared or streamed, and every
    byte is given back when its request ends."""
    import anyio

    from fastgda.service.budget import Budget
    from fastgda.service.middleware import BodyLimitMiddleware

    budget, release = Budget(3_000), anyio.Event()

    async def app(scope, receive, send):  # reads its body, then holds it until released
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/hold":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = BodyLimitMiddleware(app, max_bytes=2_000, timeout_s=5, budget=budget)

    async def call(path: str, chunks: list[bytes], declared: int | None) -> int:
        events = [{"type": "http.request", "body": c, "more_body": n < len(chunks) - 1}
                  for n, c in enumerate(chunks)]  # fmt: skip
        headers = [(b"content-length", str(declared).encode())] if declared is not None else []
        scope = {"type": "http", "path": path, "headers": headers}
        sent = []

        async def receive():
            return events.pop(0) if events else {"type": "http.disconnect"}

        async def send(event):
            sent.append(event)

        await middleware(scope, receive, send)
        return next(e["status"] for e in sent if e["type"] == "http.response.start")

    async def scenario():
        statuses = {}
        async with anyio.create_task_group() as group:

            async def hold():
                statuses["held"] = await call("/hold", [b"x" * 2_000], 2_000)

            group.start_soon(hold)
            await anyio.sleep(0.05)
            assert budget.held == 2_000
            statuses["declared"] = await call("/", [b"x" * 1_500], 1_500)  # 3,500 > 3,000
            statuses["streamed"] = await call("/", [b"x" * 500, b"x" * 600], None)
            statuses["fits"] = await call("/", [b"x" * 900], 900)
            release.set()
        statuses["after"] = await call("/", [b"x" * 1_500], 1_500)
        return statuses

    statuses = anyio.run(scenario)
    assert statuses == {"declared": 503, "streamed": 503, "fits": 200, "held": 200, "after": 200}
    assert budget.held == 0
