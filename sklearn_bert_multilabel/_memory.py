"""The ``memory`` cache: trained weights, predicted logits and frozen-encoder features.

Layout under ``<location>/sklearn_bert_multilabel/``::

    fits/<key>/weights.safetensors   trained weights (head only when the encoder is frozen)
    fits/<key>/meta.json             history, pos_weight, label count
    fits/<key>/valid.npz             validation logits and labels (for threshold="auto")
    logits/<key>.npy                 logits of one fitted model on one set of texts
    features/<key>/chunk-*/          pooled features of a frozen encoder: keys.npy (text
                                     hashes, sorted) and features.npy (rows, same order)

Every entry is written to a temporary name and renamed into place, so
processes sharing a cache (``GridSearchCV(n_jobs=...)``) never see a partial
entry. Unreadable entries are ignored with a :class:`CacheWarning`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._pretrained import file_stamps

logger = logging.getLogger(__name__)


class CacheWarning(UserWarning):
    """A cache entry could not be read or written; the work is done again."""


def resolve_location(memory: object) -> Path | None:
    """The cache folder for ``memory``: None, a path, or a ``joblib.Memory``."""
    if memory is None:
        return None
    location = getattr(memory, "location", memory)
    if location is None:
        return None
    return Path(os.fspath(location)) / "sklearn_bert_multilabel"


def stable_hash(*parts: Any) -> str:
    """A hash of ``parts`` stable across processes (joblib's pickling hash)."""
    import joblib

    return joblib.hash(parts, hash_name="sha1")


def text_keys(texts: list[str]) -> np.ndarray:
    """A 16-byte digest per text, the key of the feature store."""
    return np.array(
        [hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in texts],
        dtype="S16",
    )


def texts_digest(texts: Sequence[str] | None) -> bytes | None:
    """The texts, in order, as one digest per text: a cheaper hash input than the strings."""
    return None if texts is None else text_keys(list(texts)).tobytes()


def model_fingerprint(path: str) -> str:
    """Identify the pretrained files: their names, sizes, modification times and config.

    The times make weights rewritten in place (a fine-tuned model saved over
    the folder it came from has the same file sizes) miss the cache; a copy of
    the folder misses it too, which only costs recomputation.
    """
    if not os.path.isdir(path):
        return path
    config = Path(path, "config.json")
    return stable_hash(file_stamps(path), config.read_bytes() if config.is_file() else b"")


def _warn(what: str, where: Path, exc: BaseException) -> None:
    warnings.warn(
        f"ignoring the unreadable cache entry {where} ({what}: {type(exc).__name__}: {exc}); "
        "it is computed again.",
        CacheWarning,
        stacklevel=4,
    )


def _publish_dir(tmp: Path, final: Path) -> None:
    try:
        os.rename(tmp, final)
    except OSError:  # another process published it first, or a stale corrupt entry
        if final.exists() and not (final / "meta.json").is_file():
            shutil.rmtree(final, ignore_errors=True)
            try:
                os.rename(tmp, final)
                return
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def _write_file(final: Path, write) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


class FeatureStore:
    """Cached feature rows of one encoder setting, looked up by text key.

    Each chunk holds its keys sorted, with its rows in the same order, and
    both are memory-mapped: a lookup binary-searches every chunk's keys and
    reads only the rows it returns, so its cost grows with the number of
    texts asked for and of chunks, not with the number of texts cached. A
    text stored by several chunks (processes that shared a cache) is read
    from the first chunk, in name order, that has it.
    """

    def __init__(self, chunks: list[tuple[np.ndarray, np.ndarray]]):
        self.chunks = chunks  # (sorted S16 keys, rows in the same order)

    def fill(self, keys: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy the stored row of each of ``keys`` into ``out``; return where one was found."""
        found = np.zeros(len(keys), dtype=bool)
        for chunk_keys, rows in self.chunks:
            todo = np.flatnonzero(~found)
            if len(todo) == 0:
                break
            wanted = keys[todo]
            at = np.minimum(np.searchsorted(chunk_keys, wanted), len(chunk_keys) - 1)
            hit = np.asarray(chunk_keys[at]) == wanted
            if not hit.any():
                continue
            at, targets = at[hit], todo[hit]
            order = np.argsort(at, kind="stable")  # read the mapped rows front to back
            out[targets[order]] = rows[at[order]]
            found[targets] = True
        return found


def _sorted_chunk(keys: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys sorted and unique, with their rows: the order a chunk is stored and searched in."""
    keys, first = np.unique(keys, return_index=True)
    return keys, features[first]


def _check_chunk(keys: np.ndarray, features: np.ndarray, width: int) -> None:
    if keys.ndim != 1 or keys.dtype != np.dtype("S16") or features.shape != (len(keys), width):
        raise ValueError(
            f"{len(keys)} keys of type {keys.dtype}, features of shape {features.shape}; "
            f"expected S16 keys and {width} values a row"
        )
    if features.dtype != np.float32:
        raise ValueError(f"features of type {features.dtype}, expected float32")


def _map_npy(path: Path) -> np.ndarray:
    """An ``.npy`` array mapped from its file, or read whole where the file cannot be mapped."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise
    except OSError as exc:  # a file system without mmap: the file itself is fine
        logger.debug("cannot map %s (%s); reading it whole", path, exc)
        return np.load(path, allow_pickle=False)


def _read_chunk(chunk: Path) -> tuple[np.ndarray, np.ndarray]:
    """A chunk's keys and rows: mapped from a folder, or read whole from an ``.npz`` file."""
    if chunk.is_dir():
        return _map_npy(chunk / "keys.npy"), _map_npy(chunk / "features.npy")
    # One file, as earlier versions wrote each chunk, in the order it was computed.
    with np.load(chunk, allow_pickle=False) as data:
        keys, features = data["keys"], data["features"]
    if len(keys) != len(features):
        raise ValueError(f"{len(keys)} keys for {len(features)} rows")
    return _sorted_chunk(keys, features)


class FitCache:
    """Read and write the cache entries under one location."""

    def __init__(self, root: Path):
        self.root = root

    # ----------------------------------------------------------- fitted models
    def load_fit(self, key: str) -> dict | None:
        folder = self.root / "fits" / key
        if not folder.is_dir():
            return None
        try:
            from safetensors.torch import load_file

            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            weights = load_file(str(folder / "weights.safetensors"))
            valid = None
            if meta.get("has_valid"):
                with np.load(folder / "valid.npz") as data:
                    valid = (data["logits"], data["Y"])
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is retrained
            _warn("fitted model", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        logger.debug("cache hit for fit %s", key)
        return {"meta": meta, "weights": weights, "valid": valid}

    def discard_fit(self, key: str) -> None:
        shutil.rmtree(self.root / "fits" / key, ignore_errors=True)

    def save_fit(self, key: str, weights: dict, meta: dict, valid: tuple | None) -> None:
        from safetensors.torch import save_file

        final = self.root / "fits" / key
        if final.is_dir():
            return
        tmp = self.root / "fits" / f".{key}.{uuid.uuid4().hex}.tmp"
        try:
            tmp.mkdir(parents=True)
            save_file(
                {k: v.detach().cpu().clone().contiguous() for k, v in weights.items()},
                str(tmp / "weights.safetensors"),
            )
            if valid is not None:
                np.savez(tmp / "valid.npz", logits=valid[0], Y=valid[1])
            meta = dict(meta, has_valid=valid is not None)
            # meta.json last: a folder without it is incomplete.
            (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            _publish_dir(tmp, final)
        except OSError as exc:
            warnings.warn(f"could not write the cache entry {final}: {exc}", CacheWarning, stacklevel=3)
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ logits
    def load_logits(self, key: str, shape: tuple[int, int]) -> np.ndarray | None:
        path = self.root / "logits" / f"{key}.npy"
        if not path.is_file():
            return None
        try:
            logits = np.load(path, allow_pickle=False)
            if logits.shape != shape:
                raise ValueError(f"shape {logits.shape}, expected {shape}")
        except Exception as exc:  # noqa: BLE001
            _warn("logits", path, exc)
            path.unlink(missing_ok=True)
            return None
        return logits

    def save_logits(self, key: str, logits: np.ndarray) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, logits, allow_pickle=False)

        try:
            _write_file(self.root / "logits" / f"{key}.npy", write)
        except OSError as exc:
            warnings.warn(f"could not write logits to the cache: {exc}", CacheWarning, stacklevel=3)

    # ---------------------------------------------------------------- features
    def load_features(self, key: str, width: int) -> FeatureStore:
        """All cached feature chunks of one encoder setting (``width`` values a row), mapped."""
        folder = self.root / "features" / key
        if not folder.is_dir():
            return FeatureStore([])
        chunks = []
        for chunk in sorted(folder.glob("chunk-*")):
            try:
                keys, features = _read_chunk(chunk)
                _check_chunk(keys, features, width)
            except Exception as exc:  # noqa: BLE001
                if not chunk.exists():
                    continue  # removed by another process since the listing
                _warn("features", chunk, exc)
                if chunk.is_dir():
                    shutil.rmtree(chunk, ignore_errors=True)
                else:
                    chunk.unlink(missing_ok=True)
                continue
            if len(keys):
                chunks.append((keys, features))
        return FeatureStore(chunks)

    def save_features(self, key: str, keys: np.ndarray, features: np.ndarray) -> None:
        """Store rows as a new chunk: a folder of sorted keys and rows, renamed into place."""
        if len(keys) == 0:
            return
        keys, features = _sorted_chunk(keys, np.ascontiguousarray(features, dtype=np.float32))
        folder = self.root / "features" / key
        name = f"chunk-{uuid.uuid4().hex}"
        tmp = folder / f".{name}.tmp"
        try:
            tmp.mkdir(parents=True)
            np.save(tmp / "features.npy", features, allow_pickle=False)
            np.save(tmp / "keys.npy", keys, allow_pickle=False)
            os.rename(tmp, folder / name)
        except OSError as exc:
            warnings.warn(f"could not write features to the cache: {exc}", CacheWarning, stacklevel=3)
            shutil.rmtree(tmp, ignore_errors=True)


def state_for_cache(module: torch.nn.Module, frozen: bool) -> dict[str, torch.Tensor]:
    """The weights worth caching: all, or all but the (unchanged) frozen encoder."""
    state = module.state_dict()
    if frozen:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    return state
