"""One contract for every artifact kind fastgda writes (as diffusers' tester mixins apply one to every model):
it loads back; a missing manifest, another kind, a future format version and a truncated data file are each
refused with an ``IncompatibleArtifactError`` that names what was expected, never a raw numpy, safetensors or
JSON exception from deep inside a load.

Each kind is a real artifact made by the code that makes it (the shared fixtures' tiny model, teacher run,
features, ranker and attributor; the shipped probe), copied before it is tampered with. Not here: the encoding
cache (a cache found by its key: one that fails its checks is refused today, and belongs with issue 33's cheap
provenance), and the app's reference pack, OpenMoji world and counterfactual measurements, each tested with its
own folder format.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastgda.errors import IncompatibleArtifactError


@dataclass
class Kind:
    folder: Path  # a finished artifact of this kind
    load: object  # folder -> the loaded object (reading every array the kind's load reads)


def _before_losses_loader(folder: Path):
    """The teacher's before-loss store: its manifest, then every chunk it holds (read and verified)."""
    from fastgda.unlearning import BeforeLossStore, ScoringConfig

    manifest = json.loads((folder / "manifest.json").read_text())
    config = ScoringConfig(
        **{**manifest["config"], "timesteps": tuple(manifest["config"]["timesteps"])}
    )
    size = manifest["shapes"]["num_items"][0]
    return lambda path: BeforeLossStore.open(path, config, manifest["key"], size)


@pytest.fixture(scope="module")
def kinds(teacher_inputs, fast_path, served, tmp_path_factory) -> dict[str, Kind]:
    from fastgda.app import pack
    from fastgda.app.world.probe import AttributeProbe
    from fastgda.attributor import Attributor
    from fastgda.diffusion import TextToImageModel
    from fastgda.diffusion.queries import QuerySet
    from fastgda.features import Features
    from fastgda.ground_truth import GroundTruth
    from fastgda.index import VectorIndex
    from fastgda.influence import build_gradient_features, recipe
    from fastgda.influence.store import GradientFeatures
    from fastgda.ranker import Ranker
    from fastgda.ranker.untuned import UntunedScorer
    from fastgda.unlearning import Fisher

    root, _ = fast_path
    made = tmp_path_factory.mktemp("kinds")
    items = Features.load(root / "items")
    UntunedScorer(items.spec, items.parts, items.parts[-1]["name"]).save(made / "untuned")
    from dataclasses import replace

    build_gradient_features(
        teacher_inputs["model_dir"], teacher_inputs["data_dir"], made / "gradients",
        replace(recipe("dtrak"), timesteps=(500,), projection_dim=16), 30,
    )  # fmt: skip
    before = root / "train" / "before_losses"
    return {
        "text_to_image_model": Kind(teacher_inputs["model_dir"], TextToImageModel.from_pretrained),
        "query_set": Kind(teacher_inputs["queries_dir"], QuerySet),
        "fisher": Kind(teacher_inputs["fisher_dir"], Fisher.load),
        "ground_truth": Kind(root / "train" / "ground_truth", GroundTruth.load),
        "features": Kind(root / "items", Features.load),
        "ranker": Kind(served["attributor"].parent / "ranker", Ranker.load),
        "untuned_scorer": Kind(made / "untuned", UntunedScorer.load),
        "attributor": Kind(served["attributor"], Attributor.load),
        "index": Kind(served["attributor"] / "index", VectorIndex.load),
        "before_losses": Kind(before, _before_losses_loader(before)),
        "gradient_features": Kind(made / "gradients", GradientFeatures.load),
        "attribute_probe": Kind(pack.probe_dir(), AttributeProbe.load),
    }


KINDS = ["text_to_image_model", "query_set", "fisher", "ground_truth", "features", "ranker",
         "untuned_scorer", "attributor", "index", "before_losses", "gradient_features",
         "attribute_probe"]  # fmt: skip


def _copy(kind: Kind, tmp_path: Path) -> Path:
    folder = tmp_path / kind.folder.name
    shutil.copytree(kind.folder, folder)
    return folder


def _edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, **changes}))


@pytest.mark.parametrize("name", KINDS)
def test_an_artifact_loads_back(kinds, name, tmp_path):
    kind = kinds[name]
    manifest = json.loads((kind.folder / "manifest.json").read_text())
    assert manifest["kind"] == name and isinstance(manifest["format_version"], int)
    assert kind.load(_copy(kind, tmp_path)) is not None


@pytest.mark.parametrize("name", KINDS)
def test_a_folder_without_its_manifest_is_refused(kinds, name, tmp_path):
    folder = _copy(kinds[name], tmp_path)
    (folder / "manifest.json").unlink()
    with pytest.raises(IncompatibleArtifactError):
        kinds[name].load(folder)


@pytest.mark.parametrize("name", KINDS)
def test_an_artifact_of_another_kind_is_refused(kinds, name, tmp_path):
    folder = _copy(kinds[name], tmp_path)
    _edit_manifest(folder, kind="something_else")
    with pytest.raises(IncompatibleArtifactError, match="something_else"):
        kinds[name].load(folder)


@pytest.mark.parametrize("name", KINDS)
def test_a_future_format_version_is_refused(kinds, name, tmp_path):
    folder = _copy(kinds[name], tmp_path)
    _edit_manifest(folder, format_version=10**6)
    with pytest.raises(IncompatibleArtifactError, match="1000000"):
        kinds[name].load(folder)


@pytest.mark.parametrize("name", KINDS)
def test_a_truncated_data_file_is_refused(kinds, name, tmp_path):
    folder = _copy(kinds[name], tmp_path)
    # The largest data file anywhere in it (a before-loss store keeps its data in chunk folders of their own).
    files = [path for path in folder.rglob("*") if path.is_file() and path.name != "manifest.json"]
    if not files:
        pytest.skip(f"a {name} is its manifest alone")
    largest = max(files, key=lambda path: path.stat().st_size)
    data = largest.read_bytes()
    largest.write_bytes(data[: len(data) // 2])
    with pytest.raises(IncompatibleArtifactError):
        kinds[name].load(folder)
