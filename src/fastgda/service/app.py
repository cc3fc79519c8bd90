"""The HTTP API and web page: FastAPI over one loaded ``Attributor`` (and optionally its text-to-image model).

Everything heavy loads once in ``create_app``. Request handlers only parse and validate; image decoding, the
encoders, the ranker, the search and generation run in a bounded thread pool so the event loop never blocks on
CPU work. Decoded pixels are budgeted per request and for the whole server, and every error answer is one line
of at most a few hundred bytes, ``{"detail": "..."}``, whatever the request held. Work whose client has left
stops at the next chunk of queries; takedowns made on the attributor folder while the server runs are picked up
within ``takedown_poll_s``.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import re
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import anyio
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..attributor import Attribution, Attributor
from ..errors import FastGDAError
from .batching import MicroBatcher
from .budget import Budget
from .config import CONFIG_ENV, ServiceConfig
from .metrics import Metrics
from .middleware import (
    CLIENT_CLOSED,
    CLIENT_LEFT,
    AccessLogMiddleware,
    BodyLimitMiddleware,
    ClientGoneMiddleware,
    SecurityHeadersMiddleware,
)
from .uploads import (
    UploadError,
    base64_bytes,
    encode_png,
    load_rgb,
    one_line,
    open_image,
    thumbnail_png,
)

logger = logging.getLogger("fastgda.service")
STATIC_DIR = Path(__file__).with_name("static")
# Work in the pool checks whether its client is still there between encoder calls of at least this many queries
# (or --micro-batch, if larger, so a joined pass is still one call): the most a departed client's request goes on
# computing (about 0.1 s a query for image + prompt queries on a CPU core).
CHECK_EVERY = 16


class ClientLeft(Exception):
    """Raised in the pool when the request's client has left: the work stops (the answer is recorded as 499)."""


class Query(BaseModel):
    """One query: a generated image (base64 or data URI) with its prompt, or precomputed features."""

    prompt: str | None = Field(None, description="the prompt the image was generated from")
    image: str | None = Field(None, description="base64 PNG/JPEG/WEBP, or a data: URI")
    features: list[float] | None = Field(
        None, description="query features of the attributor's spec"
    )


class AttributeRequest(Query):
    k: int = Field(10, description="how many training images to return")
    baseline: bool = Field(False, description="also return the untuned baseline's top-k")


class BatchRequest(BaseModel):
    queries: list[Query]
    k: int = 10


class GenerateRequest(BaseModel):
    prompt: str
    seed: int = Field(0, ge=0, le=2**31 - 1)
    k: int = 10
    baseline: bool = False


def _attribution_json(item: Attribution) -> dict:
    return {
        "id": item.id,
        "score": item.score,
        "share": item.share,
        "captions": item.captions,
        "image_url": f"/v1/train/{item.id}/image",
    }


@dataclass
class QueryJob:
    """One request's queries for a pass: Q feature rows (None where an image and its prompt give them, in
    order), the decoded images (uint8 (H, W, 3)) and prompts of those rows, k, and whether the untuned
    baseline's top-k is wanted too."""

    features: list[np.ndarray | None]
    images: list[np.ndarray] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    k: int = 10
    baseline: bool = False
    left: threading.Event | None = (
        None  # set once the request's client has gone (ClientGoneMiddleware)
    )

    @property
    def gone(self) -> bool:
        return self.left is not None and self.left.is_set()


