"""Importing the official FastGDA release's data: feature matrices (``.npy``) and teacher rankings (pickles).

Pickles execute code when loaded, so rankings go through ``restricted_unpickle``: it rebuilds numpy arrays and
plain containers (dict, list, tuple, str, numbers) and refuses every other global with an error naming it. Feature
matrices are loaded with ``allow_pickle=False``. Imported data become ordinary fastgda artifacts
(``Features``, ``GroundTruth``), so users holding the release can reproduce the paper's MSCOCO mAP with this code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from .errors import FastGDAError
from .features import Features
from .ground_truth import GroundTruth

# (module, name) pairs a numpy array or a plain container pickle needs, for numpy 1.x and 2.x module paths.
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("collections", "OrderedDict"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),  # how numpy arrays pickled under Python 2 protocols carry their bytes
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise FastGDAError(
            f"refusing to unpickle {module}.{name}: only numpy arrays and plain containers are allowed in "
            "ranking files (a pickle can run arbitrary code)"
        )


def restricted_unpickle(path: str | os.PathLike):
    """Load a pickle holding only numpy arrays and plain containers; anything else raises ``FastGDAError``."""
    with open(path, "rb") as handle:
        try:
            return _RestrictedUnpickler(handle).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
            raise FastGDAError(f"{path} is not a readable ranking pickle: {exc}") from exc


def import_features(path: str | os.PathLike, spec: str = "dino+clip_text") -> Features:
    """A release feature matrix (N, D) ``.npy`` as ``Features`` (the spec names what produced it)."""
    try:
        values = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise FastGDAError(
            f"{path} is not a plain .npy array (object arrays are refused): {exc}"
        ) from exc
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.floating):
        raise FastGDAError(
            f"{path} holds a {values.dtype} array of shape {values.shape}; expected float (N, D)"
        )
    parts = [{"name": spec, "modality": "imported", "dim": int(values.shape[1]), "offset": 0}]
    return Features(
        values.astype(np.float32), np.arange(len(values)), spec, parts, {"imported_from": str(path)}
    )


_ID_KEYS = ("ids", "rank", "indices", "ranking")


def import_rankings(path: str | os.PathLike, selection: str | None = None) -> GroundTruth:
    """Release rankings as a ``GroundTruth``: most influential first, ids as given.

    Accepts an int array (Q, K); a list of per-query id arrays; a dict query -> ids, or query ->
    {"ids"/"rank"/"indices": ids, optional "scores"}; or the release's own layout, a dict of candidate selections
    each holding all queries' rankings, ``{"random": {"rank": int (Q, K)}}`` (``selection`` picks one; default
    ``random``, or the only one). Scores, when absent, are filled with K - position so that "higher = more
    influential" still holds.
    """
    data = restricted_unpickle(path) if Path(path).suffix in (".pkl", ".pickle") else np.load(path)
    data = _unwrap_selection(data, selection, path)
    if isinstance(data, np.ndarray) and data.ndim == 2:
        data = list(data)
    if isinstance(data, dict):
        keys = sorted(data)
        rows = [data[k] for k in keys]
        query_ids = (
            np.arange(len(keys)) if not all(isinstance(k, int | np.integer) for k in keys) else keys
        )
    else:
        rows, query_ids = list(data), None
    ids_rows, score_rows = [], []
    for row in rows:
        scores = None
        if isinstance(row, dict):
            key = next((k for k in _ID_KEYS if k in row), None)
            if key is None:
                raise FastGDAError(
                    f"{path}: a query entry has keys {sorted(row)}, expected 'ids' (and 'scores')"
                )
            scores = row.get("scores")
            row = row[key]
        ids = np.asarray(row)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise FastGDAError(
                f"{path}: a ranking is {ids.dtype} {ids.shape}; expected a 1-D integer id array"
            )
        ids_rows.append(ids.astype(np.int32))
        score_rows.append(
            np.asarray(scores, np.float32) if scores is not None else np.arange(len(ids), 0, -1.0)
        )
    if len({len(r) for r in ids_rows}) != 1:
        raise FastGDAError(
            f"{path}: rankings have different lengths {sorted({len(r) for r in ids_rows})}"
        )
    query_ids = np.arange(len(ids_rows)) if query_ids is None else np.asarray(query_ids, np.int64)
    return GroundTruth(
        query_ids,
        np.stack(ids_rows),
        np.stack(score_rows).astype(np.float32),
        {"imported_from": str(path)},
    )


def _unwrap_selection(data, selection: str | None, path):
    """The release's ``{selection: {"rank": (Q, K), "scores"?: (Q, K)}}`` as ``{"ids": ..., "scores": ...}`` rows."""
    if not isinstance(data, dict) or not data:
        return data
    nested = {
        name: value
        for name, value in data.items()
        if isinstance(value, dict) and any(np.ndim(value.get(k)) == 2 for k in _ID_KEYS)
    }
    if not nested:
        return data
    name = selection or (
        "random" if "random" in nested else next(iter(nested)) if len(nested) == 1 else None
    )
    if name not in nested:
        raise FastGDAError(
            f"{path} holds the rankings of candidate selections {sorted(nested)}; choose one (selection=...)"
        )
    entry = nested[name]
    ids = np.asarray(next(entry[k] for k in _ID_KEYS if np.ndim(entry.get(k)) == 2))
    scores = entry.get("scores")
    if scores is None:
        return list(ids)
    return [{"ids": row, "scores": s} for row, s in zip(ids, np.asarray(scores), strict=True)]


