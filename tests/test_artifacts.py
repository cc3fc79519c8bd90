import json

import pytest

from fastgda import IncompatibleArtifactError
from fastgda._artifacts import atomic_dir, read_manifest, verify_checksums, write_manifest


def _artifact(tmp_path):
    with atomic_dir(tmp_path / "art") as tmp:
        (tmp / "weights.bin").write_bytes(b"\x00\x01")
        write_manifest(tmp, "thing", 3, config={"a": 1}, shapes={"w": [2]})
    return tmp_path / "art"


def test_manifest_round_trip(tmp_path):
    art = _artifact(tmp_path)
    manifest = read_manifest(art, "thing", 3)
    assert manifest["config"] == {"a": 1} and "weights.bin" in manifest["checksums"]
    verify_checksums(art, manifest)


@pytest.mark.parametrize(
    ("kind", "version", "message"), [("other", 3, "kind 'thing'"), ("thing", 4, "version 3")]
)
def test_manifest_mismatch_says_what_differs(tmp_path, kind, version, message):
    art = _artifact(tmp_path)
    with pytest.raises(IncompatibleArtifactError, match=message):
        read_manifest(art, kind, version)


def test_changed_bytes_fail_the_checksum(tmp_path):
    art = _artifact(tmp_path)
    (art / "weights.bin").write_bytes(b"\x00\x02")
    with pytest.raises(IncompatibleArtifactError, match="weights.bin.*changed"):
        verify_checksums(art, json.loads((art / "manifest.json").read_text()))


def test_missing_manifest_is_explained(tmp_path):
    with pytest.raises(IncompatibleArtifactError, match="no manifest.json"):
        read_manifest(tmp_path, "thing", 1)


def test_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "art") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_existing_artifact_is_not_overwritten_by_default(tmp_path):
    _artifact(tmp_path)
    with pytest.raises(FileExistsError), atomic_dir(tmp_path / "art"):
        pass


def test_a_large_cache_is_verified_in_full_once_then_by_stat(tmp_path, monkeypatch):
    import os

    from fastgda._artifacts import VERIFIED_FILE, verify_checksums_once

    monkeypatch.setenv("FASTGDA_CACHE", str(tmp_path / "cache"))
    art = _artifact(tmp_path)
    manifest = read_manifest(art, "thing", 3)
    verify_checksums_once(art, manifest)  # in full, then remembered
    assert (tmp_path / "cache" / VERIFIED_FILE).is_file()

    weights = art / "weights.bin"
    stamp = os.stat(weights)
    weights.write_bytes(b"\x07\x07")  # same size, new bytes
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    verify_checksums_once(
        art, manifest
    )  # the documented miss: size and time restored, so only a stat

    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000_000))
    with pytest.raises(IncompatibleArtifactError, match="changed or truncated"):
        verify_checksums_once(art, manifest)  # a new time: every byte read again
