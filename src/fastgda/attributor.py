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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ._artifacts import atomic_dir, read_manifest, write_manifest, write_text_atomic
from .encoders import FeatureSpec, make_encoder
from .errors import FastGDAError, IncompatibleArtifactError, NotFittedError
from .features import FeatureExtractor, Features
from .images import array_to_rgb, read_image, to_rgb
from .index import VectorIndex, exact_top_k, unit_rows
from .ranker import Ranker
from .ranker.untuned import load_scorer

ATTRIBUTOR_KIND = "attributor"
ATTRIBUTOR_FORMAT_VERSION = 1
# Shares without validation data to fit the temperature to (``fit_share_temperature``).
DEFAULT_SHARE_TEMPERATURE = 0.05


@dataclass
class Attribution:
    """One training item's part in a query's answer."""

    id: int
    score: float
    share: float
    captions: list[str]
    image: str  # absolute path of the training image (may not exist on another machine)


@dataclass
class Attributions:
    """Top-k answers for Q queries as arrays, most influential first; ``attributions[q]`` lists query q's items.

    A row with fewer than k indexed items is padded with id -1, score -inf and share 0.
    """

    ids: np.ndarray  # int64 (Q, k)
    scores: np.ndarray  # float32 (Q, k)
    shares: np.ndarray  # float32 (Q, k)
    source: Attributor = field(repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, q: int) -> list[Attribution]:
        return [
            self.source.describe(int(i), float(s), float(p))
            for i, s, p in zip(self.ids[q], self.scores[q], self.shares[q], strict=True)
            if i >= 0
        ]

    def __iter__(self) -> Iterator[list[Attribution]]:
        return (self[q] for q in range(len(self)))


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
        return DEFAULT_SHARE_TEMPERATURE
    target = positive[keep] / positive[keep].sum(axis=1, keepdims=True)
    grid = np.logspace(-3, 0.5, 60)
    losses = [
        -(target * np.log(softmax_shares(predicted[keep], t) + 1e-12)).sum(axis=1).mean()
        for t in grid
    ]
    return float(grid[int(np.argmin(losses))])