class Service:
    """The loaded state shared by all requests."""

    def __init__(self, config: ServiceConfig):
        import torch

        torch.set_num_threads(config.threads)
        self.config = config
        self.attributor = Attributor.load(
            config.attributor, config.device, config.dtype, config.runtime
        )
        self.metrics = Metrics()
        self.limiter = anyio.CapacityLimiter(config.pool_size)
        self.pixels = Budget(config.max_inflight_pixels)  # decoded pixels, all requests together
        # Request bodies, all requests together.
        self.body_bytes = Budget(config.max_inflight_body_bytes)
        self._counts_lock = threading.Lock()
        self.left_queries = 0  # queries of requests whose client left before the answer (/metrics)
        self.takedowns = 0  # ids taken down while serving (/metrics)
        self._manifest_seen = self._manifest_stamp()
        self.batcher = MicroBatcher(
            self.answer_jobs, self.run, config.pool_size, config.micro_batch
        )
        self.model = None
        if config.model:
            from ..diffusion import TextToImageModel
            from ..diffusion.names import resolve_model_dir

            self.model = TextToImageModel.from_pretrained(
                resolve_model_dir(config.model), device=config.device, dtype=config.dtype
            ).eval()
        self.baseline_part = (
            self.attributor.baseline_part() if self.attributor.has_features else None
        )
        # Build the encoders and touch every code path once, so the first request is not the slow one.
        blank = np.zeros((16, 16, 3), np.uint8)
        self.answer_jobs(
            [QueryJob([None], [blank], ["warm up"], 1, self.baseline_part is not None)]
        )

    # -- validation ---------------------------------------------------------------------------------------
    def check_k(self, k) -> int:
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise HTTPException(422, "k must be an integer") from None
        if not 1 <= k <= self.config.max_k:
            got = str(k) if len(str(k)) <= 12 else f"a number of {len(str(k))} digits"
            raise HTTPException(422, f"k must be between 1 and {self.config.max_k}, got {got}")
        return k

    def check_prompt(self, prompt) -> str:
        if not isinstance(prompt, str) or not prompt.strip():
            raise HTTPException(422, "a non-empty prompt is required")
        try:
            prompt.encode("utf-8")
        except (
            UnicodeEncodeError
        ):  # a lone surrogate (JSON "\ud800") is not text any tokenizer can read
            raise HTTPException(
                422, "the prompt is not valid Unicode text (it holds a lone surrogate)"
            ) from None
        if len(prompt) > self.config.max_prompt_chars:
            raise HTTPException(
                422,
                f"the prompt has {len(prompt)} characters; the limit is {self.config.max_prompt_chars}",
            )
        return prompt.strip()

    def check_features(self, values) -> np.ndarray:
        dim = self.attributor.ranker.in_dim
        if not isinstance(values, list) or len(values) != dim:
            found = len(values) if isinstance(values, list) else type(values).__name__
            raise HTTPException(
                422,
                f"features must have {dim} numbers ({self.attributor.spec}); got {found}",
            )
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise HTTPException(
                422, f"features must have {dim} numbers; some values are not numbers"
            )
        features = np.asarray(values, dtype=np.float32)
        if not np.isfinite(features).all():
            raise HTTPException(422, "features contain NaN or infinite values")
        return features

    def precheck_query(self, data) -> None:
        """Bound a query's JSON before validation: validating a million bad list elements costs seconds on the
        event loop and a million errors, so the features list must have the right length first."""
        if not isinstance(data, dict):
            raise HTTPException(422, "a query must be a JSON object")
        if data.get("features") is not None:
            self.check_features(data["features"])
        for name in ("image", "prompt"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise HTTPException(422, f"{name} must be a string")

    def _decode_all(
        self, uploads: list[bytes | str], left: threading.Event | None = None
    ) -> tuple[list[np.ndarray], int]:
        """Decode a request's images (in the pool): headers first, so the request's declared pixels are checked
        against its own limit and reserved from the server's budget before any pixel is decoded. Stops
        (``ClientLeft``) between images once ``left`` is set.

        Returns:
            uint8 (H, W, 3) arrays, and the pixels reserved (release them with ``self.pixels.release``).
        """
        config = self.config
        opened = []
        for n, data in enumerate(uploads):
            try:
                opened.append(open_image(base64_bytes(data) if isinstance(data, str) else data,
                                         config.max_image_pixels))  # fmt: skip
            except UploadError as exc:
                where = f"query {n}: " if len(uploads) > 1 else ""
                raise UploadError(exc.status, where + exc.message) from None
        pixels = sum(image.width * image.height for image in opened)
        if pixels > config.max_request_pixels:
            raise UploadError(
                413,
                f"the request's images declare {pixels} pixels in all; the limit is {config.max_request_pixels} "
                "pixels per request: send fewer or smaller images per request",
            )
        if not self.pixels.try_reserve(pixels):
            raise UploadError(
                503, "the server is decoding as many pixels as it holds at once; retry shortly"
            )
        try:
            arrays = []
            for n in range(len(opened)):
                if left is not None and left.is_set():
                    raise ClientLeft
                arrays.append(load_rgb(opened[n]))
                opened[n] = None  # the decoded PIL image goes as soon as its array exists
            return arrays, pixels
        except BaseException:
            self.pixels.release(pixels)
            raise

    @asynccontextmanager
    async def decoded(self, uploads: list[bytes | str], left: threading.Event | None = None):
        """The request's images decoded in the pool, held within the pixel budgets until the block ends."""
        try:
            images, pixels = await self.run(self._decode_all, uploads, left)
        except UploadError as exc:
            headers = {"Retry-After": "1"} if exc.status == 503 else None
            raise HTTPException(exc.status, exc.message, headers=headers) from None
        try:
            yield images
        finally:
            self.pixels.release(pixels)

    # -- CPU work (runs in the pool) ---------------------------------------------------------------------
    async def run(self, function, *args):
        return await anyio.to_thread.run_sync(function, *args, limiter=self.limiter)

    def check_baseline(self, wanted: bool) -> None:
        if wanted and self.baseline_part is None:
            raise HTTPException(
                409, "this attributor has no stored features, so it cannot serve a baseline"
            )

    @asynccontextmanager
    async def counting_departures(self, queries: int):
        """Count ``queries`` in ``left_queries`` if the block ends because the request's client left."""
        try:
            yield
        except (anyio.get_cancelled_exc_class(), ClientLeft, ClientDisconnect):
            with self._counts_lock:
                self.left_queries += queries
            raise

    def _feature_rows(self, jobs: list[QueryJob]) -> list[np.ndarray | None]:
        """Each job's feature rows (Q_j, D): given ones as they are, the others from its images and prompts,
        encoded a chunk of queries at a time across the jobs (``CHECK_EVERY``, or ``--micro-batch`` when larger:
        a joined pass is one call of the encoders), skipping jobs whose client has left (None)."""
        chunk_size = max(CHECK_EVERY, self.config.micro_batch)
        pending = [(n, image, prompt) for n, job in enumerate(jobs)
                   for image, prompt in zip(job.images, job.prompts, strict=True)]  # fmt: skip
        encoded: dict[int, list[np.ndarray]] = {n: [] for n in range(len(jobs))}
        for start in range(0, len(pending), chunk_size):
            chunk = [row for row in pending[start : start + chunk_size] if not jobs[row[0]].gone]
            if chunk:
                features = self.attributor.query_features(
                    [image for _, image, _ in chunk], [prompt for _, _, prompt in chunk]
                )
                for (n, _, _), row in zip(chunk, features, strict=True):
                    encoded[n].append(row)
        rows: list[np.ndarray | None] = []
        for n, job in enumerate(jobs):
            if job.gone:
                rows.append(None)
                continue
            mine = iter(encoded[n])
            rows.append(np.stack([next(mine) if f is None else f for f in job.features]))
        return rows

    def answer_jobs(self, jobs: list[QueryJob]) -> list[dict]:
        """One pass over many requests' queries (runs in the pool): the missing features from the encoders (a
        chunk of queries at a time, so a request whose client left stops early), then one ranker pass and search
        per distinct k. Per job: ``results`` (its Q rows of top-k), ``baseline`` when asked, and the pass's
        ``features_ms`` and ``search_ms``; None for a job whose client left."""
        began = time.perf_counter()
        rows = self._feature_rows(jobs)
        features_ms = (time.perf_counter() - began) * 1000
        began = time.perf_counter()
        out = [{"results": None, "features_ms": features_ms} for _ in jobs]
        # Shares are a softmax over the top k, so each k is searched on its own.
        for k in sorted({job.k for n, job in enumerate(jobs) if rows[n] is not None}):
            group = [n for n, job in enumerate(jobs) if job.k == k and rows[n] is not None]
            self._search_group([rows[n] for n in group], k, [out[n] for n in group], None)
            wanting = [n for n in group if jobs[n].baseline]
            if wanting:
                self._search_group([rows[n] for n in wanting], k, [out[n] for n in wanting],
                                   self.baseline_part)  # fmt: skip
        search_ms = (time.perf_counter() - began) * 1000
        for answer in out:
            answer["search_ms"] = search_ms
        return [answer if rows[n] is not None else None for n, answer in enumerate(out)]

    def _search_group(self, rows: list[np.ndarray], k: int, answers: list[dict], part) -> None:
        """Top-k of the jobs' feature rows (each (Q_j, D)) in one search, by the ranker or, with ``part``, by
        that part's untuned cosine; each job's rows go into its answer."""
        features = np.concatenate(rows)
        found = (
            self.attributor.untuned(features, k, part)
            if part
            else self.attributor.attribute_features(features, k)
        )
        listed = [[_attribution_json(a) for a in row] for row in found]
        start = 0
        for answer, job_rows in zip(answers, rows, strict=True):
            mine = listed[start : start + len(job_rows)]
            start += len(job_rows)
            if part:
                answer["baseline"] = {"method": f"untuned {part}", "results": mine}
            else:
                answer["results"] = mine

    async def attribute(self, job: QueryJob, timings: _Timings) -> dict:
        """The job's answer, computed in a pass with whatever other queries wait for the pool."""
        self.check_baseline(job.baseline)
        answer = await self.batcher.submit(job, len(job.features))
        if answer is None:  # not computed: the client left during the pass
            raise ClientLeft
        if job.images:
            timings["features_ms"] = answer.pop("features_ms")
        else:
            answer.pop("features_ms")
        timings["search_ms"] = answer.pop("search_ms")
        return answer

    async def attribute_uploads(
        self, features: list, uploads: list[bytes | str], prompts: list[str], k: int,
        baseline: bool, timings: _Timings, left: threading.Event | None = None,
    ) -> dict:  # fmt: skip
        """``attribute`` for queries whose missing features (None) come from uploaded images and prompts,
        decoded within the pixel budgets, which get the pixels back however the answer ends."""
        began = time.perf_counter()
        async with self.decoded(uploads, left) as images:
            timings["decode_ms"] = (time.perf_counter() - began) * 1000
            job = QueryJob(features, images, prompts, k, baseline, left)
            return await self.attribute(job, timings)

    # -- takedowns made while serving ---------------------------------------------------------------------
    def _manifest_stamp(self):
        """(inode, size, mtime) of the attributor's manifest: ``attributor remove`` replaces it last."""
        root = self.attributor.root
        try:
            stat = (root / "manifest.json").stat()
        except (OSError, TypeError):
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def check_takedowns(self) -> int:
        """Take down the ids removed from the attributor folder since the last check (runs off the event loop);
        returns how many were new. A half-replaced folder is left for the next check."""
        stamp = self._manifest_stamp()
        if stamp is None or stamp == self._manifest_seen:
            return 0
        new = self.attributor.apply_takedowns()
        self._manifest_seen = stamp
        if new:
            with self._counts_lock:
                self.takedowns += new
            logger.info(
                json.dumps(
                    {"event": "takedown", "removed": new, "items": len(self.attributor.index)}
                )
            )
        return new

    async def watch_takedowns(self) -> None:
        """Check for takedowns every ``takedown_poll_s`` seconds until cancelled; a failed check is logged in
        one line and retried."""
        while True:
            await anyio.sleep(self.config.takedown_poll_s)
            try:
                await anyio.to_thread.run_sync(self.check_takedowns)
            except (
                OSError,
                ValueError,
            ) as exc:  # a folder being replaced, or not an index right now
                logger.warning(
                    json.dumps({"event": "takedown_check_failed", "error": one_line(str(exc))})
                )

    def generate(self, prompt: str, seed: int) -> np.ndarray:
        x0 = self.model.sample(
            [prompt], [seed], self.config.generate_steps, self.config.guidance_scale
        )
        return self.model.decode(x0)[0]

    def item(self, item_id: int) -> dict:
        removed = self.attributor.index.removed
        if item_id not in self.attributor.items or item_id in removed:
            raise HTTPException(404, f"no training item with id {item_id}")
        return self.attributor.items[item_id]


def _ensure_log_handler() -> None:
    """Uvicorn configures only its own loggers; give ours a stderr handler so each request's JSON line shows."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _swagger_ui_assets() -> Path | None:
    """Folder of a packaged Swagger UI (``swagger-ui-bundle-v2``), or None to use FastAPI's CDN-hosted page."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = Path(swagger_ui_path)
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def _serve_docs(app: FastAPI, assets: Path | None) -> None:
    """``/docs``: Swagger UI from local files (API servers often run where no CDN can be reached), or from
    FastAPI's CDN without them. Its page runs one inline script, allowed by its hash and nothing else."""
    import hashlib

    from fastapi.openapi.docs import get_swagger_ui_html

    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @lru_cache(maxsize=8)  # one page per root path the proxy in front announces
    def page_and_policy(root: str) -> tuple[str, str]:
        urls = {}
        if assets is not None:
            urls = dict(
                swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
                swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
                swagger_favicon_url=f"{root}/docs-assets/favicon-32x32.png",
            )
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API", **urls
        )
        html = bytes(page.body).decode()
        hashes = " ".join(
            "'sha256-" + base64.b64encode(hashlib.sha256(code.encode()).digest()).decode() + "'"
            for code in re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
        )
        cdn = "" if assets is not None else " https://cdn.jsdelivr.net"
        policy = (
            f"default-src 'self'; script-src 'self'{cdn} {hashes}; style-src 'self' 'unsafe-inline'{cdn}; "
            "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'"
        )
        return html, policy

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        html, policy = page_and_policy(request.scope.get("root_path", "").rstrip("/"))
        return HTMLResponse(html, headers={"Content-Security-Policy": policy})


