"""Query sets: generated images with everything the teacher and the ranker need to attribute them.

Layout of a query-set folder::

    images/q000000.png       the generated images (uint8 RGB)
    captions.jsonl           one line per query: id, file, captions=[prompt], prompt, seed, + caller's fields
    tensors.safetensors      x0 (Q, C, h, w) final clean samples; text_states (Q, S, D); text_mask (Q, S)
    manifest.json            kind "query_set", sampler settings, the model's manifest digest

Because it carries ``captions.jsonl``, a query set opens as an ``ImageCaptionFolder`` too.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from .._artifacts import atomic_dir, read_manifest, verify_checksums, write_manifest
from ..config import AT_LEAST_ONE, NON_NEGATIVE, check_settings, setting
from ..data import CAPTIONS_FILE, ImageCaptionFolder
from ..errors import FastGDAError
from ..progress import bar as progress_bar
from .model import TextToImageModel, model_digest

QUERY_SET_KIND = "query_set"
QUERY_SET_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SamplerConfig:
    """How queries are generated; recorded in the query set's manifest."""

    num_steps: int = setting(
        50, "DDIM steps, eta = 0 (deterministic for a seed)", bounds=AT_LEAST_ONE
    )
    guidance_scale: float = setting(
        3.0,
        "classifier-free guidance scale; chosen on held-out prompts (BENCHMARKS.md)",
        bounds=NON_NEGATIVE,
    )
    batch_size: int = setting(64, "prompts sampled at once", bounds=AT_LEAST_ONE)

    def __post_init__(self):
        check_settings(self)


def read_prompts(path: str | os.PathLike) -> list[dict]:
    """Read prompts from a text file (one per line) or JSONL (objects with ``"prompt"`` and optional fields).

    Raises:
        FastGDAError: the file is missing, empty, or has an empty prompt.
    """
    path = Path(path)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError as exc:
        raise FastGDAError(f"prompts file {path} does not exist") from exc
    records = []
    for n, line in enumerate(lines, start=1):
        record = json.loads(line) if line.lstrip().startswith("{") else {"prompt": line.strip()}
        if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise FastGDAError(
                f"{path}:{n}: empty prompt; every line needs text (or a JSON object with 'prompt')"
            )
        records.append(record)
    if not records:
        raise FastGDAError(f"prompts file {path} has no prompts")
    return records


