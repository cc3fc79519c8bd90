"""The HTTP API on a real attributor and model: answers, every error status, the token, malicious uploads."""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from _tolerance import F32, F64, assert_close, assert_same_top_k, attributed, rounded, sums

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from fastgda.attributor import Attributor  # noqa: E402
from fastgda.images import to_rgb  # noqa: E402
from fastgda.service.app import create_app  # noqa: E402
from fastgda.service.config import ServiceConfig  # noqa: E402

TOKEN = "s3cret-token"
PROMPT = "a large cyan circle in the center on a black background"


@pytest.fixture(scope="session")
def client(served):
    config = ServiceConfig(
        attributor=str(served["attributor"]),
        model=str(served["model"]),
        token=TOKEN,
        max_body_bytes=256 * 1024,
        max_image_pixels=1024 * 1024,
        generate_steps=4,
    )
    with TestClient(create_app(config)) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but carries one row of data: a decompression-bomb probe."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def upload(client, data: bytes, prompt: str = PROMPT, k=5, name="query.png", **fields):
    files = {"image": (name, data, "image/png")}
    return client.post("/v1/attribute", files=files, data={"prompt": prompt, "k": k, **fields})


def ids(results) -> list[int]:
    return [r["id"] for r in results]


def assert_same_answer(results: list[dict], expected, attributor) -> None:
    """The server's results against the library's answer row (an ``Attributions`` row of ids and scores): the
    server's encoders may be ONNX Runtime's, so they agree up to ties within ``attributed``'s bound."""
    ids_, scores = expected
    assert_same_top_k(
        ids(results),
        [r["score"] for r in results],
        list(ids_),
        list(scores),
        attributed(attributor),
    )


def test_multipart_json_and_features_queries_agree_with_the_library(client, served):
    library = Attributor.load(served["attributor"])
    image = np.asarray(Image.open(served["query_image"]).convert("RGB"))
    found = library.attribute(image, PROMPT, 5)
    expected = (found.ids[0], found.scores[0])

    answer = upload(client, served["query_image"].read_bytes()).json()
    assert_same_answer(answer["results"], expected, library)
    assert answer["k"] == 5 and {"decode_ms", "features_ms", "search_ms", "total_ms"} <= set(
        answer["timings"]
    )
    # Five float32 shares (one rounding each), summed here in float64.
    assert_close(
        sum(r["share"] for r in answer["results"]), 1.0, rounded(F32, 1.0) + sums(5, 1.0, F64)
    )
    assert [r["score"] for r in answer["results"]] == sorted(
        [r["score"] for r in answer["results"]], reverse=True
    )
    assert all(
        r["image_url"] == f"/v1/train/{r['id']}/image" and r["captions"] for r in answer["results"]
    )

    encoded = base64.b64encode(served["query_image"].read_bytes()).decode()
    as_json = client.post("/v1/attribute", json={"image": encoded, "prompt": PROMPT, "k": 5})
    assert_same_answer(as_json.json()["results"], expected, library)
    features = library.query_features([image], [PROMPT])[0]
    by_features = client.post("/v1/attribute", json={"features": features.tolist(), "k": 5})
    assert_same_answer(by_features.json()["results"], expected, library)


def test_uploads_of_any_mode_size_and_orientation_are_answered_as_the_library_reads_them(
    client, served
):
    """RGBA, 16-bit, palette GIF, CMYK JPEG and an EXIF-rotated JPEG of other sizes: each decoded upright as
    8-bit RGB (``fastgda.images.to_rgb``), answered as the library answers that array."""
    from _mixed_images import VARIANTS, _picture, stored_bytes

    library = Attributor.load(served["attributor"])
    base = np.asarray(Image.open(served["query_image"]).convert("RGB"))
    for size, mode, kind in VARIANTS:
        data = stored_bytes(_picture(base, size), mode, kind)
        name = "query.jpg" if kind in ("JPEG", "EXIF") else f"query.{kind.lower()}"
        response = upload(client, data, name=name)
        assert response.status_code == 200, (mode, kind, response.text)
        with Image.open(io.BytesIO(data)) as image:
            expected = library.attribute(to_rgb(image), PROMPT, 5)
        assert_same_answer(
            response.json()["results"], (expected.ids[0], expected.scores[0]), library
        )


