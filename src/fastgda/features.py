"""Features artifacts: frozen-encoder embeddings of training items or queries, written resumably in chunks.

A training item is embedded with its image and its *first* caption, a query with its generated image and its
prompt (a query set's only caption), so the same code embeds both. Layout of a features folder::

    values.npy      float32 or float16 (n, D): the raw concatenation of the spec's parts, in spec order
    ids.npy         int64 (n,): dataset row ids
    manifest.json   kind "features": spec, parts (name, modality, dim, offset), source dataset hash, dtype

While embedding, finished chunks live in ``<out>.partial/`` (one atomic ``.npy`` per chunk); an interrupted run
started again embeds only the missing chunks, and the final folder appears in one rename.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._artifacts import (
    MANIFEST_NAME,
    atomic_dir,
    read_manifest,
    verify_checksums_once,
    write_json_atomic,
    write_manifest,
)
from .encoders import FeatureSpec, make_encoder
from .errors import IncompatibleArtifactError

FEATURES_KIND = "features"
FEATURES_FORMAT_VERSION = 1


@dataclass
class Features:
    """Embeddings of n items. ``values`` (n, D) float32; ``parts`` locate each encoder's columns."""

    values: np.ndarray
    ids: np.ndarray
    spec: str
    parts: list[dict]
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    @property
    def part_dims(self) -> list[int]:
        """Widths of the parts, in column order."""
        return [int(p["dim"]) for p in sorted(self.parts, key=lambda p: p["offset"])]

    def select(self, ids) -> Features:
        """The rows whose ids are ``ids`` (int (q,)), in that order: e.g. a ground truth's ``query_ids``.

        Raises:
            IncompatibleArtifactError: some ids have no row here (features of another query set).
        """
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        order = np.argsort(self.ids, kind="stable")
        positions = order[
            np.searchsorted(self.ids, wanted, sorter=order).clip(0, len(self.ids) - 1)
        ]
        missing = wanted[self.ids[positions] != wanted] if len(self.ids) else wanted
        if len(missing):
            raise IncompatibleArtifactError(
                f"these {self.spec} features hold no rows for ids {missing[:5].tolist()} ({len(missing)} missing, "
                f"{len(self)} rows held); embed the query set the ground truth ranks"
            )
        return Features(self.values[positions], wanted, self.spec, self.parts, dict(self.source))

    def part(self, name: str) -> np.ndarray:
        """The columns of one encoder: (n, dim_part)."""
        for p in self.parts:
            if p["name"] == name:
                return self.values[:, p["offset"] : p["offset"] + p["dim"]]
        raise KeyError(f"features {self.spec!r} have no part {name!r}")

    def save(
        self, folder: str | os.PathLike, dtype: str = "float32", overwrite: bool = False
    ) -> None:
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            np.save(tmp / "values.npy", self.values.astype(dtype))
            np.save(tmp / "ids.npy", self.ids.astype(np.int64))
            write_manifest(
                tmp,
                FEATURES_KIND,
                FEATURES_FORMAT_VERSION,
                config={"spec": self.spec, "parts": self.parts, "dtype": dtype},
                shapes={"values": list(self.values.shape), "ids": list(self.ids.shape)},
                extra={"source": self.source},
            )

    @classmethod
    def load(
        cls, folder: str | os.PathLike, expect_spec: str | None = None, mmap: bool = False
    ) -> Features:
        """Load (checksums verified); with ``expect_spec``, refuse features made by other encoders.

        ``mmap``: leave ``values`` on disk, memory-mapped in its stored dtype (float32 or float16), for readers
        that take rows in blocks (candidate pools); otherwise they are read into RAM as float32."""
        folder = Path(folder)
        manifest = read_manifest(folder, FEATURES_KIND, FEATURES_FORMAT_VERSION)
        verify_checksums_once(folder, manifest)  # N x D: in full once, then a stat
        spec = manifest["config"]["spec"]
        # Imported features (``fastgda.interop``) carry the release's own spec names, not encoder names.
        if (
            expect_spec is not None
            and spec != expect_spec
            and spec != str(FeatureSpec.parse(expect_spec))
        ):
            raise IncompatibleArtifactError(
                f"features at {folder} were made with spec {spec!r}, expected {expect_spec!r}; "
                f"embed again with `fastgda embed --spec {expect_spec}`"
            )
        if mmap:
            values = np.load(folder / "values.npy", mmap_mode="r", allow_pickle=False)
        else:
            values = np.load(folder / "values.npy", allow_pickle=False).astype(np.float32)
        ids = np.load(folder / "ids.npy", allow_pickle=False)
        return cls(values, ids, spec, manifest["config"]["parts"], manifest.get("source", {}))