class _Timings(dict):
    """Milliseconds of each named stage of one request, and its total."""

    def __init__(self):
        super().__init__()
        self.began = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        tick = time.perf_counter()
        yield
        self[name] = (time.perf_counter() - tick) * 1000

    def done(self) -> dict:
        self["total_ms"] = (time.perf_counter() - self.began) * 1000
        return dict(self)


def create_app(config: ServiceConfig) -> FastAPI:
    """Load the attributor (and model) once and return the application."""
    _ensure_log_handler()
    service = Service(config)
    docs_assets = _swagger_ui_assets()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with anyio.create_task_group() as group:
            if config.takedown_poll_s > 0:
                group.start_soon(service.watch_takedowns)
            yield
            group.cancel_scope.cancel()

    app = FastAPI(
        title="fastgda",
        summary="Which training images made this generated image? Fast data attribution.",
        version=_version(),
        docs_url=None,  # served by _serve_docs, with a content security policy for its inline script
        redoc_url=None,  # ReDoc loads its script from a CDN; /docs is served from local files
        lifespan=lifespan,
    )
    app.state.service = service
    guarded = [Depends(_bearer_token_check(config.token))]
    _add_error_handlers(app)
    _add_operation_routes(app, service, guarded)
    _add_attribution_routes(app, service, guarded)
    _add_training_item_routes(app, service, guarded)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _serve_docs(app, docs_assets)
    # Outermost first: the access log (every answer logged and counted, the body limit's and a departed
    # client's 499 included), the security headers (on every answer), the body limit, the client watcher.
    app.add_middleware(ClientGoneMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=config.max_body_bytes,
        timeout_s=config.body_timeout_s,
        budget=service.body_bytes,
    )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(AccessLogMiddleware, metrics=service.metrics, routes=app.routes)
    _install_schemas(app, [AttributeRequest, BatchRequest, GenerateRequest], bool(config.token))
    return app