def test_baseline_comparison_is_the_untuned_text_cosine(client, served):
    library = Attributor.load(served["attributor"])
    image = np.asarray(Image.open(served["query_image"]).convert("RGB"))
    features = library.query_features([image], [PROMPT])
    answer = upload(client, served["query_image"].read_bytes(), baseline="true").json()
    assert answer["baseline"]["method"] == "untuned minilm"
    found = library.untuned(features, 5, "minilm")
    assert_same_answer(answer["baseline"]["results"], (found.ids[0], found.scores[0]), library)
    # The text-only baseline must differ from the ranker's answer somewhere, or the toggle shows nothing.
    assert (
        library.untuned(features, 5, "pixels").ids.tolist()
        != library.untuned(features, 5, "minilm").ids.tolist()
    )


def test_batch_answers_each_query_as_alone(client, served):
    encoded = base64.b64encode(served["query_image"].read_bytes()).decode()
    single = client.post("/v1/attribute", json={"image": encoded, "prompt": PROMPT, "k": 3}).json()
    other = client.post(
        "/v1/attribute", json={"image": encoded, "prompt": "a small red square on the left", "k": 3}
    ).json()
    batch = client.post(
        "/v1/attribute/batch",
        json={
            "k": 3,
            "queries": [
                {"image": encoded, "prompt": PROMPT},
                {"image": encoded, "prompt": "a small red square on the left"},
            ],
        },
    )
    assert batch.status_code == 200
    rows = batch.json()["results"]
    library = Attributor.load(served["attributor"])
    for row, alone in zip(rows, (single, other), strict=True):
        scores = [r["score"] for r in alone["results"]]
        assert_same_answer(row, (ids(alone["results"]), scores), library)
    too_many = client.post(
        "/v1/attribute/batch", json={"k": 3, "queries": [{"features": [0.0]}] * 65}
    )
    assert too_many.status_code == 422


def test_generate_and_attribute_is_seeded(client, served):
    first = client.post(
        "/v1/generate-and-attribute", json={"prompt": PROMPT, "seed": 3, "k": 4}
    ).json()
    again = client.post(
        "/v1/generate-and-attribute", json={"prompt": PROMPT, "seed": 3, "k": 4}
    ).json()
    assert first["image"] == again["image"] and ids(first["results"]) == ids(again["results"])
    png = base64.b64decode(first["image"].partition(",")[2])
    assert Image.open(io.BytesIO(png)).size == (8, 8)  # the test model's resolution
    # The same image uploaded by hand gets the same answer.
    assert ids(upload(client, png, k=4).json()["results"]) == ids(first["results"])


def test_generate_without_a_model_is_501(served):
    app = create_app(ServiceConfig(attributor=str(served["attributor"])))
    with TestClient(app) as plain:
        answer = plain.post("/v1/generate-and-attribute", json={"prompt": PROMPT})
        assert answer.status_code == 501 and "--model" in answer.json()["detail"]
        assert plain.get("/v1/info").json()["generate"] is False


def test_training_items_by_id_only(client, served):
    item = client.get("/v1/train/3")
    assert item.status_code == 200 and item.json()["id"] == 3 and item.json()["captions"]
    thumbnail = client.get("/v1/train/3/image?size=64")
    assert thumbnail.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumbnail.content)).size == (64, 64)
    assert client.get("/v1/train/99999").status_code == 404
    assert client.get("/v1/train/-1/image").status_code == 404
    assert client.get("/v1/train/3/image?size=4000").status_code == 422
    for probe in [
        "/v1/train/..%2F..%2F..%2Fetc%2Fpasswd",
        "/v1/train/..%2Fcaptions.jsonl/image",
        "/v1/train/%2Fetc%2Fpasswd/image",
        "/v1/train/3%2F..%2F..%2Fmanifest.json/image",
    ]:
        answer = client.get(probe)
        assert answer.status_code in (404, 422), probe
        assert b"root:" not in answer.content and b"captions" not in answer.content


