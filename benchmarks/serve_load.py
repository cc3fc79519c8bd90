"""Bounded load test of `fastgda serve` on loopback: throughput and p50/p99 latency, 0 errors expected.

Starts the server as a separate process, then for each query kind keeps ``--concurrency`` requests in flight for
``--seconds``: multipart image + prompt queries (encoders + ranker + search) and feature-only JSON queries
(ranker + search). Queries cycle through the reference test split's generated images and prompts. Each server
setting (query-encoder runtime x micro-batch size) is served in turn in one run, so the machine's noise hits
them all: micro-batch 1 answers each request alone (the service before micro-batching).

    fastgda attributor build --ranker runs/quality/effnet_minilm/ranker-seed0 \
        --items runs/quality/effnet_minilm/items --data runs/world --out runs/attributor
    python benchmarks/serve_load.py --attributor runs/attributor --concurrency 32 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    attributor: str,
    port: int,
    workers: int,
    threads: int,
    log: Path,
    runtime: str = "auto",
    micro_batch: int = 16,
    extra: tuple[str, ...] = (),
):
    argv = [sys.executable, "-m", "fastgda.cli", "serve", "--attributor", attributor, *extra]
    argv += [
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--runtime",
        runtime,
        "--micro-batch",
        str(micro_batch),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy()
        )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.25)
    process.terminate()
    raise SystemExit("the server did not start in time")


async def load(url: str, make_request, concurrency: int, seconds: float) -> dict:
    """Keep ``concurrency`` requests in flight for ``seconds``; latencies of completed ones, errors counted."""
    latencies, errors, statuses = [], 0, {}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker(n: int) -> None:
            nonlocal errors
            i = n
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    response = await make_request(client, i)
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code != 200:
                        errors += 1
                    else:
                        latencies.append(time.perf_counter() - began)
                except httpx.HTTPError as exc:
                    errors += 1
                    kind = type(exc).__name__
                    statuses[kind] = statuses.get(kind, 0) + 1
                i += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        wall = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "statuses": statuses,
        "seconds": round(wall, 1),
        "throughput_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attributor", required=True)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per request")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=["torch", "onnx"],
        help="query-encoder runtimes, served one after the other",
    )
    parser.add_argument(
        "--micro-batches",
        nargs="+",
        type=int,
        default=[1, 16],
        help="serve --micro-batch sizes, each served with each runtime",
    )
    parser.add_argument("--out", default="runs/serve_load.json")
    args = parser.parse_args()

    from fastgda.app.reference import reference_queries, reference_split_dir
    from fastgda.attributor import Attributor

    split = reference_split_dir("test")
    records = reference_queries("test")
    images = [(split / r["file"]).read_bytes() for r in records]
    prompts = [r["prompt"] for r in records]
    attributor = Attributor.load(args.attributor)
    features = attributor.query_features([str(split / r["file"]) for r in records], prompts)

    async def image_query(client, i):
        n = i % len(images)
        files = {"image": ("query.png", images[n], "image/png")}
        return await client.post(
            "/v1/attribute", files=files, data={"prompt": prompts[n], "k": str(args.k)}
        )

    async def features_query(client, i):
        body = {"features": features[i % len(features)].tolist(), "k": args.k}
        return await client.post("/v1/attribute", json=body)

    log = Path(args.out).with_suffix(".server.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    results = {}
    settings = [(r, m) for m in args.micro_batches for r in args.runtimes]
    for runtime, micro_batch in settings:  # side by side in one run: the machine's noise hits all
        process, url = start_server(
            args.attributor, free_port(), args.workers, args.threads, log, runtime, micro_batch
        )
        try:
            kinds = [
                ("image + prompt (multipart)", image_query),
                ("features only (JSON)", features_query),
            ]
            for name, request in kinds:
                asyncio.run(load(url, request, args.concurrency, 2))  # warm-up, not counted
                key = f"{name}, {runtime}, micro-batch {micro_batch}"
                results[key] = asyncio.run(load(url, request, args.concurrency, args.seconds))
                print(f"{key}: {json.dumps(results[key])}", file=sys.stderr, flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    out = {
        "attributor": args.attributor,
        "items": len(attributor.index),
        "spec": attributor.spec,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "workers": args.workers,
        "threads_per_request": args.threads,
        "runtimes": args.runtimes,
        "micro_batches": args.micro_batches,
        "cpu_count": os.cpu_count(),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")
    print()
    print(
        "| query kind, encoder runtime, micro-batch | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['requests']} | {r['errors']} | {r['throughput_per_s']} | {r['p50_ms']} | {r['p99_ms']} |"
        )


if __name__ == "__main__":
    main()