class Attributor:
    """Ranker, index and item metadata: ``build`` it from a ranker and a dataset, or ``load`` a saved one.

    Encoders are built on the first image query. ``root`` is the folder it was loaded from or saved to (None for
    one built in memory and not saved yet).
    """

    def __init__(
        self,
        ranker: Ranker,
        index: VectorIndex,
        items: dict[int, dict],
        config: dict,
        item_features: Features | None = None,
        root: Path | None = None,
    ):
        self.ranker, self.index, self.items, self.config = ranker, index, items, config
        self.item_features, self.root = item_features, root
        self.spec: str = config["spec"]
        self.temperature: float = config["share_temperature"]
        self.data_root = Path(config["data_root"])
        self._embedder: FeatureExtractor | None = None
        # Where the query encoders run, in what precision, and on which runtime (fastgda.encoders.runtime).
        self._compute = ("cpu", "float32", "torch")
        # part -> (live ids, unit columns, the removed-id array they exclude): refreshed after a takedown
        self._untuned: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    # -- building, saving, loading ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        ranker: Ranker,
        dataset,
        item_features: Features,
        *,
        backend: str = "exact",
        validation: tuple[Features, object] | None = None,
        keep_features: bool = True,
        item_embeddings: np.ndarray | None = None,
        **index_options,
    ) -> Attributor:
        """Embed every training item with the ranker and index them (in memory; ``save`` writes the folder).

        Args:
            ranker: a trained ``Ranker``; its spec must be the features' spec.
            dataset: the training set (captions and image paths of every item).
            item_features: ``Features`` (N, D) of the training set.
            backend: ``exact``, ``hnsw`` or ``ivfpq`` (``VectorIndex``).
            validation: (query ``Features``, ``GroundTruth``) of validation queries: the share temperature is
                fitted to the teacher's shares on them (default temperature without).
            keep_features: keep the backbone features (saved as float16), so untuned baselines can be served and
                a ranker retrained with an MLP pass only.
            item_embeddings: the ranker's embeddings (N, embedding_dim) of ``item_features``, if already computed.
        """
        if ranker.spec is not None and item_features.spec != ranker.spec:
            raise IncompatibleArtifactError(
                f"the ranker was trained on {ranker.spec!r} features, the item features are {item_features.spec!r}; "
                f"embed the training set with `fastgda embed --spec {ranker.spec}`"
            )
        if item_features.source.get("content_hash") not in (None, dataset.content_hash):
            raise IncompatibleArtifactError(
                "the item features were computed on another dataset than the one given; embed this dataset"
            )
        if item_embeddings is None:
            item_embeddings = ranker.embed_numpy(item_features.values)
        elif item_embeddings.shape != (len(item_features), ranker.embedding_dim):
            raise IncompatibleArtifactError(
                f"item_embeddings {item_embeddings.shape} do not match {len(item_features)} items x "
                f"{ranker.embedding_dim} ranker outputs"
            )
        index = VectorIndex(ranker.embedding_dim, backend, **index_options)
        index.add(item_features.ids, item_embeddings)
        temperature = DEFAULT_SHARE_TEMPERATURE
        if validation is not None:
            queries, truth = validation
            query_embeddings = ranker.embed_numpy(queries.select(truth.query_ids).values)
            predicted = np.einsum("qd,qkd->qk", query_embeddings, item_embeddings[truth.ids])
            temperature = fit_share_temperature(predicted, truth.scores)
        items = {
            int(i): {
                "id": int(i),
                "captions": list(dataset.captions(int(i))),
                "file": _item_file(dataset, i),
            }
            for i in item_features.ids
        }
        config = {
            "spec": item_features.spec,
            "data_root": str(Path(dataset.root).resolve()),
            "content_hash": dataset.content_hash,
            "share_temperature": temperature,
            "backend": backend,
        }
        return cls(ranker, index, items, config, item_features if keep_features else None)

    def save(self, folder: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
        """Write the attributor folder atomically; ``None`` updates the folder it was loaded from in place.

        In place, only what items can change is rewritten (the index, ``items.jsonl``, the manifest), each file
        atomically: a takedown does not copy the ranker and the stored features.
        """
        if folder is None or (
            self.root is not None and Path(folder).resolve() == self.root.resolve()
        ):
            if self.root is None:
                raise NotFittedError(
                    "this attributor was built in memory; pass the folder to save it to"
                )
            self.index.save(self.root / "index", overwrite=True)
            self._write_items_and_manifest(self.root, atomic=True)
            return self.root
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            self.ranker.save(tmp / "ranker")
            self.index.save(tmp / "index")
            features = self.item_features
            if features is None and self.has_features:
                features = Features.load(self.root / "features")
            if features is not None:
                features.save(tmp / "features", dtype="float16")
            self._write_items_and_manifest(tmp, atomic=False)
        self.root = Path(folder)
        return self.root

    def _write_items_and_manifest(self, folder: Path, atomic: bool) -> None:
        live = set(self.index.ids.tolist()) - self.index.removed
        lines = [json.dumps(rec) for item_id, rec in sorted(self.items.items()) if item_id in live]
        text = "\n".join(lines) + "\n"
        if atomic:
            write_text_atomic(folder / "items.jsonl", text)
        else:
            (folder / "items.jsonl").write_text(text, encoding="utf-8")
        write_manifest(
            folder,
            ATTRIBUTOR_KIND,
            ATTRIBUTOR_FORMAT_VERSION,
            config={**self.config, "share_temperature": self.temperature},
            shapes={"items": [len(live)]},
        )

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        device: str = "cpu",
        dtype: str = "float32",
        runtime: str = "torch",
    ) -> Attributor:
        """Load an attributor folder; its query encoders will run on ``device`` in ``dtype``
        (``fastgda.devices``) on ``runtime``: torch, onnx or auto (``fastgda.encoders.runtime``)."""
        folder = Path(folder)
        manifest = read_manifest(folder, ATTRIBUTOR_KIND, ATTRIBUTOR_FORMAT_VERSION)
        ranker = load_scorer(folder / "ranker")
        index = VectorIndex.load(folder / "index")
        lines = (folder / "items.jsonl").read_text(encoding="utf-8").splitlines()
        items = {(rec := json.loads(line))["id"]: rec for line in lines if line.strip()}
        attributor = cls(ranker, index, items, manifest["config"], root=folder)
        attributor._compute = (device, dtype, runtime)
        return attributor

    # -- changing the training set ----------------------------------------------------------------------
    def add_items(
        self, ids, images, captions: list[list[str]], files: list[str] | None = None
    ) -> None:
        """Index new training images without retraining: embed (image, first caption) with the ranker.

        Args:
            ids: new int ids (n,); images: uint8 (n, H, W, 3) or paths; captions: per item, at least one.
        """
        arrays = [load_query_image(im) for im in images]
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
        """Take training items out for good (takedowns; safe while other threads attribute); returns how many were
        indexed. The untuned baselines drop them on their next use (their cache is keyed by the removed set)."""
        return self.index.remove(ids)

    def apply_takedowns(self) -> int:
        """Remove the ids this attributor's folder lists as removed but this object still serves (another process
        ran ``fastgda attributor remove`` on the folder); returns how many were newly taken down."""
        if self.root is None:
            return 0
        on_disk = VectorIndex.read_removed(self.root / "index")
        new = np.setdiff1d(on_disk, self.index.removed_ids)
        if len(new):
            self.remove_items(new)
        return int(len(new))

    # -- querying ----------------------------------------------------------------------------------------
    @property
    def embedder(self) -> FeatureExtractor:
        if self._embedder is None:
            device, dtype, runtime = self._compute
            self._embedder = FeatureExtractor(self.spec, device, dtype, runtime=runtime)
        return self._embedder

    def query_features(self, images, prompts: list[str]) -> np.ndarray:
        """Features (Q, D) of query images (uint8 (Q, H, W, 3), paths, or PIL images) and their prompts."""
        arrays = [load_query_image(im) for im in images]
        if len(arrays) != len(prompts):
            raise FastGDAError(f"{len(arrays)} images for {len(prompts)} prompts")
        return self.embedder.embed_pairs(arrays, list(prompts))

    def attribute(self, images, prompts, k: int = 10) -> Attributions:
        """Top-k training items for generated images and their prompts: one (image, prompt) or lists of them.

        Args:
            images: an image (path, PIL image or uint8 (H, W, 3)) or a list of them (Q).
            prompts: the prompt, or a list of Q prompts.

        Returns:
            ``Attributions`` with ids, scores and shares (Q, k); ``result[q]`` lists query q's items.
        """
        if isinstance(prompts, str):
            images, prompts = [images], [prompts]
        return self.attribute_features(self.query_features(images, prompts), k)

    def attribute_features(self, features: np.ndarray, k: int = 10) -> Attributions:
        """Top-k training items for query features (Q, D), most influential first."""
        ids, scores = self.index.search(self.ranker.embed_numpy(np.atleast_2d(features)), k)
        return Attributions(
            ids, scores, softmax_shares(scores, self.temperature).astype(np.float32), self
        )

    def describe(self, item_id: int, score: float, share: float) -> Attribution:
        """One item of an answer, with its captions and image path."""
        return Attribution(
            item_id, score, share, self.items[item_id]["captions"], self.image_path(item_id)
        )

    def thumbnails(self, answer: list[Attribution], missing_size: int = 16) -> list[np.ndarray]:
        """The training images of one answer as uint8 (H, W, 3); a blank tile for an image that is not here."""
        out = []
        for item in answer:
            try:
                out.append(read_image(item.image))
            except (OSError, ValueError, SyntaxError):
                out.append(np.zeros((missing_size, missing_size, 3), np.uint8))
        return out

    @property
    def has_features(self) -> bool:
        return self.item_features is not None or (
            self.root is not None and (self.root / "features" / "manifest.json").exists()
        )

    def baseline_part(self) -> str:
        """The default untuned baseline: the spec's first text part (the strongest one on the embedded world,
        BENCHMARKS.md), else its first part."""
        parts = FeatureSpec.parse(self.spec).names
        text = [name for name in parts if make_encoder(name).modality == "text"]
        return (text or parts)[0]

    def untuned(self, features: np.ndarray, k: int = 10, part: str | None = None) -> Attributions:
        """Top-k by the plain cosine of one part of the frozen features (no ranker): a baseline to compare with.

        Args:
            features: float (Q, D) query features of the attributor's spec.
            part: encoder name within the spec (default ``baseline_part()``).

        Raises:
            FastGDAError: the attributor was built without features or ``part`` is not in the spec.
        """
        part = part or self.baseline_part()
        # One snapshot: a takedown may swap in another array meanwhile.
        removed = self.index.removed_ids
        cached = self._untuned.get(part)
        if cached is not None and cached[2] is not removed:
            # A takedown since: drop the newly removed rows from the cached columns (no reload from disk).
            ids, columns, _ = cached
            keep = ~np.isin(ids, removed)
            cached = self._untuned[part] = (ids[keep], columns[keep], removed)
        if cached is None:
            if not self.has_features:
                raise FastGDAError(
                    "this attributor keeps no item features; rebuild it with `fastgda attributor build` to serve "
                    "untuned baselines"
                )
            stored = self.item_features or Features.load(self.root / "features")
            try:
                columns = stored.part(part)
            except KeyError as exc:
                raise FastGDAError(
                    f"{part!r} is not a part of {self.spec!r}; choose one of {FeatureSpec.parse(self.spec).names}"
                ) from exc
            live = ~np.isin(stored.ids, removed)
            cached = self._untuned[part] = (stored.ids[live], unit_rows(columns[live]), removed)
        ids, columns, _ = cached
        offset = next(p["offset"] for p in self.embedder.parts if p["name"] == part)
        queries = unit_rows(np.atleast_2d(features)[:, offset : offset + columns.shape[1]])
        positions, scores = exact_top_k(queries, columns, k)
        shares = softmax_shares(scores, self.temperature).astype(np.float32)
        return Attributions(ids[positions], scores, shares, self)

    def image_path(self, item_id: int) -> str:
        """Absolute path of a training item's image ("" when the item was added without a file)."""
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


def load_query_image(image) -> np.ndarray:
    """uint8 (H, W, 3) from a path, a PIL image or an array, of any size and mode (``fastgda.images.to_rgb``);
    an unreadable file is a ``FastGDAError``."""
    if isinstance(image, str | os.PathLike):
        try:
            return read_image(image)
        except (OSError, ValueError, SyntaxError) as exc:
            raise FastGDAError(f"cannot read query image {image}: {exc}") from exc
    if isinstance(image, Image.Image):
        return to_rgb(image)
    try:
        return array_to_rgb(image)
    except ValueError as exc:
        raise FastGDAError(f"cannot read the query image: {exc}") from exc
