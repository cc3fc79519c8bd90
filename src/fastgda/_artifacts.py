"""Artifact folders: ``manifest.json`` (kind, format version, shapes, config, checksums) and atomic writes.

Every artifact fastgda writes is a folder built under a temporary name and renamed into place, so a crash never
leaves a half-written artifact behind; loading checks the manifest before anything else is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import IncompatibleArtifactError

MANIFEST_NAME = "manifest.json"


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: str | os.PathLike, text: str | Iterable[str]) -> None:
    """Write ``text`` (a string, or pieces written one at a time: a file of N lines never held whole) to ``path``
    through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for piece in [text] if isinstance(text, str) else text:
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(final_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that is renamed to ``final_dir`` only if the block succeeds.

    Raises:
        FileExistsError: ``final_dir`` exists and ``overwrite`` is false.
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and not overwrite:
        raise FileExistsError(
            f"{final_dir} already exists; pass overwrite=True or choose another folder"
        )
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(
        tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".partial", dir=final_dir.parent)
    )
    try:
        yield tmp_dir
        if final_dir.exists():
            # Move the old copy aside first so the swap never leaves final_dir missing for long.
            trash = final_dir.with_name(f".{final_dir.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final_dir, trash)
            os.replace(tmp_dir, final_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp_dir, final_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def write_manifest(
    artifact_dir: str | os.PathLike,
    kind: str,
    format_version: int,
    *,
    config: dict[str, Any] | None = None,
    shapes: dict[str, list[int]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Checksum every file under ``artifact_dir`` and write its ``manifest.json``.

    Returns:
        The manifest as written.
    """
    artifact_dir = Path(artifact_dir)
    checksums = {
        path.relative_to(artifact_dir).as_posix(): sha256_file(path)
        for path in sorted(artifact_dir.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }
    manifest: dict[str, Any] = {
        "kind": kind,
        "format_version": format_version,
        "shapes": shapes or {},
        "config": config or {},
        **(extra or {}),
        "checksums": checksums,
    }
    write_json_atomic(artifact_dir / MANIFEST_NAME, manifest)
    return manifest


def read_manifest(
    artifact_dir: str | os.PathLike,
    kind: str | tuple[str, ...],
    format_version: int | tuple[int, ...],
) -> dict[str, Any]:
    """Read and check ``manifest.json``: the folder must hold an artifact of ``kind`` at ``format_version`` (or
    at one of several versions this fastgda still reads).

    Raises:
        IncompatibleArtifactError: the manifest is missing, unreadable, or of another kind or version.
    """
    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MANIFEST_NAME
    kinds = (kind,) if isinstance(kind, str) else kind
    if not path.is_file():
        raise IncompatibleArtifactError(
            f"{artifact_dir} has no {MANIFEST_NAME}: expected a fastgda artifact of kind {kinds[0]!r}; "
            "check the path, or rebuild the artifact with the fastgda command that makes it"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise IncompatibleArtifactError(
            f"{path} is not valid JSON ({exc}); rebuild the artifact"
        ) from exc
    if manifest.get("kind") not in kinds:
        raise IncompatibleArtifactError(
            f"{artifact_dir} holds an artifact of kind {manifest.get('kind')!r}, "
            f"expected {' or '.join(map(repr, kinds))}; pass the folder of the right artifact"
        )
    versions = (format_version,) if isinstance(format_version, int) else format_version
    if manifest.get("format_version") not in versions:
        raise IncompatibleArtifactError(
            f"{artifact_dir} has format version {manifest.get('format_version')!r}, this fastgda reads version "
            f"{' or '.join(map(str, versions))}; rebuild the artifact with this version of fastgda"
        )
    return manifest


def verify_checksums(
    artifact_dir: str | os.PathLike, manifest: dict[str, Any], names: list[str] | None = None
) -> None:
    """Check every file listed in the manifest (or just ``names`` of them) against its SHA-256.

    Raises:
        IncompatibleArtifactError: a file is missing or its bytes changed, or ``names`` lists a file the manifest
            does not.
    """
    artifact_dir = Path(artifact_dir)
    checksums = manifest.get("checksums", {})
    unknown = [name for name in names or () if name not in checksums]
    if unknown:
        raise IncompatibleArtifactError(
            f"{artifact_dir}'s manifest lists no checksum for {unknown}; rebuild the artifact"
        )
    for name, expected in checksums.items():
        if names is not None and name not in names:
            continue
        path = artifact_dir / name
        if not path.is_file():
            raise IncompatibleArtifactError(
                f"{path} is listed in the manifest but missing; rebuild the artifact"
            )
        found = sha256_file(path)
        if found != expected:
            raise IncompatibleArtifactError(
                f"{path} has SHA-256 {found[:12]}…, the manifest expects {expected[:12]}…: the file was changed "
                "or truncated; rebuild the artifact"
            )


def describe_difference(stored: Any, wanted: Any, limit: int = 6) -> str:
    """The fields two JSON-like configs disagree on, one ``key: stored -> wanted`` each (nested keys dotted)."""
    differences: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                walk(
                    a.get(key, "<absent>"),
                    b.get(key, "<absent>"),
                    f"{path}.{key}" if path else str(key),
                )
        elif a != b:
            differences.append(f"{path or 'value'}: {a!r} -> {b!r}")

    walk(stored, wanted, "")
    shown = differences[:limit]
    if len(differences) > limit:
        shown.append(f"and {len(differences) - limit} more")
    return "; ".join(shown) or "no field differs"


def cache_dir() -> Path:
    """fastgda's cache of derived data (encoded training sets): ``$FASTGDA_CACHE``, else ``$XDG_CACHE_HOME/fastgda``
    or ``~/.cache/fastgda``. Everything in it can be deleted; it is recomputed when needed."""
    chosen = os.environ.get("FASTGDA_CACHE")
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastgda"


def keyed_cache_dir(root: str | os.PathLike, kind: str, key: dict) -> Path:
    """``root/kind/<digest of key>``: where a cache of ``kind`` derived from exactly ``key`` (JSON-able) lives."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return Path(root) / kind / digest


def remembered_lines(name: str) -> list[str]:
    """The lines of the cache file ``name`` (facts remembered across runs, one a line), or none."""
    path = cache_dir() / name
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def remember_line(name: str, line: str) -> None:
    """Append one line to the cache file ``name``: a single short write, so concurrent writers keep whole lines;
    a read-only cache only costs recomputing what was not remembered."""
    with contextlib.suppress(OSError):
        cache_dir().mkdir(parents=True, exist_ok=True)
        with open(cache_dir() / name, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


VERIFIED_FILE = "verified-artifacts.jsonl"  # in fastgda's cache: one stat key a line, of folders verified in full


def verify_checksums_once(artifact_dir: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """``verify_checksums`` in full the first time a folder is read in this state, then a ``stat`` per file.

    For large artifacts read by every step (a training set's encoding: 11 GB at N = 118k with tiny16, terabytes
    with Stable Diffusion latents; features of every item), where a full pass on every load costs more than the
    step. The state is the manifest's checksums with each listed file's path, size and modification time (ns),
    remembered in fastgda's cache after a full pass succeeds. What it can miss: a file rewritten in place with
    the same size and its old modification time restored (``touch -r``, some copy tools); delete the cache's
    ``verified-artifacts.jsonl`` to verify every byte again.
    """
    artifact_dir = Path(artifact_dir)
    checksums = manifest.get("checksums", {})
    lines = [json.dumps(checksums, sort_keys=True), str(artifact_dir.resolve())]
    try:
        for name in sorted(checksums):
            info = os.stat(artifact_dir / name)
            lines.append(f"{name}\0{info.st_size}\0{info.st_mtime_ns}")
    except FileNotFoundError:
        verify_checksums(artifact_dir, manifest)  # says which file is missing
    key = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    if key in remembered_lines(VERIFIED_FILE):
        return
    verify_checksums(artifact_dir, manifest)
    remember_line(VERIFIED_FILE, key)
