"""`fastgda serve` under a hostile mix beside normal traffic: /healthz p99, peak RSS, valid errors, 500s.

Starts the server (default limits) as its own process on loopback, then for ``--seconds`` runs side by side:

- normal traffic: ``--clients`` threads posting valid image + prompt queries (multipart), each answer checked;
- the issue's batch: 64 flat 4096x4096 PNGs in one /v1/attribute/batch (4 MB, within the body limit);
- a batch at the per-request pixel limit (two 4096x4096 images), decoded for real;
- oversized bodies (declared and chunked), a million-element feature list, invalid JSON, a lone surrogate;
- slow clients that send a request head and part of a body and stall; connections that send nothing;
  clients that disconnect mid-upload; clients that send a 64-query batch and half-close (and so leave);
- JSON nested 959 levels deep, an out-of-range k of 4,000 digits;
- then, on their own for ``--body-seconds``, sixteen clients at once each posting 7.5 MB JSON bodies (valid JSON
  of one long prompt, just under the body limit): the bodies the server holds at once are budgeted
  (``--max-inflight-body-bytes``), so its peak RSS stays bounded however many clients send;
- a prober fetching /healthz every 50 ms, and a sampler reading the server's RSS every 100 ms.

    python benchmarks/serve_faults.py --attributor runs/demo-s16/attributor --seconds 60 \\
        --json bench-results/serve_faults.json
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import multiprocessing
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import free_port, start_server  # noqa: E402


def flat_png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size)).save(buffer, "PNG")
    return buffer.getvalue()


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn may fork workers), from /proc."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.is_file():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class Run:
    """Shared counters of one run (threads append; lists are thread-safe for append)."""

    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds
        self.health_ms: list[float] = []
        self.health_failures = 0
        self.rss: list[float] = []
        self.valid_ok = 0
        self.valid_errors: list[str] = []
        self.hostile: dict[str, dict[int | str, int]] = {}

    def alive(self) -> bool:
        return time.perf_counter() < self.deadline

    def count(self, kind: str, outcome) -> None:
        bucket = self.hostile.setdefault(kind, {})
        bucket[outcome] = bucket.get(outcome, 0) + 1


def probe_process(url: str, seconds: float, results) -> None:
    """GET /healthz every 50 ms for ``seconds``; put (latencies in ms, failures) on ``results``."""
    latencies, failures, deadline = [], 0, time.perf_counter() + seconds
    with httpx.Client(timeout=30) as client:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                failures += client.get(f"{url}/healthz").status_code != 200
            except httpx.HTTPError:
                failures += 1
            latencies.append((time.perf_counter() - began) * 1000)
            time.sleep(0.05)
    results.put((latencies, failures))


def loop(run: Run, work, pause: float = 0.0) -> None:
    while run.alive():
        work()
        time.sleep(pause)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attributor", default="runs/demo-s16/attributor")
    parser.add_argument(
        "--queries", default=None, help="query-set folder (default: the reference test split)"
    )
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=4, help="threads of normal traffic")
    parser.add_argument(
        "--baseline-seconds", type=float, default=20, help="normal traffic alone, first"
    )
    parser.add_argument(
        "--body-seconds",
        type=float,
        default=15,
        help="large bodies from 16 clients, last (0: skip)",
    )
    parser.add_argument(
        "--max-inflight-body-bytes", type=int, default=None,
        help="the server's budget of request bodies held at once (default: the server's own; raise it to "
             "see it off)",
    )  # fmt: skip
    parser.add_argument(
        "--without", nargs="*", default=[], metavar="KIND",
        help="hostile probes to leave out, by name (to compare with a tree that lacks their defences)",
    )  # fmt: skip
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    from fastgda.app.reference import reference_split_dir
    from fastgda.data import ImageCaptionFolder

    queries = Path(args.queries) if args.queries else reference_split_dir("test")
    records = ImageCaptionFolder(queries).records
    valid = [
        ((queries / r["file"]).read_bytes(), r.get("prompt") or r["captions"][0])
        for r in records[:16]
    ]
    big = base64.b64encode(flat_png(4096)).decode()
    small = base64.b64encode(valid[0][0]).decode()
    log = Path("runs/serve_faults.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    # Only when asked: a tree from before the body budget (a side-by-side baseline) lacks the flag.
    extra = ()
    if args.max_inflight_body_bytes is not None:
        extra = ("--max-inflight-body-bytes", str(args.max_inflight_body_bytes))
    process, url = start_server(args.attributor, free_port(), 1, 1, log, extra=extra)
    port = int(url.rsplit(":", 1)[1])
    run = None  # the phase running now (the closures below read it)
    results = multiprocessing.get_context("spawn").Queue()
    json_headers = {"content-type": "application/json"}

    def probe_health():  # in its own process, so the load generators' GIL does not delay the probes
        prober = multiprocessing.get_context("spawn").Process(
            target=probe_process, args=(url, run.deadline - time.perf_counter(), results)
        )
        prober.start()
        latencies, failures = results.get()
        prober.join()
        run.health_ms.extend(latencies)
        run.health_failures += failures

    def sample_rss():
        run.rss.append(rss_mb(process.pid))

    def normal(n: int):
        def work():
            image, prompt = valid[(n + len(run.health_ms)) % len(valid)]
            try:
                answer = httpx.post(f"{url}/v1/attribute", files={"image": ("q.png", image, "image/png")},
                                    data={"prompt": prompt, "k": "10"}, timeout=120)  # fmt: skip
                good = answer.status_code == 200 and len(answer.json()["results"]) == 10
                if good:
                    run.valid_ok += 1
                else:
                    run.valid_errors.append(f"{answer.status_code}: {answer.text[:120]}")
            except httpx.HTTPError as exc:
                run.valid_errors.append(type(exc).__name__)

        return work

    def post_json(kind: str, body: bytes | str, path: str = "/v1/attribute/batch"):
        def work():
            try:
                answer = httpx.post(f"{url}{path}", content=body, headers=json_headers, timeout=120)
                run.count(kind, answer.status_code)
            except httpx.HTTPError as exc:
                run.count(kind, type(exc).__name__)

        work.kind = kind
        return work

    def chunked_oversize():
        def chunks():
            yield b'{"queries": ['
            for _ in range(10):
                yield b" " * 2**20

        try:
            answer = httpx.post(
                f"{url}/v1/attribute/batch", content=chunks(), headers=json_headers, timeout=60
            )
            run.count("chunked body over the limit", answer.status_code)
        except httpx.HTTPError as exc:
            run.count("chunked body over the limit", type(exc).__name__)

    chunked_oversize.kind = "chunked body over the limit"

    def raw(kind: str, data: bytes, stall: float, read: bool, half_close: bool = False):
        def work():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                    sock.sendall(data)
                    if half_close:  # sent, then shut its writing side: the server sees the end
                        sock.shutdown(socket.SHUT_WR)
                        return run.count(kind, "answered" if sock.recv(64) else "closed unanswered")
                    if not read:
                        return run.count(kind, "sent and left")
                    time.sleep(stall)
                    head = sock.recv(64)
                    run.count(
                        kind,
                        head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else "closed",
                    )
            except OSError as exc:
                run.count(kind, type(exc).__name__)

        work.kind = kind
        return work

    head = (b"POST /v1/attribute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 500000\r\n\r\n{\"prompt\": \"")  # fmt: skip
    batch = json.dumps({"queries": [{"image": small, "prompt": valid[0][1]}] * 64, "k": 3}).encode()
    half_closed = (b"POST /v1/attribute/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: " + str(len(batch)).encode() + b"\r\n\r\n" + batch)  # fmt: skip
    nested = "[" * 959 + "]" * 959
    hostile = [
        post_json(
            "64 x 4096^2 PNG batch (4 MB)",
            json.dumps({"queries": [{"image": big, "prompt": "x"}] * 64}),
        ),
        post_json(
            "2 x 4096^2 PNG batch (at the pixel limit)",
            json.dumps({"queries": [{"image": big, "prompt": "x"}] * 2, "k": 3}),
        ),  # fmt: skip
        post_json(
            "million-element features", json.dumps({"features": ["a"] * 1_000_000}), "/v1/attribute"
        ),
        post_json("invalid JSON", b"{not json", "/v1/attribute/batch"),
        post_json(
            "lone surrogate prompt",
            '{"queries": [{"prompt": "red \\ud800", "image": "' + small + '"}]}',
        ),
        post_json("declared body over the limit", b" " * (9 * 2**20)),
        chunked_oversize,
        raw("slow body (stalls)", head, 35, True),
        raw("idle connection", b"", 15, True),
        raw("disconnect mid-upload", head + b"x" * 1000, 0, False),
        raw("64-query batch, then half-closed", half_closed, 0, True, half_close=True),
        post_json("JSON nested 959 levels", nested, "/v1/attribute"),
        post_json(
            "k of 4,000 digits", '{"features": [0.0], "k": ' + "9" * 4000 + "}", "/v1/attribute"
        ),
    ]
    names = [getattr(work, "kind", None) for work in hostile]
    unknown = sorted(set(args.without) - set(names))
    if unknown:
        parser.error(
            f"--without {unknown}: no such probe; the probes are {[n for n in names if n]}"
        )
    hostile = [work for work in hostile if getattr(work, "kind", None) not in args.without]
    heavy = json.dumps(
        {"prompt": "x" * (15 * 2**19), "image": small}
    ).encode()  # 7.5 MiB, valid JSON

    def drive(with_hostile: bool, bodies_only: bool = False) -> None:
        threads = [threading.Thread(target=probe_health),
                   threading.Thread(target=loop, args=(run, sample_rss, 0.1))]  # fmt: skip
        if bodies_only:
            work = post_json("7.5 MB body, 16 clients at once", heavy, "/v1/attribute")
            threads += [threading.Thread(target=loop, args=(run, work)) for _ in range(16)]
        else:
            threads += [
                threading.Thread(target=loop, args=(run, normal(n))) for n in range(args.clients)
            ]
        if with_hostile:
            threads += [threading.Thread(target=loop, args=(run, work, 0.2)) for work in hostile]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # First normal traffic alone (the reference /healthz is read against), then with the hostile mix beside it.
    alone = run = Run(args.baseline_seconds)
    drive(False)
    run = Run(args.seconds)
    began = time.perf_counter()
    drive(True)
    wall = time.perf_counter() - began
    mixed, run = run, Run(args.body_seconds)
    if args.body_seconds > 0:
        drive(False, bodies_only=True)
    bodies, run = run, mixed
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    process.terminate()
    process.wait(timeout=30)
    status_500 = sum(int(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("fastgda_requests_total") and 'status="500"' in line)  # fmt: skip
    tracebacks = log.read_text(errors="replace").count("Traceback")

    def counter(name: str) -> int:
        return sum(
            int(float(line.split()[-1]))
            for line in metrics.splitlines()
            if line.startswith(name + " ")
        )

    status_499 = sum(int(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("fastgda_requests_total") and 'status="499"' in line)  # fmt: skip
    health, reference = np.asarray(run.health_ms), np.asarray(alone.health_ms)
    figures = {
        "healthz_p99_ms_normal_only": float(np.percentile(reference, 99)),
        "healthz_p50_ms_normal_only": float(np.percentile(reference, 50)),
        "valid_errors_normal_only": len(alone.valid_errors),
        "healthz_p99_ms": float(np.percentile(health, 99)),
        "healthz_p50_ms": float(np.percentile(health, 50)),
        "healthz_max_ms": float(health.max()),
        "healthz_probes": len(health),
        "healthz_failures": run.health_failures,
        "peak_rss_mb": float(max(run.rss)),
        "peak_rss_mb_normal_only": float(max(alone.rss)),
        "peak_rss_mb_large_bodies": float(max(bodies.rss, default=0.0)),
        "large_bodies": {
            str(o): n for o, n in bodies.hostile.get("7.5 MB body, 16 clients at once", {}).items()
        },
        "start_rss_mb": float(run.rss[0]),
        "valid_requests": run.valid_ok + len(run.valid_errors),
        "valid_errors": len(run.valid_errors),
        "status_500": status_500,
        "status_499": status_499,
        "left_queries": counter("fastgda_left_queries_total"),
        "tracebacks_in_log": tracebacks,
        "hostile": {k: {str(o): n for o, n in v.items()} for k, v in run.hostile.items()},
        "seconds": wall,
    }
    print(f"{wall:.0f} s of a hostile mix beside {args.clients} clients of valid image + prompt queries; "
          f"server: default limits, one worker; attributor {args.attributor}")  # fmt: skip
    print()
    print("| figure | measured | goal |")
    print("|---|---:|---|")
    print(f"| /healthz p99 (p50, max; {len(health)} probes) | {figures['healthz_p99_ms']:.1f} ms "
          f"({figures['healthz_p50_ms']:.1f}, {figures['healthz_max_ms']:.0f}) | ≤ 100 ms |")  # fmt: skip
    alone_p99, alone_p50 = (
        figures["healthz_p99_ms_normal_only"],
        figures["healthz_p50_ms_normal_only"],
    )
    print(f"| /healthz p99 (p50) with normal traffic alone, first {args.baseline_seconds:.0f} s | "
          f"{alone_p99:.1f} ms ({alone_p50:.1f}) | |")  # fmt: skip
    print(f"| peak RSS (at start; peak with normal traffic alone) | {figures['peak_rss_mb']:.0f} MB "
          f"({figures['start_rss_mb']:.0f}; {figures['peak_rss_mb_normal_only']:.0f}) | "
          "within the documented budget |")  # fmt: skip
    print(
        f"| valid-request errors (of {figures['valid_requests']}) | {figures['valid_errors']} | 0 |"
    )
    if args.body_seconds > 0:
        outcomes = ", ".join(f"{o}: {n}" for o, n in sorted(figures["large_bodies"].items()))
        print(f"| peak RSS, then {args.body_seconds:.0f} s of 7.5 MB bodies from 16 clients at once "
              f"({outcomes}) | {figures['peak_rss_mb_large_bodies']:.0f} MB | "
              "within the documented budget |")  # fmt: skip
    print(f"| 500 answers (/metrics) | {status_500} | 0 |")
    print(
        f"| 499 (client left) logged; their queries | {status_499}; {figures['left_queries']} | |"
    )
    print(f"| tracebacks in the server log | {tracebacks} | 0 |")
    print()
    print("| hostile request | answers |")
    print("|---|---|")
    for kind, outcomes in run.hostile.items():
        print(
            f"| {kind} | "
            + ", ".join(f"{o}: {n}" for o, n in sorted(outcomes.items(), key=str))
            + " |"
        )
    if run.valid_errors:
        print("first valid errors:", run.valid_errors[:3])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
