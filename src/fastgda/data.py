"""Captioned image datasets: one abstraction, two readers.

``ImageCaptionDataset`` is what every later stage reads: stable integer ids (row order), captions per item,
lazily loaded RGB images of any size and mode (``fastgda.images``: decoded in parallel, squared per model) and a
content hash for manifests. Readers: a folder with ``captions.jsonl``
(``ImageCaptionFolder``, optionally with planted exemplars in ``concepts.json``) and COCO-style
``captions_*.json`` annotations (``CocoCaptions``). ``open_dataset`` picks one by path. (The embedded shapes
world is a folder of this kind; its extras live in ``fastgda.app.world``.)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from .errors import DatasetError
from .images import map_images, read_image, squares

CAPTIONS_FILE = "captions.jsonl"


@dataclass(frozen=True)
class ImageCaption:
    """One captioned image: a path to it (or its pixels) and its captions."""

    image: str | Path | np.ndarray
    captions: tuple[str, ...]

    def load_image(self) -> np.ndarray:
        """Return the image as a uint8 array of shape (H, W, 3)."""
        if isinstance(self.image, np.ndarray):
            return self.image
        return read_rgb(self.image)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file of any size and mode as upright 8-bit RGB (``fastgda.images.to_rgb``).

    Returns:
        uint8 array of shape (H, W, 3).

    Raises:
        DatasetError: the file is missing or is not a readable image.
    """
    try:
        return read_image(path)
    except FileNotFoundError as exc:
        raise DatasetError(
            f"image file {path} does not exist; restore it or remove its entry"
        ) from exc
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
    ) as exc:  # PIL raises all of these
        raise DatasetError(
            f"image file {path} is corrupt or not an image ({exc}); replace or remove it"
        ) from exc


def _check_captions(captions: object, where: str) -> tuple[str, ...]:
    if isinstance(captions, str):
        captions = [captions]
    if not isinstance(captions, list | tuple) or not captions:
        raise DatasetError(
            f"{where}: expected one or more captions, found {captions!r}; add a caption"
        )
    out = []
    for caption in captions:
        if not isinstance(caption, str) or not caption.strip():
            raise DatasetError(
                f"{where}: empty caption {caption!r}; every caption must contain text"
            )
        out.append(caption.strip())
    return tuple(out)