class FeatureExtractor:
    """The frozen encoders of a spec (e.g. ``"effnet+minilm"``), built once.

    ``extract(dataset)`` embeds a whole dataset in memory (``embed_dataset`` does it resumably into a folder);
    ``embed_pairs(images, texts)`` embeds query images with their prompts.
    """

    def __init__(
        self,
        spec: str | FeatureSpec,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int | None = None,
        concurrent: bool | None = None,
        runtime: str = "torch",
    ):
        """``batch_size``: items per encoder pass (default: each encoder's own on a CPU; on a GPU the most its
        free memory holds). ``concurrent``: run a spec's encoders side by side in threads in ``embed_pairs``
        (default: on a CPU with two or more encoders). A query then costs its slowest encoder, not their sum;
        give torch about one thread per encoder (``torch.set_num_threads``), since threads share the cores.
        ``runtime``: ``torch`` (the reference), ``onnx`` (the encoders' networks under ONNX Runtime on a CPU,
        checked against torch when loaded) or ``auto`` (onnx where it can run); ``self.runtime`` says which."""
        from .devices import resolve_device, resolve_dtype
        from .encoders.runtime import resolve_runtime

        self.spec = spec if isinstance(spec, FeatureSpec) else FeatureSpec.parse(spec)
        self.device, self.dtype = resolve_device(device), resolve_dtype(dtype)
        self.encoders = [make_encoder(name).to(self.device) for name in self.spec.names]
        for encoder in self.encoders:
            if hasattr(encoder, "batch_size"):
                encoder.batch_size = batch_size or self._batch_size_for(encoder)
        self.parts = encoder_layout(self.encoders)
        self.dim = sum(encoder.dim for encoder in self.encoders)
        if concurrent is None:
            concurrent = self.device.type == "cpu" and len(self.encoders) > 1
        self.concurrent = concurrent
        self._pool = None  # made on the first concurrent call
        self.runtime = resolve_runtime(runtime, self.device, self.dtype)
        self._sessions = {}
        if self.runtime == "onnx":
            import torch

            # One intra-op thread per encoder when they run side by side, else torch's count.
            threads = 1 if self.concurrent else torch.get_num_threads()
            self._sessions = {e.name: e.onnx_session(threads) for e in self.encoders}

    def _batch_size_for(self, encoder) -> int:
        """The encoder's own batch size on a CPU; on a GPU the most its free memory holds, probed at 1 and 2."""
        from .devices import (
            autocast,
            batch_size_for_memory,
            free_memory_bytes,
            measure_bytes_per_item,
        )

        free = free_memory_bytes(self.device)
        if free is None:
            return encoder.batch_size
        default = encoder.batch_size
        sample = (
            [np.zeros((224, 224, 3), np.uint8)]
            if encoder.modality == "image"
            else ["a photo of a red circle beside a blue square"]
        )

        def probe(n: int) -> None:
            encoder.batch_size = n
            with autocast(self.device, self.dtype):
                encoder.encode(sample * n)

        per_item = measure_bytes_per_item(probe, self.device)
        return batch_size_for_memory(free, per_item or 1.0, default, cap=1024)

    def extract(self, dataset, batch_size: int = 512) -> Features:
        """``Features`` (N, D) of every row of a dataset or query set: its image and first caption (or prompt)."""
        from .progress import bar as progress_bar

        starts = range(0, len(dataset), batch_size)
        chunks = [
            self.embed(dataset, range(start, min(start + batch_size, len(dataset))))
            for start in progress_bar(starts, desc=f"embedding ({self.spec})")
        ]
        values = np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        _check_finite(values, getattr(dataset, "root", "the dataset"))
        root = getattr(dataset, "root", None)
        source = {"dataset": str(root) if root else None, "content_hash": dataset.content_hash}
        return Features(
            values, np.arange(len(dataset), dtype=np.int64), str(self.spec), self.parts, source
        )

    def embed_pairs(self, images, texts: list[str], concurrent: bool | None = None) -> np.ndarray:
        """Embed aligned images (uint8 (B, H, W, 3)) and texts: float32 (B, D), computed in ``self.dtype``.

        ``concurrent``: the encoders side by side (default: ``self.concurrent``, which the query path uses;
        bulk embedding of datasets runs them one after the other, each with all of torch's threads).
        """
        from .devices import autocast

        concurrent = self.concurrent if concurrent is None else concurrent

        def run(encoder) -> np.ndarray:
            batch = images if encoder.modality == "image" else texts
            session = self._sessions.get(encoder.name)
            if session is not None:
                return encoder.encode_onnx(batch, session)
            with autocast(self.device, self.dtype):  # per thread: entered where the encoder runs
                return encoder.encode(batch)

        if concurrent and len(self.encoders) > 1:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(len(self.encoders), thread_name_prefix="encoder")
            columns = [
                future.result() for future in [self._pool.submit(run, e) for e in self.encoders]
            ]
        else:
            columns = [run(encoder) for encoder in self.encoders]
        return np.concatenate(columns, axis=1).astype(np.float32)

    def embed(self, dataset, rows) -> np.ndarray:
        rows = list(rows)
        images = dataset.read_images(rows)  # any sizes: each encoder squares them as it was trained
        texts = [dataset.captions(i)[0] for i in rows]
        return self.embed_pairs(images, texts, concurrent=False)