def _bearer_token_check(token: str | None):
    """A dependency that refuses requests without ``Authorization: Bearer <token>`` (a no-op without a token).
    With a token it is declared as the OpenAPI bearer scheme, so /docs can send it ("Authorize")."""
    if not token:
        return lambda: None
    scheme = HTTPBearer(auto_error=False, description="the token the server was started with")

    def authorised(credentials: HTTPAuthorizationCredentials | None = Security(scheme)) -> None:  # noqa: B008
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    return authorised


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answer is ``{"detail": "<one line>"}``; a client that left gets no traceback in the log."""

    @app.exception_handler(FastGDAError)
    async def library_error(request: Request, exc: FastGDAError):
        return JSONResponse({"detail": one_line(str(exc))}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        return JSONResponse(
            {"detail": _first_problem(list(errors[:1]), len(errors))}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # Bounded whatever a message echoes of the request (a path, a number of thousands of digits).
        return JSONResponse(
            {"detail": one_line(str(exc.detail))}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect):
        return Response(
            status_code=CLIENT_CLOSED
        )  # nobody reads it; the access log and metrics record it

    @app.exception_handler(ClientLeft)
    async def client_gone(request: Request, exc: ClientLeft):
        return Response(status_code=CLIENT_CLOSED)  # the work stopped; nobody reads this either

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)


def _add_operation_routes(app: FastAPI, service: Service, guarded: list) -> None:
    """``/healthz`` (always open), ``/metrics`` and ``/v1/info``."""
    config = service.config

    @app.get("/healthz", tags=["operations"])
    async def health():
        """Liveness: always open, even with a token."""
        return {"status": "ok", "items": len(service.attributor.index), "auth": bool(config.token)}

    @app.get("/metrics", dependencies=guarded, tags=["operations"])
    async def metrics():
        batcher = service.batcher
        counters = {
            "fastgda_passes_total": ("Passes of the encoders, ranker and search.", batcher.passes),
            "fastgda_pass_queries_total": ("Queries those passes answered.", batcher.queries),
            "fastgda_left_queries_total": (
                "Queries of requests whose client left before the answer.",
                service.left_queries,
            ),
            "fastgda_takedowns_total": ("Ids taken down while serving.", service.takedowns),
        }
        return PlainTextResponse(
            service.metrics.render(counters), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.get("/v1/info", dependencies=guarded)
    async def info():
        """What this server can do and the bounds it enforces."""
        return {
            "spec": service.attributor.spec,
            "items": len(service.attributor.index),
            "removed": len(service.attributor.index.removed),
            "feature_dim": service.attributor.ranker.in_dim,
            "generate": service.model is not None,
            "baseline": f"untuned {service.baseline_part}" if service.baseline_part else None,
            "limits": {
                "max_k": config.max_k,
                "max_prompt_chars": config.max_prompt_chars,
                "max_batch": config.max_batch,
                "max_body_bytes": config.max_body_bytes,
                "max_image_pixels": config.max_image_pixels,
            },
        }


# The multipart form of POST /v1/attribute, declared by hand: FastAPI documents only the JSON body it parses.
_ATTRIBUTE_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/AttributeRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "prompt": {"type": "string"},
                        "k": {"type": "integer", "default": 10},
                        "baseline": {"type": "boolean", "default": False},
                    },
                }
            },
        },
    }
}


async def _read_attribute_request(request: Request, service: Service):
    """(the request's fields, its image bytes or base64 text or None), from multipart or JSON."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=8) as form:  # closes spooled files
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, "the form needs an image file field named 'image'")
            body = AttributeRequest(
                prompt=form.get("prompt"),
                k=service.check_k(form.get("k", 10)),
                baseline=str(form.get("baseline", "false")).lower() in ("1", "true", "on", "yes"),
            )
            return body, await upload.read()
    if content_type.startswith("application/json"):
        data = await _parse_json(await request.body())
        service.precheck_query(data)
        body = _validated(data, AttributeRequest)
        return body, body.image
    raise HTTPException(415, "send multipart/form-data (image + prompt) or application/json")