class ImageCaptionDataset:
    """Captioned images with stable integer ids 0..N-1 (row order); images load lazily.

    Subclasses fill ``self._paths`` (image file per row), ``self._captions`` (captions per row) and
    ``self._keys`` (the user's own id per row, for error messages and look-ups).
    """

    kind = "image_caption_dataset"

    def __init__(
        self, root: Path, paths: list[Path], captions: list[tuple[str, ...]], keys: list[str]
    ):
        self.root = root
        self._paths = paths
        self._captions = captions
        self._keys = keys
        seen: dict[str, int] = {}
        for row, key in enumerate(keys):
            if key in seen:
                raise DatasetError(
                    f"{self.source}: duplicate id {key!r} at rows {seen[key]} and {row}; ids must be unique"
                )
            seen[key] = row

    @property
    def source(self) -> Path:
        """The file or folder the dataset was read from (named in error messages)."""
        return self.root

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> ImageCaption:
        return ImageCaption(self._paths[index], self._captions[index])

    @property
    def ids(self) -> np.ndarray:
        """int64 array of shape (N,): the stable row ids."""
        return np.arange(len(self), dtype=np.int64)

    @property
    def keys(self) -> list[str]:
        """The user's own identifier per row (file name or annotation id)."""
        return list(self._keys)

    def captions(self, index: int) -> tuple[str, ...]:
        """The captions of row ``index``."""
        return self._captions[index]

    def image_path(self, index: int) -> Path:
        """The image file of row ``index``."""
        return self._paths[index]

    def load_image(self, index: int) -> np.ndarray:
        """Return row ``index``'s image, uint8 (H, W, 3); raises ``DatasetError`` naming a bad file."""
        return read_rgb(self._paths[index])

    def read_images(self, indices: Sequence[int] | None = None) -> list[np.ndarray]:
        """Many images as they are (any sizes), decoded side by side: a list of uint8 (H_i, W_i, 3)."""
        indices = range(len(self)) if indices is None else indices
        return map_images(self.load_image, indices)

    def load_images(
        self, indices: Sequence[int] | None = None, size: int | None = None, crop: float = 1.0
    ) -> np.ndarray:
        """Load many images as one batch: each image's centred square (``crop`` of its shorter side) resized
        (bicubic) to ``size`` x ``size`` (``fastgda.images.square``); without ``size`` they must share a shape.

        Returns:
            uint8 array of shape (B, H, W, 3).

        Raises:
            DatasetError: a bad file, or images of several shapes and no ``size``.
        """
        images = self.read_images(indices)
        if size is not None:
            return squares(images, size, crop)
        for n, image in enumerate(images):
            if image.shape != images[0].shape:
                row = list(range(len(self)) if indices is None else indices)[n]
                raise DatasetError(
                    f"{self._paths[row]} has shape {image.shape}, the first image has {images[0].shape}; "
                    "pass size= to square them to one size, or read_images() to take them as they are"
                )
        return np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8)

    def without(self, rows) -> ImageCaptionDataset:
        """A copy without ``rows`` (leave-K-out retraining); the rest keep their order and get new row ids."""
        drop = {int(r) for r in rows}
        keep = [i for i in range(len(self)) if i not in drop]
        subset = ImageCaptionDataset(
            self.root,
            [self._paths[i] for i in keep],
            [self._captions[i] for i in keep],
            [self._keys[i] for i in keep],
        )
        subset.kind = f"{self.kind} without {len(self) - len(keep)} rows"
        return subset

    def validate(self) -> None:
        """Open every image once (side by side, a chunk at a time), so a corrupt file fails now, not mid-job."""
        for start in range(0, len(self), 1024):
            map_images(
                lambda i: self.load_image(i).shape, range(start, min(start + 1024, len(self)))
            )

    @cached_property
    def content_hash(self) -> str:
        """SHA-256 over the ordered captions and image bytes: any edit changes it.

        Reading every byte costs a pass over the data (18 GB at COCO's size), and several steps of a build ask.
        So the full hash is computed once and remembered in fastgda's cache under a cheap key: the captions and
        each image's path, size and modification time (``stat_key``). What that key can miss: an image rewritten
        with the same size and its old modification time restored (``touch -r``, some copy tools, filesystems
        with coarse timestamps); ``verify_content_hash`` reads every byte again.
        """
        key = self.stat_key()
        remembered = _remembered_hashes().get(key)
        if remembered is not None:
            return remembered
        full = self.verify_content_hash()
        _remember_hash(key, full)
        return full

    def verify_content_hash(self) -> str:
        """The content hash from every byte, whatever is remembered."""
        digest = hashlib.sha256()
        for path, captions in zip(self._paths, self._captions, strict=True):
            digest.update(json.dumps(list(captions)).encode())
            try:
                digest.update(path.read_bytes())
            except FileNotFoundError as exc:
                raise _missing_image(path) from exc
        return digest.hexdigest()

    def stat_key(self) -> str:
        """SHA-256 over the ordered captions, the dataset's location and each image's path, size and
        modification time (ns): one ``stat`` per image, no image bytes read."""
        digest = hashlib.sha256(json.dumps([list(c) for c in self._captions]).encode())
        root = str(
            Path(self.source).resolve()
        )  # one resolve: the key moves with the folder's location
        lines = [root]
        for path in self._paths:
            try:
                info = os.stat(path)
            except FileNotFoundError as exc:
                raise _missing_image(path) from exc
            lines.append(f"{path}\0{info.st_size}\0{info.st_mtime_ns}")
        digest.update("\n".join(lines).encode())
        return digest.hexdigest()

    def describe(self) -> dict:
        """Manifest fields for artifacts built from this dataset."""
        return {
            "source": str(self.source),
            "kind": self.kind,
            "size": len(self),
            "content_hash": self.content_hash,
        }


def _missing_image(path: Path) -> DatasetError:
    return DatasetError(f"image file {path} does not exist; restore it or remove its entry")


HASHES_FILE = "content-hashes.jsonl"  # in fastgda's cache: one {"key", "content_hash"} per line


