"""A real `fastgda serve` process on loopback, for tests that need sockets, timeouts and the server's log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(attributor, log: Path, *flags: str):
    """Start ``fastgda serve --attributor ATTRIBUTOR FLAGS...`` on a free port; yield (url, port)."""
    import httpx
    import pytest

    port = free_port()
    argv = [sys.executable, "-m", "fastgda.cli", "serve", "--attributor", str(attributor)]
    argv += ["--port", str(port), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if process.poll() is not None:
                pytest.fail(f"the server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail(f"the server did not start: {log.read_text()[-2000:]}")
        yield url, port
    finally:
        process.terminate()
        process.wait(timeout=30)
