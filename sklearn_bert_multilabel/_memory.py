"""The ``memory`` cache: trained weights, predicted logits and frozen-encoder features.

Layout under ``<location>/sklearn_bert_multilabel/``::

    fits/<key>/weights.safetensors   trained weights (head only when the encoder is frozen)
    fits/<key>/meta.json             history, pos_weight, label count
    fits/<key>/valid.npz             validation logits and labels (for threshold="auto")
    logits/<key>/chunk-<rows>-*/     logits of one fitted model, per text, in chunks as below
    features/<key>/chunk-<rows>-*/   pooled features of a frozen encoder: keys.npy (text
                                     hashes, sorted) and features.npy (rows, same order)

Every entry is written to a temporary name and renamed into place, so
processes sharing a cache (``GridSearchCV(n_jobs=...)``) never see a partial
entry. Unreadable entries are ignored with a :class:`CacheWarning`.

Each call that computes features (or logits) writes one chunk, so a model that keeps
predicting new texts (one call per text, say) would leave ever more chunks
for every look-up to open. Chunks of similar size are therefore merged, as
a log-structured store does: once a size class holds :data:`MERGE_FAN_IN`
chunks, they become one chunk (of the next class, unless they stored the
same texts), so a folder keeps fewer than MERGE_FAN_IN chunks per class,
that is per eightfold growth of its rows, and a row is rewritten once per
class it climbs. The chunks a process has opened stay mapped for its later
look-ups while their files are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import threading
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._pretrained import file_stamps
from ._validation import caller_stacklevel

logger = logging.getLogger(__name__)


#: A size class of feature chunks (rows from ``MERGE_FAN_IN**c`` to ``MERGE_FAN_IN**(c + 1) - 1``)
#: that holds this many chunks has them merged into one.
MERGE_FAN_IN = 8

#: At most this many merges follow one saved chunk (a merge can fill the next class).
MAX_MERGES_PER_SAVE = 16

#: Rows copied at once when chunks are merged: the merge's memory stays bounded.
MERGE_BLOCK_ROWS = 1 << 13

#: At most this many memory-mapped chunks are kept for later look-ups in this process.
MAPPED_CHUNKS = 64


class CacheWarning(UserWarning):
    """A cache entry could not be read or written; the work is done again."""


def resolve_location(memory: object) -> Path | None:
    """The cache folder for ``memory``: None, a path, or a ``joblib.Memory``.

    A leading ``~`` is the user's home folder, as for every other path this
    package takes (``checkpoint_dir``, ``save``, ``model_name``), rather than
    a folder named ``~`` in the working directory.
    """
    if memory is None:
        return None
    location = getattr(memory, "location", memory)
    if location is None:
        return None
    return Path(os.fspath(location)).expanduser() / "sklearn_bert_multilabel"


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
    the folder misses it too, which only costs recomputation. The hash of the
    last few folders is remembered with their stamps, which are read every
    time: the config is read and hashed again only when a stamp changed.
    """
    if not os.path.isdir(path):
        return path
    stamps = tuple(file_stamps(path))
    known = _FINGERPRINTS.get(path)
    if known is not None and known[0] == stamps:
        return known[1]
    config = Path(path, "config.json")
    fingerprint = stable_hash(list(stamps), config.read_bytes() if config.is_file() else b"")
    if len(_FINGERPRINTS) >= 8:
        _FINGERPRINTS.clear()
    _FINGERPRINTS[path] = (stamps, fingerprint)
    return fingerprint


#: folder -> (its file stamps, its fingerprint), for :func:`model_fingerprint`.
_FINGERPRINTS: dict[str, tuple[tuple, str]] = {}


