"""``fastgda serve``: the HTTP API and web page over an attributor (FastAPI + uvicorn)."""

from __future__ import annotations

import os
from dataclasses import replace

from ._common import (
    COUNT,
    PORT,
    add_compute_flags,
    add_config_flags,
    compute_from_args,
    config_from_args,
)


def add_parser(sub) -> None:
    from ..service.config import TOKEN_ENV, ServiceConfig

    parser = sub.add_parser(
        "serve",
        help="serve the attribution API and web page",
        description="Serve POST /v1/attribute, /v1/attribute/batch, /v1/generate-and-attribute, training items "
        "by id, /healthz, /metrics, OpenAPI docs at /docs, and the web page at /.",
    )
    parser.add_argument("--attributor", required=True, help="attributor folder")
    parser.add_argument(
        "--model",
        help="text-to-image model folder, or 'shipped', to enable /v1/generate-and-attribute",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    parser.add_argument("--port", type=PORT, default=8000)
    parser.add_argument("--workers", type=COUNT, default=1, help="worker processes")
    parser.add_argument(
        "--token", help=f"bearer token required for everything but /healthz (or set {TOKEN_ENV})"
    )
    add_config_flags(
        parser,
        ServiceConfig,
        [
            "max_body_bytes",
            "max_image_pixels",
            "max_request_pixels",
            "max_inflight_pixels",
            "max_inflight_body_bytes",
            "body_timeout_s",
            "head_timeout_s",
            "max_connections",
            "max_prompt_chars",
            "max_k",
            "max_batch",
            "threads",
            "pool_size",
            "micro_batch",
            "generate_steps",
            "guidance_scale",
            "runtime",
            "takedown_poll_s",
        ],
    )
    add_compute_flags(parser, "query encoders and the model")
    parser.set_defaults(handler=handle_serve)


def handle_serve(args) -> int:
    from .._optional import require

    require("fastapi", "serve")
    uvicorn = require("uvicorn", "serve")

    from ..service.config import CONFIG_ENV, TOKEN_ENV, ServiceConfig, config_to_environment

    compute_from_args(args)  # an unknown or absent device fails here, before the server starts
    config = replace(
        config_from_args(args, ServiceConfig, base=ServiceConfig(attributor="")),
        device=args.device,
        dtype=args.dtype,
        attributor=os.path.abspath(args.attributor),
        model=args.model if args.model in (None, "shipped") else os.path.abspath(args.model),
        token=args.token or os.environ.get(TOKEN_ENV) or None,
    )
    from ..service.protocol import HeadDeadlineH11Protocol

    # Worker processes rebuild the app from this variable; the token travels with it, never on a command line.
    os.environ[CONFIG_ENV] = config_to_environment(config)
    uvicorn.run(
        "fastgda.service.app:app_from_environment",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
        access_log=False,  # one structured line per request comes from the app instead
        server_header=False,
        http=HeadDeadlineH11Protocol,  # idle and trickling connections are closed (head_timeout_s)
        limit_concurrency=config.max_connections,  # beyond it, 503 before any work
        timeout_keep_alive=5,
    )
    return 0