def _add_attribution_routes(app: FastAPI, service: Service, guarded: list) -> None:
    """``/v1/attribute``, ``/v1/attribute/batch`` and ``/v1/generate-and-attribute``."""
    config = service.config

    @app.post("/v1/attribute", dependencies=guarded, openapi_extra=_ATTRIBUTE_REQUEST_BODY)
    async def attribute(request: Request):
        """Top-k training images for a generated image and its prompt (multipart or JSON), or for features."""
        timings = _Timings()
        body, image_bytes = await _read_attribute_request(request, service)
        k = service.check_k(body.k)
        service.check_baseline(body.baseline)
        left = request.scope.get(CLIENT_LEFT)
        if body.features is not None:
            features = [service.check_features(body.features)]
            job = QueryJob(features, k=k, baseline=body.baseline, left=left)
            async with service.counting_departures(1):
                answer = await service.attribute(job, timings)
        else:
            if image_bytes is None:
                raise HTTPException(422, "send an image and its prompt, or features")
            prompt = service.check_prompt(body.prompt)
            async with service.counting_departures(1):
                answer = await service.attribute_uploads(
                    [None], [image_bytes], [prompt], k, body.baseline, timings, left
                )
        out = {"k": k, "results": answer["results"][0], "timings": timings.done()}
        return {**out, **_first_baseline(answer)}

    @app.post("/v1/attribute/batch", dependencies=guarded, openapi_extra=_json_body(BatchRequest))
    async def attribute_batch(request: Request):
        """Top-k for many queries at once (JSON): each an image + prompt, or features."""
        timings = _Timings()
        data = await _read_json(request)
        queries = data.get("queries") if isinstance(data, dict) else None
        if not isinstance(queries, list) or not 1 <= len(queries) <= config.max_batch:
            found = len(queries) if isinstance(queries, list) else "none"
            raise HTTPException(
                422,
                f"send a JSON object whose 'queries' holds 1 to {config.max_batch} queries; got {found}",
            )
        for n, query in enumerate(
            queries
        ):  # bounded before validation, so errors stay few and cheap
            try:
                service.precheck_query(query)
            except HTTPException as exc:
                raise HTTPException(422, f"query {n}: {exc.detail}") from None
        body = _validated(data, BatchRequest)
        k = service.check_k(body.k)
        rows: list[np.ndarray | None] = [None] * len(body.queries)
        uploads, prompts = [], []
        for n, query in enumerate(body.queries):
            if query.features is not None:
                rows[n] = service.check_features(query.features)
            elif query.image is not None:
                prompts.append(service.check_prompt(query.prompt))
                uploads.append(query.image)
            else:
                raise HTTPException(422, f"query {n}: send an image and its prompt, or features")
        left = request.scope.get(CLIENT_LEFT)
        async with service.counting_departures(len(rows)):
            if uploads:
                answer = await service.attribute_uploads(
                    rows, uploads, prompts, k, False, timings, left
                )
            else:
                answer = await service.attribute(QueryJob(rows, k=k, left=left), timings)
        return {"k": k, "results": answer["results"], "timings": timings.done()}

    @app.post(
        "/v1/generate-and-attribute",
        dependencies=guarded,
        openapi_extra=_json_body(GenerateRequest),
    )
    async def generate_and_attribute(request: Request):
        """Generate an image from the prompt with the served model (seeded, deterministic), then attribute it."""
        if service.model is None:
            raise HTTPException(
                501, "no text-to-image model is attached; start the server with --model"
            )
        timings = _Timings()
        body = _validated(await _read_json(request), GenerateRequest)
        prompt, k = service.check_prompt(body.prompt), service.check_k(body.k)
        service.check_baseline(body.baseline)  # before the costly generation
        left = request.scope.get(CLIENT_LEFT)
        async with service.counting_departures(1):
            with timings.stage("generate_ms"):
                image = await service.run(service.generate, prompt, body.seed)
            job = QueryJob([None], [image], [prompt], k, body.baseline, left)
            answer = await service.attribute(job, timings)
        out = {
            "k": k,
            "prompt": prompt,
            "seed": body.seed,
            "image": "data:image/png;base64," + base64.b64encode(encode_png(image)).decode(),
            "results": answer["results"][0],
            "timings": timings.done(),
        }
        return {**out, **_first_baseline(answer)}


