"""A warm demo or benchmark reuses a ranker only if it was distilled from the same reference and settings."""

from fastgda.ranker import Ranker, RankerShape, reusable_ranker


def test_a_ranker_from_another_reference_is_removed_with_its_attributor(tmp_path):
    ranker_dir, attributor_dir = tmp_path / "ranker", tmp_path / "attributor"
    provenance = {"reference_manifest_sha256": "a" * 64, "seed": 0, "epochs": None}
    history = [{"epoch": 1, "val_map": 0.5}]
    ranker = Ranker(RankerShape(8, (4,), 4), spec="pixels")
    ranker.history = history
    ranker.save(ranker_dir, extra={"provenance": provenance})
    attributor_dir.mkdir()

    assert reusable_ranker(tmp_path / "missing", provenance) is None
    reused = reusable_ranker(ranker_dir, provenance, (attributor_dir,))
    assert reused is not None and reused.history == history and reused.spec == "pixels"
    assert attributor_dir.exists()

    other = {**provenance, "reference_manifest_sha256": "b" * 64}
    assert reusable_ranker(ranker_dir, other, (attributor_dir,)) is None
    assert not ranker_dir.exists() and not attributor_dir.exists()
