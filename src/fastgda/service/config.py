"""The server's settings: what it serves and the bounds it enforces (importable without FastAPI)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from ..config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check_settings, setting

CONFIG_ENV = "FASTGDA_SERVICE_CONFIG"  # JSON ServiceConfig, for uvicorn worker processes
TOKEN_ENV = "FASTGDA_TOKEN"


@dataclass(frozen=True)
class ServiceConfig:
    """What the server serves and the bounds it enforces on every request."""

    attributor: str
    model: str | None = None  # a model folder or "shipped": enables /v1/generate-and-attribute
    token: str | None = None  # bearer token for everything but /healthz and the page itself
    max_body_bytes: int = setting(8 * 2**20, "largest request body", bounds=AT_LEAST_ONE)
    max_image_pixels: int = setting(4096 * 4096, "largest decoded query image", bounds=AT_LEAST_ONE)
    max_request_pixels: int = setting(
        2 * 4096 * 4096,
        "decoded pixels one request's images may declare in all (else 413)",
        bounds=AT_LEAST_ONE,
    )
    max_inflight_pixels: int = setting(
        4 * 4096 * 4096,
        "decoded pixels the server holds at once, all requests together (else 503 and Retry-After)",
        bounds=AT_LEAST_ONE,
    )
    max_inflight_body_bytes: int = setting(
        64 * 2**20,
        "request body bytes the server holds at once, all requests together (else 503 and Retry-After)",
        bounds=AT_LEAST_ONE,
    )
    body_timeout_s: float = setting(
        30.0, "seconds a request body may take to arrive (else 408)", bounds=POSITIVE
    )
    head_timeout_s: float = setting(
        10.0,
        "seconds a connection may take to send a request's headers (else closed)",
        bounds=POSITIVE,
    )
    max_connections: int = setting(
        256, "concurrent connections and requests a worker accepts (else 503)", bounds=AT_LEAST_ONE
    )
    max_prompt_chars: int = setting(1000, "longest prompt", bounds=AT_LEAST_ONE)
    max_k: int = setting(100, "most training images one answer may hold", bounds=AT_LEAST_ONE)
    max_batch: int = setting(64, "most queries in one batch request", bounds=AT_LEAST_ONE)
    threads: int = setting(
        1, "torch threads per request; requests run side by side in the pool", bounds=AT_LEAST_ONE
    )
    pool_size: int = setting(
        max(1, os.cpu_count() or 1), "requests doing CPU work at once", bounds=AT_LEAST_ONE
    )
    micro_batch: int = setting(
        16,
        "most queries joined into one pass of the encoders, ranker and search while they wait for the pool "
        "(1: each request alone)",
        bounds=AT_LEAST_ONE,
    )
    generate_steps: int = setting(
        50, "DDIM steps of /v1/generate-and-attribute", bounds=AT_LEAST_ONE
    )
    guidance_scale: float = setting(3.0, "its guidance scale", bounds=NON_NEGATIVE)
    device: str = setting("cpu", "where the query encoders and the model run (fastgda.devices)")
    dtype: str = setting(
        "float32", "their compute precision", choices=("float32", "bfloat16", "float16")
    )
    takedown_poll_s: float = setting(
        1.0,
        "seconds between checks of the attributor folder for takedowns made while the server runs (`fastgda "
        "attributor remove`): a removed id leaves every answer within this time plus one check; 0 turns it off",
        bounds=NON_NEGATIVE,
    )
    runtime: str = setting(
        "auto",
        "query encoders on torch, onnx (ONNX Runtime, CPU float32) or auto (onnx where it can run)",
        choices=("torch", "onnx", "auto"),
    )

    def __post_init__(self):
        check_settings(self)


def config_to_environment(config: ServiceConfig) -> str:
    return json.dumps(asdict(config))
