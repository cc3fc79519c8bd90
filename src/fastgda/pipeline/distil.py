"""The steps every pipeline shares once it has teacher rankings: features, the distilled ranker, the attributor,
and the evaluation on the test queries. The build and the demo call the same functions; each reuses what an
earlier run left in its folder."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .._artifacts import write_json_atomic


def embed_features(
    data_root: Path,
    query_dirs: dict[str, Path],
    spec: str,
    out: Path,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    """``{"items": Features of the training set, split: Features of its queries}``, under ``out/features``; the
    training set's values stay on disk, memory-mapped (the ranker, the attributor and the evaluation read the
    rows they need)."""
    from ..features import load_or_embed

    def embed(source, name: str, mmap: bool = False):
        return load_or_embed(
            source, spec, out / "features" / name, device=device, dtype=dtype, mmap=mmap
        )

    features = {"items": embed(data_root, "items", mmap=True)}
    for split, folder in query_dirs.items():
        features[split] = embed(folder, f"q-{split}")
    return features


def distil_ranker(
    features: dict,
    truth: dict,
    folder: Path,
    config,
    provenance: dict,
    dependents: tuple[Path, ...] = (),
    device: str = "cpu",
):
    """The ranker distilled from ``truth["train"]`` (early stopping on ``truth["val"]``) with ``config`` (a
    ``RankerTrainConfig``), reused when ``folder`` holds one of the same ``provenance``; a stale one is removed
    with its ``dependents`` (what was built on it)."""
    from ..ranker import Ranker, reusable_ranker

    ranker = reusable_ranker(folder, provenance, dependents=dependents)
    if ranker is None:
        ranker = Ranker.distil(
            features["train"], features["items"], truth["train"], config,
            validation=(features["val"], truth["val"]), device=device,
        )  # fmt: skip
        ranker.save(folder, extra={"training": asdict(config), "provenance": provenance})
    return ranker


def build_attributor(scorer, train_data, features: dict, truth: dict, folder: Path):
    """The attributor over the training set, its share temperature fitted on the validation queries; reused if
    ``folder`` holds one."""
    from ..attributor import Attributor

    if (folder / "manifest.json").is_file():
        return Attributor.load(folder)
    attributor = Attributor.build(
        scorer, train_data, features["items"], validation=(features["val"], truth["val"])
    )
    attributor.save(folder)
    return attributor


def evaluate_test(methods: dict, features: dict, truth: dict, out: Path | None = None, **options):
    """mAP(L) of ``methods`` and the untuned baselines against the test rankings (``options``: those of
    ``fastgda.evaluation.evaluate``), saved as ``out/evaluation.json`` when ``out`` is given."""
    from ..evaluation import evaluate

    evaluation = evaluate(methods, features["test"], features["items"], truth["test"], **options)
    if out is not None:
        write_json_atomic(out / "evaluation.json", evaluation.to_json())
    return evaluation