def write_query_set(
    model: TextToImageModel,
    prompts: list[dict] | list[str],
    out_dir: str | os.PathLike,
    seed: int = 0,
    sampler: SamplerConfig = SamplerConfig(),
    model_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> QuerySet:
    """Generate one image per prompt (query ``i`` uses seed ``seed + i`` unless its record names one).

    Returns:
        The written query set, loaded (a ``QuerySet``, which is an ``ImageCaptionFolder``).
    """
    records = [{"prompt": p} if isinstance(p, str) else dict(p) for p in prompts]
    for i, record in enumerate(records):
        record.setdefault("seed", seed + i)
    x0_parts, state_parts, mask_parts = [], [], []
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        lines = []
        bar = progress_bar(total=len(records), desc="sampling queries")
        for start in range(0, len(records), sampler.batch_size):
            batch = records[start : start + sampler.batch_size]
            x0, states, mask = model.sample(
                [r["prompt"] for r in batch],
                [r["seed"] for r in batch],
                num_steps=sampler.num_steps,
                guidance_scale=sampler.guidance_scale,
                return_states=True,
            )
            images = model.decode(x0)
            for offset, (record, image) in enumerate(zip(batch, images, strict=True)):
                qid = start + offset
                name = f"images/q{qid:06d}.png"
                Image.fromarray(image).save(tmp / name)
                lines.append(
                    json.dumps({"id": qid, "file": name, "captions": [record["prompt"]], **record})
                )
            x0_parts.append(x0.cpu())
            state_parts.append(states.cpu())
            if mask is not None:
                mask_parts.append(mask.cpu())
            bar.update(len(batch))
        bar.close()
        (tmp / CAPTIONS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        tensors = {
            "x0": torch.cat(x0_parts).contiguous(),
            "text_states": torch.cat(state_parts).contiguous(),
        }
        if mask_parts:
            tensors["text_mask"] = torch.cat(mask_parts).contiguous()
        save_file(tensors, tmp / "tensors.safetensors")
        digest = model_digest(model_dir) if model_dir else None
        write_manifest(
            tmp,
            QUERY_SET_KIND,
            QUERY_SET_FORMAT_VERSION,
            config={
                "sampler": asdict(sampler),
                "seed": seed,
                "model_dir": str(model_dir) if model_dir else None,
                **_precision_of(model),
            },
            shapes={k: list(v.shape) for k, v in tensors.items()},
            extra={"model_manifest_sha256": digest, "num_queries": len(records)},
        )
    return QuerySet(out_dir)


def load_query_tensors(query_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a query set's x0 (Q, C, h, w), text_states (Q, S, D) and, if present, text_mask (Q, S)."""
    manifest = read_manifest(query_dir, QUERY_SET_KIND, QUERY_SET_FORMAT_VERSION)
    verify_checksums(query_dir, manifest, names=["tensors.safetensors"])
    return load_file(Path(query_dir) / "tensors.safetensors")


class QuerySet(ImageCaptionFolder):
    """A loaded query set: the folder's images and prompts (an ``ImageCaptionFolder``) and its tensors.

    Attributes:
        tensors: x0 float32 (Q, C, h, w), text_states (Q, S, D), and text_mask (Q, S) for models that mask.
        manifest: the query set's manifest (sampler, the digest of the model that made it).
    """

    def __init__(self, root: str | os.PathLike):
        self.manifest = read_manifest(root, QUERY_SET_KIND, QUERY_SET_FORMAT_VERSION)
        # Query sets are small (thousands of queries at most): every file is checked, so a copy cut short
        # fails here with what to do, not in safetensors or PIL.
        verify_checksums(root, self.manifest)
        super().__init__(root)
        self.tensors = load_file(Path(root) / "tensors.safetensors")
        bad = [
            name
            for name, value in self.tensors.items()
            if value.is_floating_point() and not torch.isfinite(value).all()
        ]
        if bad:
            raise FastGDAError(
                f"query set {root} has NaN or infinite values in {bad}; sample the queries again"
            )

    # Generate one image per prompt with a model into a folder and load it (``write_query_set``).
    generate = staticmethod(write_query_set)

    def query(self, q: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Query ``q``'s x0 (C, h, w), prompt states (S, D) and mask (S,) or None."""
        mask = self.tensors.get("text_mask")
        return (
            self.tensors["x0"][q],
            self.tensors["text_states"][q],
            None if mask is None else mask[q],
        )


def _precision_of(model) -> dict:
    """``{"compute_dtype": ...}`` when the model samples below float32 (its images differ), else nothing."""
    dtype = str(getattr(model, "compute_dtype", "float32")).removeprefix("torch.")
    return {} if dtype == "float32" else {"compute_dtype": dtype}


def open_query_set(queries_dir, model_dir) -> tuple[QuerySet, str]:
    """The query set and the model's manifest digest, refusing a query set another model generated.

    Raises:
        IncompatibleArtifactError: the query set records another model's digest.
    """
    from ..errors import IncompatibleArtifactError
    from .model import model_digest

    digest = model_digest(model_dir)
    queries = QuerySet(queries_dir)
    if queries.manifest.get("model_manifest_sha256") not in (None, digest):
        raise IncompatibleArtifactError(
            f"query set {queries_dir} was generated by another model than {model_dir} (model manifest digests "
            "differ); sample the queries with this model, or pass the model that made them"
        )
    return queries, digest