def import_release(
    release_dir: str | os.PathLike, out_dir: str | os.PathLike, selection: str | None = None
) -> dict:
    """Turn the official release's layout into fastgda artifacts under ``out_dir``.

    Reads every ``feats/<spec>/`` folder (``data_feats.npy`` (N, D), ``train_query_feats.npy``,
    ``test_query_feats.npy``) into ``out_dir/features/<spec>/{items,q-train,q-test}``, and ``influence_train.pkl``
    / ``influence_test.pkl`` (through the restricted unpickler) into ``out_dir/ground_truth/{train,test}``.

    Returns:
        what was written: specs with their shapes, and the ground truths' shapes.

    Raises:
        FastGDAError: nothing of the layout is there, or rankings name ids or queries the features lack.
    """
    release_dir, out_dir = Path(release_dir), Path(out_dir)
    feature_dirs = sorted({p.parent for p in release_dir.rglob("data_feats.npy")})
    if not feature_dirs:
        raise FastGDAError(
            f"{release_dir} holds no feats/<spec>/data_feats.npy; pass the folder of the FastGDA release "
            "(data/coco/feats/...)"
        )
    written: dict = {"features": {}, "ground_truth": {}}
    num_queries: dict[str, int] = {}
    num_train = None
    for folder in feature_dirs:
        spec = folder.name
        for source, name in [("data_feats", "items"), ("train_query_feats", "q-train"),
                             ("test_query_feats", "q-test")]:  # fmt: skip
            path = folder / f"{source}.npy"
            if not path.is_file():
                continue
            features = import_features(path, spec)
            features.save(out_dir / "features" / spec / name, overwrite=True)
            written["features"].setdefault(spec, {})[name] = list(features.values.shape)
            if name == "items":
                num_train = len(features)
            else:
                num_queries[name[2:]] = len(features)
    for split in ("train", "test"):
        found = sorted(release_dir.rglob(f"influence_{split}.pkl"))
        if not found:
            continue
        truth = import_rankings(found[0], selection)
        if num_train is not None and int(truth.ids.max()) >= num_train:
            raise FastGDAError(
                f"{found[0]} ranks training id {int(truth.ids.max())}, the features hold {num_train} items"
            )
        if split in num_queries and len(truth) > num_queries[split]:
            raise FastGDAError(
                f"{found[0]} ranks {len(truth)} queries, {split}_query_feats.npy holds {num_queries[split]}"
            )
        truth.save(out_dir / "ground_truth" / split, overwrite=True)
        written["ground_truth"][split] = list(truth.ids.shape)
    return written
