"""Per-item gradient features, computed once per model and kept on disk, memory-mapped.

``GradientFeatures`` is the artifact: ``rows.npy`` (N, D) float16 unit rows and ``norms.npy`` (N,) float32 row
norms, so float16 keeps three significant digits of every gradient whatever its scale (a raw float16 gradient
would fall into subnormals). D is the selected layers' weight count, or the projection dimension.

``build_gradient_features`` computes them chunk by chunk; each finished chunk is a file under
``<folder>.parts/``, so an interrupted build redoes only the unfinished chunks, and the chunks map onto any
executor. The projection is TRAK's random projection (``traker``'s ``BasicProjector`` on a CPU, its
``CudaProjector`` when ``fast_jl`` is installed on a GPU): the same seed gives the same matrix in every process.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._artifacts import MANIFEST_NAME, atomic_dir, read_manifest, verify_checksums, write_manifest
from .._optional import require
from ..errors import IncompatibleArtifactError
from .gradients import GradientConfig, item_gradients

GRADIENT_FEATURES_KIND = "gradient_features"
GRADIENT_FEATURES_FORMAT_VERSION = 1
# traker regenerates its matrix block by block on every call: blocks this wide keep memory at
# P x 512 x 4 bytes (400 MB for the world's K/V, 196,608 weights) while the matmuls stay efficient.
_PROJECTION_BLOCK = 512


class Projector:
    """x (B, P) -> x R (B, Z) with a seeded Gaussian R (P, Z) (TRAK's projection; D-TRAK's 'normal' type)."""

    def __init__(self, grad_dim: int, dim: int, seed: int, device: str | torch.device = "cpu"):
        projectors = require("trak.projectors", "influence")
        self.grad_dim, self.dim, self.seed = grad_dim, dim, seed
        device = torch.device(device)
        kind = projectors.ProjectionType.normal
        self._projector = None
        if device.type == "cuda":
            try:  # the fast kernel needs the fast_jl extension; without it the block projector serves
                self._projector = projectors.CudaProjector(
                    grad_dim, dim, seed, kind, device, max_batch_size=32
                )
            except Exception:  # noqa: BLE001 - fast_jl missing or unsupported: fall back, same matrix kind
                self._projector = None
        if self._projector is None:
            self._projector = projectors.BasicProjector(
                grad_dim, dim, seed, kind, device, block_size=min(dim, _PROJECTION_BLOCK)
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (B, P) -> float32 (B, Z), scaled by 1/sqrt(Z) so inner products are preserved on average."""
        projected = self._projector.project(x.float(), model_id=0)
        return projected.float() / self.dim**0.5


@dataclass
class GradientFeatures:
    """Item gradients: ``rows`` float16 (N, D) unit rows (memory-mapped) and ``norms`` float32 (N,)."""

    rows: np.ndarray
    norms: np.ndarray
    config: GradientConfig
    layers: dict[str, list[int]]  # layer name -> weight shape, in the flattening order
    source: dict = field(default_factory=dict)  # model digest, data content hash

    def __len__(self) -> int:
        return len(self.norms)

    @property
    def dim(self) -> int:
        return int(self.rows.shape[1])

    def matrix(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows start..stop as float32 gradients (unit rows times their norms): (n, D)."""
        stop = len(self) if stop is None else stop
        rows = torch.from_numpy(np.asarray(self.rows[start:stop], dtype=np.float32))
        return rows * torch.from_numpy(self.norms[start:stop])[:, None]

    def dot(self, vectors: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Every item's inner product with each vector: (Q, D) -> float64 (Q, N), read chunk by chunk."""
        vectors = vectors.float()
        out = [self.matrix(s, s + chunk) @ vectors.T for s in range(0, len(self), chunk)]
        return torch.cat(out).T.double()

    @classmethod
    def load(cls, folder: str | os.PathLike, verify: bool = True) -> GradientFeatures:
        """Open a folder from ``build_gradient_features`` (rows memory-mapped, checksums checked)."""
        folder = Path(folder)
        manifest = read_manifest(folder, GRADIENT_FEATURES_KIND, GRADIENT_FEATURES_FORMAT_VERSION)
        if verify:
            verify_checksums(folder, manifest)
        config = manifest["config"]
        config = GradientConfig(**{**config, "timesteps": tuple(config["timesteps"])})
        rows = np.load(folder / "rows.npy", mmap_mode="r", allow_pickle=False)
        norms = np.load(folder / "norms.npy", allow_pickle=False)
        return cls(rows, norms, config, manifest["layers"], manifest["source"])

    def check_model(self, model, data_content_hash: str | None = None) -> None:
        """Refuse features of another model (weights digest) or another training set."""
        from ..unlearning.layers import weights_digest

        found = weights_digest(model.unet)
        if self.source.get("model_sha256") != found:
            raise IncompatibleArtifactError(
                f"gradient features were computed on model weights {self.source.get('model_sha256')}, this "
                f"model's are {found}; rebuild them for this model with `fastgda influence features`"
            )
        expected = self.source.get("data_content_hash")
        if data_content_hash is not None and expected != data_content_hash:
            raise IncompatibleArtifactError(
                f"gradient features were computed on data {expected}, this training set is {data_content_hash}; "
                "rebuild them for this training set"
            )


@dataclass(frozen=True)
class _ChunkTask:
    """Picklable worker factory for executors: computes and writes one chunk of item gradient features."""

    model_dir: str
    data_dir: str
    parts_dir: str
    config: GradientConfig
    chunk_size: int
    device: str = "cpu"
    dtype: str = "float32"
    encoded_cache: str | None = None

    def __call__(self):
        from ..data import open_dataset
        from ..diffusion import TextToImageModel
        from ..diffusion.training import prepare_training_data
        from ..unlearning.layers import select_linear_layers

        model = TextToImageModel.from_pretrained(
            self.model_dir, device=self.device, dtype=self.dtype
        )
        dataset = open_dataset(self.data_dir)
        data = prepare_training_data(model, dataset, cache=self.encoded_cache)
        layers = select_linear_layers(model.unet, self.config.layers)
        size = sum(layer.weight.numel() for layer in layers.values())
        projector = []  # made on first use, once per worker

        def run(chunk: int) -> int:
            start = chunk * self.chunk_size
            ids = np.arange(start, min(start + self.chunk_size, len(dataset)))
            grads = item_gradients(model, layers, data, ids, self.config)
            if self.config.projection_dim is not None:
                if not projector:
                    projector.append(
                        Projector(
                            size,
                            self.config.projection_dim,
                            self.config.projection_seed,
                            model.device,
                        )
                    )
                grads = projector[0](grads.to(model.device)).cpu()
            write_chunk(Path(self.parts_dir), chunk, grads)
            return chunk

        return run


def write_chunk(parts_dir: Path, chunk: int, grads: torch.Tensor) -> None:
    """Store one chunk's rows (float16 unit rows + float32 norms) atomically."""
    norms = grads.double().norm(dim=1).float()
    units = (grads / norms.clamp_min(torch.finfo(torch.float32).tiny)[:, None]).half().numpy()
    parts_dir.mkdir(parents=True, exist_ok=True)
    path = parts_dir / f"chunk_{chunk:06d}.npz"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, rows=units, norms=norms.numpy())
    os.replace(tmp, path)