def encoder_layout(encoders) -> list[dict]:
    """Each encoder's config with the column ``offset`` where its features start."""
    offset, parts = 0, []
    for encoder in encoders:
        parts.append({**encoder.config(), "offset": offset})
        offset += encoder.dim
    return parts


def spec_layout(spec: str) -> list[dict]:
    """The column layout of a spec (builds its encoders; they are cached, so this is cheap after embedding)."""
    return encoder_layout([make_encoder(name) for name in FeatureSpec.parse(spec).names])


@dataclass(frozen=True)
class _ChunkTask:
    """Picklable worker factory for executors: embeds one chunk of rows and writes it atomically."""

    dataset_dir: str
    spec: str
    partial_dir: str
    chunk_size: int
    device: str = "cpu"  # resolved in each worker: a Ray worker uses the GPU it was given
    dtype: str = "float32"
    batch_size: int | None = None

    def __call__(self):
        from .data import open_dataset

        dataset = open_dataset(self.dataset_dir)
        embedder = FeatureExtractor(self.spec, self.device, self.dtype, self.batch_size)

        def run(chunk: int) -> None:
            rows = range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, len(dataset)))
            path = Path(self.partial_dir) / f"chunk_{chunk:06d}.npy"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as handle:
                np.save(handle, embedder.embed(dataset, rows))
            os.replace(tmp, path)

        return run


def load_or_embed(
    source: str | os.PathLike,
    spec: str,
    out_dir: str | os.PathLike,
    device: str = "cpu",
    dtype: str = "float32",
    mmap: bool = False,
) -> Features:
    """The features at ``out_dir`` if a finished artifact of ``spec`` is there, else ``embed_dataset``
    (``mmap``: as ``Features.load``)."""
    if not (Path(out_dir) / MANIFEST_NAME).exists():
        return embed_dataset(source, spec, out_dir, device=device, dtype=dtype, mmap=mmap)
    return Features.load(out_dir, expect_spec=spec, mmap=mmap)


