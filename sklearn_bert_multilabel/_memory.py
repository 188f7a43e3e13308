"""The ``memory`` cache: trained weights, predicted logits and frozen-encoder features.

Layout under ``<location>/sklearn_bert_multilabel/``::

    fits/<key>/weights.safetensors   trained weights (head only when the encoder is frozen)
    fits/<key>/meta.json             history, pos_weight, label count
    fits/<key>/valid.npz             validation logits and labels (for threshold="auto")
    logits/<key>.npy                 logits of one fitted model on one set of texts
    features/<key>/chunk-*.npz       pooled features of a frozen encoder, by text hash

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
    """Feature rows by text key, looked up for many texts at once.

    The rows stay in the arrays they were read into (one per chunk file);
    the keys are sorted once, with one row per key (the first one read, when
    processes that shared a cache stored the same text twice), so a lookup
    is a binary search in NumPy rather than a Python loop over the texts.
    """

    def __init__(self, keys: list[np.ndarray], features: list[np.ndarray]):
        self.features = features
        all_keys = np.concatenate(keys) if keys else np.empty(0, dtype="S16")
        self.keys, first = np.unique(all_keys, return_index=True)
        chunk = np.repeat(np.arange(len(keys)), [len(k) for k in keys])
        row = np.concatenate([np.arange(len(k)) for k in keys]) if keys else np.empty(0, dtype=np.intp)
        self._chunk, self._row = chunk[first], row[first]

    def __len__(self) -> int:
        return len(self.keys)

    def fill(self, keys: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy the stored row of each of ``keys`` into ``out``; return where one was found."""
        if len(self.keys) == 0:
            return np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = self.keys[at] == keys
        at = at[found]
        targets = np.flatnonzero(found)
        chunks = self._chunk[at]
        for c in np.unique(chunks):
            mine = chunks == c
            out[targets[mine]] = self.features[c][self._row[at[mine]]]
        return found


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
        """All cached feature rows of one encoder setting (``width`` values a row)."""
        keys, features = [], []
        folder = self.root / "features" / key
        if not folder.is_dir():
            return FeatureStore([], [])
        for chunk in sorted(folder.glob("chunk-*.npz")):
            try:
                with np.load(chunk, allow_pickle=False) as data:
                    chunk_keys, chunk_features = data["keys"], data["features"]
                if chunk_keys.dtype != np.dtype("S16") or chunk_features.shape != (len(chunk_keys), width):
                    raise ValueError(
                        f"{len(chunk_keys)} keys of type {chunk_keys.dtype}, features of shape "
                        f"{chunk_features.shape}; expected S16 keys and {width} values a row"
                    )
            except Exception as exc:  # noqa: BLE001
                _warn("features", chunk, exc)
                chunk.unlink(missing_ok=True)
                continue
            keys.append(chunk_keys)
            features.append(chunk_features)
        return FeatureStore(keys, features)

    def save_features(self, key: str, keys: np.ndarray, features: np.ndarray) -> None:
        if len(keys) == 0:
            return
        final = self.root / "features" / key / f"chunk-{uuid.uuid4().hex}.npz"

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, keys=keys, features=features)

        try:
            _write_file(final, write)
        except OSError as exc:
            warnings.warn(f"could not write features to the cache: {exc}", CacheWarning, stacklevel=3)


def state_for_cache(module: torch.nn.Module, frozen: bool) -> dict[str, torch.Tensor]:
    """The weights worth caching: all, or all but the (unchanged) frozen encoder."""
    state = module.state_dict()
    if frozen:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    return state