def _remembered_hashes() -> dict[str, str]:
    """stat key -> content hash, from the cache (an unreadable line is skipped: it is recomputed)."""
    from ._artifacts import remembered_lines

    remembered = {}
    for line in remembered_lines(HASHES_FILE):
        try:
            entry = json.loads(line)
            remembered[entry["key"]] = entry["content_hash"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return remembered


def _remember_hash(key: str, content_hash: str) -> None:
    from ._artifacts import remember_line

    remember_line(HASHES_FILE, json.dumps({"key": key, "content_hash": content_hash}))


class ImageCaptionFolder(ImageCaptionDataset):
    """A folder of images with ``captions.jsonl``: one JSON object per line, in row order.

    Each line holds ``"file"`` (relative to the folder), ``"captions"`` (a list) or ``"caption"`` (a string),
    and optionally ``"id"`` (must be unique). Extra fields are kept in ``records``.
    """

    kind = "image_caption_folder"

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        index_file = root / CAPTIONS_FILE
        if not index_file.is_file():
            raise DatasetError(
                f"{root} has no {CAPTIONS_FILE}; expected one JSON line per image such as "
                '{"file": "images/0.png", "captions": ["a red circle"]}'
            )
        paths, captions, keys, records = [], [], [], []
        with open(index_file, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{index_file}:{line_no}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{where}: not valid JSON ({exc})") from exc
                if not isinstance(record, dict) or "file" not in record:
                    raise DatasetError(
                        f'{where}: expected an object with a "file" field, found {line.strip()[:80]}'
                    )
                path = root / record["file"]
                if not path.is_file():
                    raise DatasetError(
                        f"{where}: image file {path} does not exist; add it or remove the line"
                    )
                caps = record.get("captions", record.get("caption"))
                captions.append(_check_captions(caps, f"{where} ({record['file']})"))
                paths.append(path)
                keys.append(str(record.get("id", record["file"])))
                records.append(record)
        if not paths:
            raise DatasetError(f"{index_file} lists no images; add one line per image")
        self.records = records
        super().__init__(root, paths, captions, keys)

    @property
    def source(self) -> Path:  # noqa: D102
        return self.root / CAPTIONS_FILE


class CocoCaptions(ImageCaptionDataset):
    """COCO-style caption annotations (``captions_train2017.json``) plus the folder holding the images.

    Rows follow the order of the ``images`` list; all captions of an image are kept.
    """

    kind = "coco_captions"

    def __init__(
        self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike | None = None
    ):
        annotation_file = Path(annotation_file)
        self.annotation_file = annotation_file
        if image_dir is None:
            # COCO's layout: annotations/captions_train2017.json beside train2017/.
            split = annotation_file.stem.removeprefix("captions_")
            image_dir = annotation_file.parent.parent / split
        image_dir = Path(image_dir)
        try:
            data = json.loads(annotation_file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DatasetError(f"annotation file {annotation_file} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{annotation_file} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DatasetError(
                f'{annotation_file}: expected a COCO captions file with "images" and "annotations"'
            )
        by_image: dict[int, list[str]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann.get("caption", ""))
        paths, captions, keys = [], [], []
        for img in data["images"]:
            path = image_dir / img["file_name"]
            where = f"{annotation_file} (image id {img['id']}, {img['file_name']})"
            if not path.is_file():
                raise DatasetError(
                    f"{where}: image file {path} does not exist; pass image_dir= or restore it"
                )
            captions.append(_check_captions(by_image.get(img["id"], []), where))
            paths.append(path)
            keys.append(str(img["id"]))
        if not paths:
            raise DatasetError(f"{annotation_file} lists no images")
        super().__init__(image_dir, paths, captions, keys)

    @property
    def source(self) -> Path:  # noqa: D102
        return self.annotation_file


PLANTED_FILE = "concepts.json"


def read_planted_concepts(root: str | os.PathLike) -> dict[str, list[int]] | None:
    """The planted exemplars a data folder declares, or None: ``concepts.json`` beside ``captions.jsonl``,
    ``{"concepts": [{"name": ..., "exemplar_ids": [row, ...]}, ...]}``. Planted recall (``fastgda.evaluation``)
    measures whether a query naming a concept finds its exemplars: canaries any data set may carry (the shapes
    world plants its rare concepts this way).

    Raises:
        DatasetError: the file is there but does not say that.
    """
    path = Path(root) / PLANTED_FILE
    if not path.is_file():
        return None
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))["concepts"]
        return {c["name"]: [int(i) for i in c["exemplar_ids"]] for c in listed}
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(
            f'{path} is not a list of planted concepts ({exc}); expected {{"concepts": [{{"name": ..., '
            '"exemplar_ids": [...]}]}}'
        ) from exc


def open_dataset(
    path: str | os.PathLike, image_dir: str | os.PathLike | None = None
) -> ImageCaptionDataset:
    """Open a dataset by path: a folder with ``captions.jsonl``, or a COCO captions file.

    Raises:
        DatasetError: nothing at ``path`` is a recognised dataset.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        return CocoCaptions(path, image_dir)
    if (path / CAPTIONS_FILE).is_file():
        return ImageCaptionFolder(path)
    raise DatasetError(
        f"{path} is not a dataset: expected a folder with {CAPTIONS_FILE}, "
        "or a COCO captions_*.json file"
    )


SHARD_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def convert_shards(
    source: str | os.PathLike, out_dir: str | os.PathLike, threads: int | None = None
) -> ImageCaptionFolder:
    """Turn webdataset / img2dataset tar shards into an image folder with ``captions.jsonl`` (done once).

    A shard holds samples as ``<key>.<ext>`` files: an image (jpg, png or webp) with its caption in ``<key>.txt``
    or in ``<key>.json`` (``"caption"`` or ``"captions"``), as img2dataset writes them. ``source`` is a ``.tar``
    file or a folder of them (rows in shard-name order, then member order). Members are read, never extracted,
    so no path in a shard can write outside ``out_dir``; samples without an image or a non-empty caption are
    skipped and counted.

    Resumable per shard: each shard is converted on its own (``threads`` side by side, default one per core)
    into ``<out_dir>.partial/`` and marked done when its images and captions are in place; a rerun after a crash
    converts only the shards not marked, and the captions are joined, streamed, at the end. No step holds more
    than one shard's caption lines.

    Raises:
        DatasetError: no shards, an unreadable shard, or no usable sample in them.
        FileExistsError: ``out_dir`` exists.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .images import decode_threads
    from .progress import bar as progress_bar

    source, out_dir = Path(source), Path(out_dir)
    shards = sorted(source.glob("*.tar")) if source.is_dir() else [source]
    if not shards or not all(s.is_file() for s in shards):
        raise DatasetError(
            f"{source} holds no .tar shards; pass a shard or a folder of webdataset shards"
        )
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; pass another folder, or remove it")
    work = out_dir.with_name(out_dir.name + ".partial")
    (work / "done").mkdir(parents=True, exist_ok=True)
    pending = [shard for shard in shards if not (work / "done" / f"{shard.stem}.json").is_file()]
    with ThreadPoolExecutor(threads or decode_threads()) as pool:
        converted = pool.map(lambda shard: _convert_shard(shard, work), pending)
        for _ in progress_bar(converted, total=len(pending), desc="reading shards"):
            pass  # each shard marks itself done; an error stops here, the finished ones kept
    markers = [
        json.loads((work / "done" / f"{shard.stem}.json").read_text(encoding="utf-8"))
        for shard in shards
    ]
    skipped, samples = sum(m["skipped"] for m in markers), sum(m["samples"] for m in markers)
    if not samples:
        raise DatasetError(f"no sample in {source} has both an image and a caption")

    def joined():  # the shards' caption parts in shard order, a line at a time
        for shard in shards:
            with open(work / "done" / f"{shard.stem}.jsonl", encoding="utf-8") as part:
                yield from part

    from ._artifacts import write_text_atomic

    write_text_atomic(work / CAPTIONS_FILE, joined())
    os.replace(work, out_dir)
    import shutil

    shutil.rmtree(out_dir / "done", ignore_errors=True)  # the per-shard parts, joined above
    if skipped:
        import logging

        logging.getLogger(__name__).warning(
            "%d samples without an image or a caption were skipped", skipped
        )
    return ImageCaptionFolder(out_dir)


def _convert_shard(shard: Path, work: Path) -> None:
    """One shard's usable samples into ``work/images/<shard>/`` and ``work/done/<shard>.jsonl``, then its done
    marker ``work/done/<shard>.json`` (samples and skipped counts), written last."""
    import shutil
    import tarfile

    from ._artifacts import write_json_atomic, write_text_atomic

    folder = work / "images" / shard.stem
    staging = work / "images" / f".{shard.stem}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left by a crash mid-shard: redone whole
    staging.mkdir(parents=True)
    try:
        archive = tarfile.open(shard)
    except (tarfile.TarError, OSError) as exc:
        raise DatasetError(f"{shard} is not a readable tar file ({exc})") from exc
    lines, skipped = [], 0
    with archive:
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        for member in archive.getmembers():
            if member.isfile():
                key, _, ext = member.name.rpartition(".")
                samples.setdefault(key, {})[f".{ext.lower()}"] = member
        for key, files in samples.items():
            image = next((files[e] for e in SHARD_IMAGE_EXTENSIONS if e in files), None)
            captions = _shard_captions(archive, files)
            if image is None or not captions:
                skipped += 1
                continue
            name = f"{len(lines):08d}{Path(image.name).suffix.lower()}"
            (staging / name).write_bytes(archive.extractfile(image).read())
            record = {
                "file": f"images/{shard.stem}/{name}",
                "captions": captions,
                "id": f"{shard.stem}/{Path(key).name}",
            }
            lines.append(json.dumps(record))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    write_text_atomic(work / "done" / f"{shard.stem}.jsonl", "".join(line + "\n" for line in lines))
    write_json_atomic(
        work / "done" / f"{shard.stem}.json", {"samples": len(lines), "skipped": skipped}
    )


def _shard_captions(archive, files: dict) -> list[str]:
    """A sample's non-empty captions, from its .txt or .json member."""
    if ".txt" in files:
        text = archive.extractfile(files[".txt"]).read().decode("utf-8", errors="replace").strip()
        return [text] if text else []
    if ".json" in files:
        try:
            meta = json.loads(archive.extractfile(files[".json"]).read())
        except (ValueError, UnicodeDecodeError):
            return []
        found = meta.get("captions", meta.get("caption")) if isinstance(meta, dict) else None
        found = [found] if isinstance(found, str) else found or []
        return [c.strip() for c in found if isinstance(c, str) and c.strip()]
    return []
