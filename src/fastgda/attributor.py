"""``Attributor``: answer "which training images made this?" with one encoder pass, one MLP pass, one search.

An attributor folder holds everything a query needs::

    ranker/        the distilled ranker (its manifest names the feature spec)
    index/         ranker embeddings of every training item (a VectorIndex)
    features/      the items' frozen backbone features (optional): for retraining and untuned baselines
    items.jsonl    per training id: captions and image path (relative to the dataset root)
    manifest.json  kind "attributor": spec, dataset root and content hash, share temperature

Scores are cosines in the ranker's space: higher = more influential. ``share`` is a softmax of the top-k scores
with a temperature fitted to the teacher (``fit_share_temperature``), for "percentage of influence" displays.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ._artifacts import atomic_dir, read_manifest, write_manifest
from .encoders import FeatureSpec, make_encoder
from .errors import FastGDAError, IncompatibleArtifactError
from .features import FeatureEmbedder, Features
from .index import VectorIndex, exact_top_k
from .ranker import Ranker

ATTRIBUTOR_KIND = "attributor"
ATTRIBUTOR_FORMAT_VERSION = 1


@dataclass
class Attribution:
    """One training item's part in a query's answer."""

    id: int
    score: float
    share: float
    captions: list[str]
    image: str  # absolute path of the training image (may not exist on another machine)


def softmax_shares(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax over each row of top-k scores (Q, k); -inf scores (padding) get share 0."""
    z = np.where(np.isfinite(scores), scores / temperature, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_share_temperature(predicted: np.ndarray, teacher_scores: np.ndarray) -> float:
    """Temperature T whose softmax(predicted / T) best matches the teacher's shares (cross-entropy).

    Args:
        predicted: (Q, K) ranker cosines of each query's teacher-ranked candidates.
        teacher_scores: (Q, K) the teacher's taus for the same items; a query's target shares are its positive
            taus normalised to sum to 1 (queries with no positive tau are skipped).
    """
    positive = np.clip(teacher_scores, 0, None)
    keep = positive.sum(axis=1) > 0
    if not keep.any():
        return 0.05
    target = positive[keep] / positive[keep].sum(axis=1, keepdims=True)
    grid = np.logspace(-3, 0.5, 60)
    losses = [
        -(target * np.log(softmax_shares(predicted[keep], t) + 1e-12)).sum(axis=1).mean()
        for t in grid
    ]
    return float(grid[int(np.argmin(losses))])


class Attributor:
    """A loaded attributor: ranker, index and item metadata; encoders are built on the first image query."""

    def __init__(
        self, root: Path, ranker: Ranker, index: VectorIndex, items: list[dict], manifest: dict
    ):
        self.root, self.ranker, self.index, self.items, self.manifest = (
            root,
            ranker,
            index,
            items,
            manifest,
        )
        self.spec: str = manifest["config"]["spec"]
        self.temperature: float = manifest["config"]["share_temperature"]
        self.data_root = Path(manifest["config"]["data_root"])
        self._embedder: FeatureEmbedder | None = None
        self._untuned: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # -- building ----------------------------------------------------------------------------------------
    @staticmethod
    def build(
        out_dir: str | os.PathLike,
        ranker_dir: str | os.PathLike,
        item_features: Features,
        dataset,
        backend: str = "exact",
        share_temperature: float = 0.05,
        overwrite: bool = False,
        keep_features: bool = True,
        item_embeddings: np.ndarray | None = None,
        **index_options,
    ) -> Attributor:
        """Embed every training item with the ranker, index them, and write the attributor folder.

        ``keep_features`` stores the backbone features beside the index (float16), so that a ranker can be
        retrained with an MLP pass only and ``untuned`` baselines can be served. ``item_embeddings``: the
        ranker's embeddings of ``item_features`` (N, out_dim) when the caller already computed them.
        """
        ranker, ranker_manifest = Ranker.load(ranker_dir)
        spec = ranker_manifest["config"]["spec"]
        if item_features.spec != spec:
            raise IncompatibleArtifactError(
                f"the ranker was trained on {spec!r} features, the item features are {item_features.spec!r}; "
                f"embed the training set with `fastgda embed --spec {spec}`"
            )
        if item_features.source.get("content_hash") not in (None, dataset.content_hash):
            raise IncompatibleArtifactError(
                "the item features were computed on another dataset than the one given; embed this dataset"
            )
        index = VectorIndex(ranker.embedding_dim, backend, **index_options)
        if item_embeddings is None:
            item_embeddings = ranker.embed_numpy(item_features.values)
        elif item_embeddings.shape != (len(item_features), ranker.embedding_dim):
            raise IncompatibleArtifactError(
                f"item_embeddings {item_embeddings.shape} do not match {len(item_features)} items x "
                f"{ranker.embedding_dim} ranker outputs"
            )
        index.add(item_features.ids, item_embeddings)
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            shutil.copytree(ranker_dir, tmp / "ranker")
            index.save(tmp / "index")
            if keep_features:
                item_features.save(tmp / "features", dtype="float16")
            lines = [
                json.dumps(
                    {
                        "id": int(i),
                        "captions": list(dataset.captions(int(i))),
                        "file": _item_file(dataset, i),
                    }
                )
                for i in item_features.ids
            ]
            (tmp / "items.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            write_manifest(
                tmp,
                ATTRIBUTOR_KIND,
                ATTRIBUTOR_FORMAT_VERSION,
                config={
                    "spec": spec,
                    "data_root": str(Path(dataset.root).resolve()),
                    "content_hash": dataset.content_hash,
                    "share_temperature": share_temperature,
                    "backend": backend,
                },
                shapes={"items": [len(item_features)]},
            )
        return Attributor.load(out_dir)

    @classmethod
    def load(cls, root: str | os.PathLike) -> Attributor:
        root = Path(root)
        manifest = read_manifest(root, ATTRIBUTOR_KIND, ATTRIBUTOR_FORMAT_VERSION)
        ranker, _ = Ranker.load(root / "ranker")
        index = VectorIndex.load(root / "index")
        lines = (root / "items.jsonl").read_text(encoding="utf-8").splitlines()
        items = {(rec := json.loads(line))["id"]: rec for line in lines if line.strip()}
        return cls(root, ranker, index, items, manifest)

    # -- changing the training set ----------------------------------------------------------------------
    def add_items(
        self, ids, images, captions: list[list[str]], files: list[str] | None = None
    ) -> None:
        """Index new training images without retraining: embed (image, first caption) with the ranker.

        Args:
            ids: new int ids (n,); images: uint8 (n, H, W, 3) or paths; captions: per item, at least one.
        """
        arrays = [_load_query_image(im) for im in images]
        if not all(c and all(t.strip() for t in c) for c in captions):
            raise FastGDAError("every new training item needs at least one non-empty caption")
        features = self.embedder.embed_pairs(arrays, [c[0] for c in captions])
        self.index.add(ids, self.ranker.embed_numpy(features))
        for n, (item_id, caps) in enumerate(zip(ids, captions, strict=True)):
            self.items[int(item_id)] = {
                "id": int(item_id),
                "captions": list(caps),
                "file": (files or [""] * len(ids))[n],
            }

    def remove_items(self, ids) -> int:
        """Take training items out for good (takedowns); returns how many were indexed."""
        self._untuned.clear()  # the baselines must forget them too
        return self.index.remove(ids)

    def save(self) -> None:
        """Persist the index and item list in place (written beside, then renamed)."""
        self.index.save(self.root / "index", overwrite=True)
        live = set(self.index.ids.tolist()) - self.index.removed
        lines = [json.dumps(rec) for item_id, rec in sorted(self.items.items()) if item_id in live]
        from ._artifacts import write_text_atomic

        write_text_atomic(self.root / "items.jsonl", "\n".join(lines) + "\n")
        config = self.manifest["config"]
        write_manifest(
            self.root,
            ATTRIBUTOR_KIND,
            ATTRIBUTOR_FORMAT_VERSION,
            config=config,
            shapes={"items": [len(live)]},
        )

    # -- querying ----------------------------------------------------------------------------------------
    @property
    def embedder(self) -> FeatureEmbedder:
        if self._embedder is None:
            self._embedder = FeatureEmbedder(self.spec)
        return self._embedder

    def query_features(self, images, prompts: list[str]) -> np.ndarray:
        """Features (Q, D) of query images (uint8 (Q, H, W, 3), paths, or PIL images) and their prompts."""
        arrays = [_load_query_image(im) for im in images]
        if len(arrays) != len(prompts):
            raise FastGDAError(f"{len(arrays)} images for {len(prompts)} prompts")
        return self.embedder.embed_pairs(arrays, list(prompts))

    def attribute_features(self, features: np.ndarray, k: int = 10) -> list[list[Attribution]]:
        """Top-k training items for query features (Q, D), most influential first."""
        ids, scores = self.index.search(self.ranker.embed_numpy(np.atleast_2d(features)), k)
        shares = softmax_shares(scores, self.temperature)
        return [
            [
                Attribution(
                    int(i), float(s), float(p), self.items[int(i)]["captions"], self._path(int(i))
                )
                for i, s, p in zip(row_ids, row_scores, row_shares, strict=True)
                if i >= 0
            ]
            for row_ids, row_scores, row_shares in zip(ids, scores, shares, strict=True)
        ]

    @property
    def has_features(self) -> bool:
        return (self.root / "features" / "manifest.json").exists()

    def baseline_part(self) -> str:
        """The default untuned baseline: the spec's first text part (the strongest one on the embedded world,
        BENCHMARKS.md), else its first part."""
        parts = FeatureSpec.parse(self.spec).names
        text = [name for name in parts if make_encoder(name).modality == "text"]
        return (text or parts)[0]

    def untuned(
        self, features: np.ndarray, k: int = 10, part: str | None = None
    ) -> list[list[Attribution]]:
        """Top-k by the plain cosine of one part of the frozen features (no ranker): a baseline to compare with.

        Args:
            features: float (Q, D) query features of the attributor's spec.
            part: encoder name within the spec (default ``baseline_part()``).

        Raises:
            FastGDAError: the attributor was built without ``features/`` or ``part`` is not in the spec.
        """
        part = part or self.baseline_part()
        if part not in self._untuned:
            if not self.has_features:
                raise FastGDAError(
                    f"{self.root} has no features/ folder; rebuild it with `fastgda attributor build` to serve "
                    "untuned baselines"
                )
            stored = Features.load(self.root / "features")
            try:
                columns = stored.part(part).astype(np.float32)
            except KeyError as exc:
                raise FastGDAError(
                    f"{part!r} is not a part of {self.spec!r}; choose one of {FeatureSpec.parse(self.spec).names}"
                ) from exc
            live = ~np.isin(stored.ids, np.fromiter(self.index.removed, np.int64))
            columns = columns[live] / np.maximum(
                np.linalg.norm(columns[live], axis=1, keepdims=True), 1e-12
            )
            self._untuned[part] = (stored.ids[live], columns)
        ids, columns = self._untuned[part]
        offset = next(p["offset"] for p in self.embedder.parts if p["name"] == part)
        queries = np.atleast_2d(features)[:, offset : offset + columns.shape[1]].astype(np.float32)
        queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        positions, scores = exact_top_k(queries, columns, k)
        shares = softmax_shares(scores, self.temperature)
        return [
            [
                Attribution(
                    int(ids[p]),
                    float(s),
                    float(h),
                    self.items[int(ids[p])]["captions"],
                    self._path(int(ids[p])),
                )
                for p, s, h in zip(row_p, row_s, row_h, strict=True)
            ]
            for row_p, row_s, row_h in zip(positions, scores, shares, strict=True)
        ]

    def attribute(self, image, prompt: str, k: int = 10) -> list[Attribution]:
        """Top-k training items for one generated image and its prompt."""
        return self.attribute_batch([image], [prompt], k)[0]

    def attribute_batch(self, images, prompts: list[str], k: int = 10) -> list[list[Attribution]]:
        return self.attribute_features(self.query_features(images, prompts), k)

    def _path(self, item_id: int) -> str:
        return (
            str(self.data_root / self.items[item_id]["file"]) if self.items[item_id]["file"] else ""
        )


def _item_file(dataset, item_id) -> str:
    """The item's image path relative to its dataset root (absolute if it lies elsewhere)."""
    path = Path(dataset.image_path(int(item_id)))
    try:
        return path.resolve().relative_to(Path(dataset.root).resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _load_query_image(image) -> np.ndarray:
    if isinstance(image, str | os.PathLike):
        try:
            with Image.open(image) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise FastGDAError(f"cannot read query image {image}: {exc}") from exc
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    return np.asarray(image)