def test_the_token_guards_everything_but_health(served, client):
    bare = TestClient(client.app)
    assert bare.get("/healthz").status_code == 200 and bare.get("/healthz").json()["auth"] is True
    assert bare.get("/").status_code == 200  # the page shell carries no data; it asks for the token
    for method, path in [
        ("get", "/v1/info"),
        ("get", "/metrics"),
        ("get", "/v1/train/3"),
        ("get", "/v1/train/3/image"),
        ("post", "/v1/attribute"),
        ("post", "/v1/attribute/batch"),
        ("post", "/v1/generate-and-attribute"),
    ]:
        answer = getattr(bare, method)(path)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"] == "Bearer"
    wrong = bare.get("/v1/info", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    assert client.get("/v1/info").status_code == 200


def test_malicious_and_malformed_uploads(client, served):
    good = served["query_image"].read_bytes()
    assert upload(client, good[: len(good) // 2]).status_code == 422  # truncated PNG
    bomb = upload(client, declared_png(100_000, 100_000))  # above PIL's own bomb limit
    assert bomb.status_code == 422 and "pixels" in bomb.json()["detail"]
    large = upload(client, declared_png(5000, 5000))  # below PIL's, above the server's
    assert large.status_code == 422 and "5000x5000" in large.json()["detail"]
    text = upload(client, b"#!/bin/sh\necho this is not an image\n", name="evil.png")
    assert text.status_code == 415
    assert upload(client, b"").status_code == 422
    gif_header_only = upload(client, b"GIF89a")
    assert gif_header_only.status_code in (415, 422)
    not_base64 = client.post("/v1/attribute", json={"image": "%%%", "prompt": PROMPT})
    assert not_base64.status_code == 422
    wrong_type = client.post(
        "/v1/attribute", content=b"hello", headers={"content-type": "text/plain"}
    )
    assert wrong_type.status_code == 415


def test_bounds_on_prompt_k_and_features(client, served):
    good = served["query_image"].read_bytes()
    assert upload(client, good, prompt="").status_code == 422
    assert upload(client, good, prompt="x" * 1001).status_code == 422
    assert upload(client, good, k=0).status_code == 422
    assert upload(client, good, k=101).status_code == 422
    assert upload(client, good, k="ten").status_code == 422
    short = client.post("/v1/attribute", json={"features": [0.1, 0.2], "k": 3})
    assert short.status_code == 422 and "features must have" in short.json()["detail"]
    dim = client.get("/v1/info").json()["feature_dim"]
    nan = client.post("/v1/attribute", content=f'{{"features": [{", ".join(["NaN"] * dim)}]}}',
                      headers={"content-type": "application/json"})  # fmt: skip
    assert nan.status_code == 422
    broken = client.post(
        "/v1/attribute", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422


def test_body_limit_answers_413_declared_or_streamed(client):
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8))
    assert len(big) > 256 * 1024
    assert upload(client, big).status_code == 413

    def chunks():  # no Content-Length: the limit must still hold while streaming
        for start in range(0, 400_000, 50_000):
            yield b"{" + b" " * 49_999 if start == 0 else b" " * 50_000

    streamed = client.post(
        "/v1/attribute", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_internal_errors_do_not_leak_tracebacks(served, monkeypatch):
    app = create_app(ServiceConfig(attributor=str(served["attributor"])))
    service = app.state.service

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(service.attributor, "attribute_features", broken)
    with TestClient(app, raise_server_exceptions=False) as plain:
        dim = service.attributor.ranker.shape.in_dim
        answer = plain.post("/v1/attribute", json={"features": [0.0] * dim, "k": 3})
        assert answer.status_code == 500
        assert "secret" not in answer.text and "Traceback" not in answer.text


def test_metrics_count_requests_by_route_template(client):
    client.get("/v1/train/5")
    client.get("/v1/train/6")
    text = client.get("/metrics").text
    assert 'fastgda_requests_total{method="GET",route="/v1/train/{item_id}",status="200"}' in text
    assert "/v1/train/5" not in text  # raw paths never become labels
    assert (
        'fastgda_request_duration_seconds_bucket{method="GET",route="/v1/train/{item_id}",le="+Inf"}'
        in text
    )

    def counter(text: str, name: str) -> int:
        return int(
            next(line for line in text.splitlines() if line.startswith(name + " ")).split()[1]
        )

    passes, queries = (
        counter(text, "fastgda_passes_total"),
        counter(text, "fastgda_pass_queries_total"),
    )
    client.post(
        "/v1/attribute/batch", json={"k": 3, "queries": [{"features": [0.0] * dim(client)}] * 2}
    )
    text = client.get("/metrics").text
    assert counter(text, "fastgda_passes_total") == passes + 1
    assert counter(text, "fastgda_pass_queries_total") == queries + 2


def dim(client) -> int:
    return client.get("/v1/info").json()["feature_dim"]


def test_openapi_documents_the_api(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/attribute", "/v1/attribute/batch", "/v1/generate-and-attribute"} <= set(
        schema["paths"]
    )
    body = schema["paths"]["/v1/attribute"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
