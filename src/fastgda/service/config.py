"""The server's settings: what it serves and the bounds it enforces (importable without FastAPI)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

CONFIG_ENV = "FASTGDA_SERVICE_CONFIG"  # JSON ServiceConfig, for uvicorn worker processes
TOKEN_ENV = "FASTGDA_TOKEN"


@dataclass(frozen=True)
class ServiceConfig:
    """What the server serves and the bounds it enforces on every request."""

    attributor: str
    model: str | None = None  # a model folder or "shipped": enables /v1/generate-and-attribute
    token: str | None = None  # bearer token for everything but /healthz and the page itself
    max_body_bytes: int = 8 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_prompt_chars: int = 1000
    max_k: int = 100
    max_batch: int = 64
    threads: int = 1  # torch threads per request; requests run side by side in the pool
    pool_size: int = max(1, os.cpu_count() or 1)  # requests doing CPU work at once
    generate_steps: int = 50
    guidance_scale: float = 3.0


def config_to_environment(config: ServiceConfig) -> str:
    return json.dumps(asdict(config))