def _add_training_item_routes(app: FastAPI, service: Service, guarded: list) -> None:
    """``/v1/train/{id}`` and its image: training items by id, never by path."""

    @app.get("/v1/train/{item_id}", dependencies=guarded)
    async def train_item(item_id: int):
        """A training item's metadata, by id (never by path)."""
        record = service.item(item_id)
        return {
            "id": item_id,
            "captions": record["captions"],
            "image_url": f"/v1/train/{item_id}/image",
        }

    @app.get("/v1/train/{item_id}/image", dependencies=guarded)
    async def train_image(item_id: int, size: int = 128):
        """A PNG thumbnail of a training image, longer side ``size`` (16-512) pixels."""
        service.item(item_id)
        if not 16 <= size <= 512:
            raise HTTPException(422, f"size must be between 16 and 512, got {size}")
        path = service.attributor.image_path(item_id)
        if not path or not Path(path).is_file():
            raise HTTPException(404, f"the image of training item {item_id} is not on this server")
        png = await service.run(thumbnail_png, path, size)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


def _first_baseline(answer: dict) -> dict:
    """The single query's baseline entry of ``Service.attribute``'s answer, if it was asked for."""
    if "baseline" not in answer:
        return {}
    baseline = answer["baseline"]
    return {"baseline": {"method": baseline["method"], "results": baseline["results"][0]}}