def _warn(what: str, where: Path, exc: BaseException) -> None:
    warnings.warn(
        f"ignoring the unreadable cache entry {where} ({what}: {type(exc).__name__}: {exc}); "
        "it is computed again.",
        CacheWarning,
        stacklevel=caller_stacklevel(),
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


class FeatureStore:
    """Cached rows of one encoder setting (features) or one model (logits), looked up by text key.

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


def _size_class(rows: int) -> int:
    """The size class of a chunk of ``rows`` rows: how many times MERGE_FAN_IN fits in it."""
    level = 0
    while rows >= MERGE_FAN_IN:
        rows //= MERGE_FAN_IN
        level += 1
    return level


def _chunk_rows(chunk: Path) -> int:
    """Rows of a chunk: from its name (``chunk-<rows>-<id>``), else from its keys' header."""
    parts = chunk.name.split("-")
    if len(parts) == 3 and parts[1].isdigit():
        return int(parts[1])
    if chunk.is_dir():  # named by an earlier version: the header alone is read
        return len(np.load(chunk / "keys.npy", mmap_mode="r", allow_pickle=False))
    with np.load(chunk, allow_pickle=False) as data:
        return len(data["keys"])


def _chunk_stamp(chunk: Path) -> tuple:
    """Identity, size and modification time of a chunk's files: unchanged while the chunk is."""
    files = (chunk / "keys.npy", chunk / "features.npy") if chunk.is_dir() else (chunk,)
    return tuple((info.st_ino, info.st_size, info.st_mtime_ns) for info in map(os.stat, files))


class _MappedChunks:
    """Feature chunks this process has mapped, reused by later look-ups while their files are unchanged.

    A look-up otherwise opens and maps every chunk of a folder again (about
    0.1 ms a chunk). Chunks are never rewritten in place, so a changed stamp
    means a damaged or replaced file, which is read again. Only mapped
    chunks are kept (those read whole would hold their rows in memory), at
    most :data:`MAPPED_CHUNKS`, the least recently used dropped first.
    """

    def __init__(self, size: int):
        self._size = size
        self._lock = threading.Lock()
        self._chunks: OrderedDict[str, tuple[tuple, tuple[np.ndarray, np.ndarray]]] = OrderedDict()

    def read(self, chunk: Path) -> tuple[np.ndarray, np.ndarray]:
        stamp = _chunk_stamp(chunk)
        name = str(chunk)
        with self._lock:
            known = self._chunks.get(name)
            if known is not None and known[0] == stamp:
                self._chunks.move_to_end(name)
                return known[1]
            self._chunks.pop(name, None)
        arrays = _read_chunk(chunk)
        if all(isinstance(a, np.memmap) for a in arrays):
            with self._lock:
                self._chunks[name] = (stamp, arrays)
                while len(self._chunks) > self._size:
                    self._chunks.popitem(last=False)
        return arrays

    def forget(self, chunk: Path) -> None:
        with self._lock:
            self._chunks.pop(str(chunk), None)

    def keep_only(self, folder: Path, chunks: Sequence[Path]) -> None:
        """Drop the mappings of ``folder``'s chunks that are no longer in it, and of folders
        that are gone (a cache in a temporary folder, say), whose files they would keep on disk."""
        folder_name, listed = str(folder), {str(chunk) for chunk in chunks}
        with self._lock:
            parents = {os.path.dirname(name) for name in self._chunks}
            gone = {parent for parent in parents if parent != folder_name and not os.path.isdir(parent)}
            for name in list(self._chunks):
                parent = os.path.dirname(name)
                if parent in gone or (parent == folder_name and name not in listed):
                    del self._chunks[name]


_MAPPED = _MappedChunks(MAPPED_CHUNKS)


def _publish_chunk(folder: Path, rows: int, write: Callable[[Path], None]) -> None:
    """Write a chunk of ``rows`` rows into a temporary folder, then rename it into place.

    Raises what a failed write raised, after removing what it wrote.
    """
    name = f"chunk-{rows}-{uuid.uuid4().hex}"
    tmp = folder / f".{name}.tmp"
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        os.rename(tmp, folder / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _retire(chunk: Path) -> bool:
    """Take a merged chunk out of every listing, then delete it. False where it has to stay."""
    _MAPPED.forget(chunk)
    trash = chunk.with_name(f".merged-{uuid.uuid4().hex}")
    try:
        os.rename(chunk, trash)
    except FileNotFoundError:
        return True  # another process merged it too
    except OSError:  # e.g. still mapped where that forbids renaming: merged again later
        return False
    _remove_chunk(trash)
    return True


def _remove_chunk(chunk: Path) -> None:
    """Delete a chunk, a folder or (as earlier versions wrote it) one file, as far as possible."""
    if chunk.is_dir():
        shutil.rmtree(chunk, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            chunk.unlink()


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
            warnings.warn(
                f"could not write the cache entry {final}: {exc}",
                CacheWarning,
                stacklevel=caller_stacklevel(),
            )
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------- per-text rows
    def rows(
        self, kind: str, key: str, texts: list[str], width: int, compute: Callable[[list[str]], np.ndarray]
    ) -> np.ndarray:
        """One row of ``width`` float32 values per text: read from the store ``kind/key`` where
        an earlier call left it, the others from ``compute`` (given those texts), then stored.

        ``kind`` is ``"features"`` (pooled features of a frozen encoder) or ``"logits"`` (of
        one fitted model and reading of the texts).
        """
        keys = text_keys(texts)
        out = np.empty((len(texts), width), dtype=np.float32)
        todo = np.flatnonzero(~self.load_rows(kind, key, width).fill(keys, out))
        if len(todo):
            computed = compute([texts[i] for i in todo])
            out[todo] = computed
            self.save_rows(kind, key, keys[todo], computed)
        logger.debug("%s: %d cached, %d computed", kind, len(texts) - len(todo), len(todo))
        return out

    def load_rows(self, kind: str, key: str, width: int) -> FeatureStore:
        """All cached chunks of the store ``kind/key`` (``width`` values a row), mapped."""
        folder = self.root / kind / key
        if not folder.is_dir():
            return FeatureStore([])
        listed = sorted(folder.glob("chunk-*"))
        _MAPPED.keep_only(folder, listed)
        chunks = []
        for chunk in listed:
            try:
                keys, features = _MAPPED.read(chunk)
                _check_chunk(keys, features, width)
            except Exception as exc:  # noqa: BLE001
                _MAPPED.forget(chunk)
                if not chunk.exists():
                    continue  # removed by another process since the listing
                _warn(kind, chunk, exc)
                _remove_chunk(chunk)
                continue
            if len(keys):
                chunks.append((keys, features))
        return FeatureStore(chunks)

    def save_rows(self, kind: str, key: str, keys: np.ndarray, features: np.ndarray) -> None:
        """Store rows as a new chunk of ``kind/key`` (a folder of sorted keys and rows, renamed
        into place), then merge the chunks of any size class that it fills."""
        if len(keys) == 0:
            return
        keys, features = _sorted_chunk(keys, np.ascontiguousarray(features, dtype=np.float32))
        folder = self.root / kind / key

        def write(tmp: Path) -> None:
            np.save(tmp / "features.npy", features, allow_pickle=False)
            np.save(tmp / "keys.npy", keys, allow_pickle=False)

        try:
            _publish_chunk(folder, len(keys), write)
        except OSError as exc:
            warnings.warn(
                f"could not write {kind} to the cache: {exc}", CacheWarning, stacklevel=caller_stacklevel()
            )
            return
        for _ in range(MAX_MERGES_PER_SAVE):
            if not _merge_a_full_class(folder, features.shape[1]):
                break


def _merge_a_full_class(folder: Path, width: int) -> bool:
    """Merge the chunks of the smallest size class holding MERGE_FAN_IN of them into one chunk.

    Returns whether it merged. Chunks that cannot be read are left to the
    look-ups, which warn about them and remove them; a chunk removed
    meanwhile (another process merging the same class) stops the merge,
    and two processes that both merge a class only store its rows twice.
    """
    classes: dict[int, list[Path]] = {}
    for chunk in sorted(folder.glob("chunk-*")):
        try:
            rows = _chunk_rows(chunk)
        except Exception:  # noqa: BLE001 - damaged or removed: not this function's business
            continue
        classes.setdefault(_size_class(rows), []).append(chunk)
    full = [chunks for _, chunks in sorted(classes.items()) if len(chunks) >= MERGE_FAN_IN]
    if not full:
        return False
    chunks = full[0]
    try:
        parts = [_read_chunk(chunk) for chunk in chunks]
        for part_keys, part_rows in parts:
            _check_chunk(part_keys, part_rows, width)
    except Exception:  # noqa: BLE001
        return False
    # Each text once, from the first chunk (in name order) that has it, as a look-up reads it.
    keys, first = np.unique(np.concatenate([part_keys for part_keys, _ in parts]), return_index=True)
    starts = np.cumsum([0] + [len(part_keys) for part_keys, _ in parts])
    source = np.searchsorted(starts, first, side="right") - 1

    def write(tmp: Path) -> None:
        np.save(tmp / "keys.npy", keys, allow_pickle=False)
        out = np.lib.format.open_memmap(
            tmp / "features.npy", mode="w+", dtype=np.float32, shape=(len(keys), width)
        )
        for i, (_, part_rows) in enumerate(parts):
            targets = np.flatnonzero(source == i)
            at = first[targets] - starts[i]  # ascending, as each chunk's keys are sorted
            for block in range(0, len(at), MERGE_BLOCK_ROWS):
                cut = slice(block, block + MERGE_BLOCK_ROWS)
                out[targets[cut]] = part_rows[at[cut]]
        out.flush()
        del out  # unmapped before the folder is renamed

    try:
        _publish_chunk(folder, len(keys), write)
    except Exception as exc:  # noqa: BLE001 - a merge only tidies up: it never fails a call
        logger.debug("could not merge %d feature chunks in %s: %s", len(chunks), folder, exc)
        return False
    parts.clear()  # the merged chunks' mappings, before they are removed
    logger.debug("merged %d feature chunks (%d rows) in %s", len(chunks), len(keys), folder)
    return all([_retire(chunk) for chunk in chunks])


def state_for_cache(module: torch.nn.Module, frozen: bool) -> dict[str, torch.Tensor]:
    """The weights worth caching: all, or all but the (unchanged) frozen encoder.

    For a frozen encoder the other submodules' states are gathered directly,
    under the keys ``module.state_dict()`` gives them, without walking the
    encoder's layers only to drop them.
    """
    encoder = getattr(module, "encoder", None)
    own = itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False))
    if not frozen or not isinstance(encoder, torch.nn.Module) or next(own, None) is not None:
        state = module.state_dict()
        return {k: v for k, v in state.items() if not k.startswith("encoder.")} if frozen else state
    state = {}
    for name, child in module.named_children():
        if name != "encoder":
            state.update(child.state_dict(prefix=f"{name}."))
    return state