def embed_dataset(
    dataset_dir: str | os.PathLike,
    spec: str,
    out_dir: str | os.PathLike,
    chunk_size: int = 512,
    executor=None,
    store_dtype: str = "float32",
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int | None = None,
    mmap: bool = False,
) -> Features:
    """Embed every row of a dataset (training set or query set) into a features artifact at ``out_dir``, the
    finished chunks streamed into it one at a time; returns it as ``Features.load`` (``mmap``) reads it.

    ``store_dtype``: float32 or float16 on disk. ``device`` / ``dtype``: where the encoders run and the precision
    they compute in (``fastgda.devices``); features come back float32 (memory-mapped as stored with ``mmap``).
    ``batch_size``: items per encoder pass (``FeatureExtractor``).

    Resumable: chunks finished by an earlier (interrupted) call with the same settings are reused.
    """
    from .data import open_dataset
    from .executors import LocalExecutor

    spec = str(FeatureSpec.parse(spec))
    dataset = open_dataset(dataset_dir)
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    settings = {"spec": spec, "chunk_size": chunk_size, "content_hash": dataset.content_hash}
    source = {"dataset": str(dataset_dir), "content_hash": dataset.content_hash}
    if (
        dtype != "float32"
    ):  # reduced precision changes the features: chunks made otherwise are not reused
        settings["compute_dtype"] = source["compute_dtype"] = dtype
    settings_file = partial / "settings.json"
    if partial.exists():
        saved = (
            json.loads(settings_file.read_text(encoding="utf-8"))
            if settings_file.exists()
            else None
        )
        if saved != settings:
            shutil.rmtree(partial)  # left by a run with other settings: nothing reusable
    partial.mkdir(parents=True, exist_ok=True)
    write_json_atomic(settings_file, settings)
    num_chunks = -(-len(dataset) // chunk_size)
    pending = [c for c in range(num_chunks) if not (partial / f"chunk_{c:06d}.npy").exists()]
    task = _ChunkTask(
        str(dataset_dir), spec, str(partial), chunk_size, str(device), dtype, batch_size
    )
    executor = executor or LocalExecutor()
    executor.map(task, pending, desc=f"embedding ({spec})")
    chunks = [partial / f"chunk_{c:06d}.npy" for c in range(num_chunks)]
    _write_streamed(chunks, out_dir, spec, store_dtype, source, dataset_dir)
    shutil.rmtree(partial)
    return Features.load(out_dir, expect_spec=spec, mmap=mmap)


def _write_streamed(chunks: list[Path], out_dir: Path, spec: str, store_dtype: str, source: dict,
                    where) -> None:  # fmt: skip
    """The features folder from its chunk files, one chunk in RAM at a time (N x D is never held whole)."""
    first = np.load(chunks[0], mmap_mode="r", allow_pickle=False)
    count = sum(int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0]) for path in chunks)
    shape = (count, int(first.shape[1]))
    with atomic_dir(out_dir, overwrite=True) as tmp:
        values = np.lib.format.open_memmap(
            tmp / "values.npy", mode="w+", dtype=store_dtype, shape=shape
        )
        row = 0
        for path in chunks:
            chunk = np.load(path, allow_pickle=False)
            _check_finite(chunk, where, offset=row)
            values[row : row + len(chunk)] = chunk
            row += len(chunk)
        values.flush()
        del values
        np.save(tmp / "ids.npy", np.arange(count, dtype=np.int64))
        write_manifest(
            tmp,
            FEATURES_KIND,
            FEATURES_FORMAT_VERSION,
            config={"spec": spec, "parts": spec_layout(spec), "dtype": store_dtype},
            shapes={"values": list(shape), "ids": [count]},
            extra={"source": source},
        )


def _check_finite(values: np.ndarray, where, offset: int = 0) -> None:
    """Refuse NaN or infinite rows of ``values`` (rows ``offset``... of ``where``)."""
    if not np.isfinite(values).all():
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1)) + offset
        raise IncompatibleArtifactError(
            f"encoders returned NaN or infinite features for rows {bad[:5].tolist()} of {where}; "
            "check those images"
        )