async def _read_json(request: Request):
    """The request's JSON body (any JSON value); 415 for another content type, 422 for invalid JSON. The body is
    read here, not by FastAPI, so the body limit answers 413 and a client that leaves is not a server error."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise HTTPException(415, "send application/json")
    return await _parse_json(await request.body())


# Bodies above this size are parsed on a worker thread: a multi-megabyte JSON body parsed on the event loop
# would hold every other request, /healthz included, for tens of milliseconds.
PARSE_OFF_LOOP_BYTES = 64 * 1024


async def _parse_json(raw: bytes):
    """``_loads`` of a request body, off the event loop when the body is large."""
    if len(raw) <= PARSE_OFF_LOOP_BYTES:
        return _loads(raw)
    return await anyio.to_thread.run_sync(_loads, raw)


def _loads(raw: bytes):
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(422, one_line(f"invalid JSON body: {exc}")) from None
    except (
        RecursionError
    ):  # arrays or objects nested deeper than the parser's stack: no request needs that
        raise HTTPException(422, "invalid JSON body: nested too deeply") from None


def _validated(data, model: type[BaseModel]) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(
            422, _first_problem(exc.errors(include_url=False), exc.error_count())
        ) from None


def _first_problem(errors: list[dict], count: int) -> str:
    """One line for a list of validation errors: the first one, where it is, and how many more there are."""
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    more = f" (and {count - 1} more problems)" if count > 1 else ""
    return one_line(f"invalid request: {where}: {first.get('msg', 'invalid')}{more}")


def _json_body(model: type[BaseModel]) -> dict:
    """OpenAPI for a JSON body the handler reads itself (``_install_schemas`` adds the model's schema)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _install_schemas(app: FastAPI, models: list[type[BaseModel]], bearer: bool) -> None:
    """Add the request models' schemas (and the bearer security scheme) to the OpenAPI document."""
    from fastapi.openapi.utils import get_openapi

    def openapi():
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _version() -> str:
    from .. import __version__

    return __version__


def app_from_environment() -> FastAPI:
    """Application factory for uvicorn worker processes: the config comes as JSON in FASTGDA_SERVICE_CONFIG."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise RuntimeError(f"{CONFIG_ENV} is not set; start the server with `fastgda serve`")
    return create_app(ServiceConfig(**json.loads(raw)))