def build_gradient_features(
    model_dir,
    data_dir,
    out_dir,
    config: GradientConfig,
    chunk_size: int = 500,
    executor=None,
    device: str = "cpu",
    dtype: str = "float32",
    encoded_cache=None,
) -> GradientFeatures:
    """Compute (or finish) the gradient features of every training item and write ``out_dir`` atomically.

    Chunks already under ``<out_dir>.parts`` (same settings, recorded in its ``build.json``) are kept.
    """
    from ..data import open_dataset
    from ..diffusion import TextToImageModel
    from ..executors import LocalExecutor
    from ..unlearning.layers import select_linear_layers, weights_digest

    out_dir = Path(out_dir)
    if (out_dir / MANIFEST_NAME).is_file():
        return GradientFeatures.load(out_dir)
    model = TextToImageModel.from_pretrained(model_dir, device="cpu")
    dataset = open_dataset(data_dir)
    layers = select_linear_layers(model.unet, config.layers)
    source = {"model_sha256": weights_digest(model.unet), "data_content_hash": dataset.content_hash}
    if dtype != "float32":
        source["compute_dtype"] = dtype
    parts = out_dir.with_name(out_dir.name + ".parts")
    settings = {"config": asdict(config), "chunk_size": chunk_size, "source": source}
    settings = json.loads(json.dumps(settings))
    build = parts / "build.json"
    if build.is_file() and json.loads(build.read_text(encoding="utf-8")) != settings:
        raise IncompatibleArtifactError(
            f"{parts} holds chunks computed with other settings ({build}); delete it, or rerun with those settings"
        )
    parts.mkdir(parents=True, exist_ok=True)
    build.write_text(json.dumps(settings, indent=1), encoding="utf-8")
    num_chunks = -(-len(dataset) // chunk_size)
    pending = [c for c in range(num_chunks) if not (parts / f"chunk_{c:06d}.npz").is_file()]
    task = _ChunkTask(
        str(model_dir), str(data_dir), str(parts), config, chunk_size, device, dtype,
        None if encoded_cache is None else str(encoded_cache),
    )  # fmt: skip
    executor = executor or LocalExecutor()
    executor.map(task, pending, desc="gradient feature chunks")

    dim = config.projection_dim or sum(layer.weight.numel() for layer in layers.values())
    with atomic_dir(out_dir) as tmp:
        rows = np.lib.format.open_memmap(tmp / "rows.npy", "w+", np.float16, (len(dataset), dim))
        norms = np.empty(len(dataset), dtype=np.float32)
        for c in range(num_chunks):
            with np.load(parts / f"chunk_{c:06d}.npz", allow_pickle=False) as chunk:
                start = c * chunk_size
                rows[start : start + len(chunk["norms"])] = chunk["rows"]
                norms[start : start + len(chunk["norms"])] = chunk["norms"]
        rows.flush()
        del rows
        np.save(tmp / "norms.npy", norms)
        write_manifest(
            tmp,
            GRADIENT_FEATURES_KIND,
            GRADIENT_FEATURES_FORMAT_VERSION,
            config=asdict(config),
            shapes={"rows": [len(dataset), dim], "norms": [len(dataset)]},
            extra={
                "layers": {name: list(layer.weight.shape) for name, layer in layers.items()},
                "source": source,
                "projection": None
                if config.projection_dim is None
                else {"library": "traker", "type": "normal", "scale": "1/sqrt(dim)"},
            },
        )
    shutil.rmtree(parts, ignore_errors=True)
    return GradientFeatures.load(out_dir)
