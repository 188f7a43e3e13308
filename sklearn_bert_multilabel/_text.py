"""Text encoding and batching: tokenise once, pad each batch to its own longest text."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from skorch.dataset import Dataset as SkorchDataset
from torch.utils.data import Sampler

#: How many texts are tokenised at a time when predicting, so that memory
#: stays flat however many texts are given.
PREDICT_CHUNK = 8192
#: Training batches are drawn from windows of this many batches, sorted by
#: length inside the window: similar lengths share a batch, and the order of
#: the batches stays random.
BUCKET_WINDOW = 50


def _configure_tokenizers_before_fork() -> None:
    """Settle ``TOKENIZERS_PARALLELISM`` before a fork, unless the user already has.

    A fast tokenizer that has tokenised in parallel warns in every forked
    child (``GridSearchCV(n_jobs=...)`` with a fork start method, DataLoader
    workers) unless the variable is set. Setting it to ``false`` at fork time
    keeps the parent's earlier parallel tokenisation and silences the warning.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_configure_tokenizers_before_fork)


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> list[np.ndarray]:
    """Token ids of each text, truncated to ``max_length``, without padding."""
    if len(texts) == 0:
        return []
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return [np.asarray(ids, dtype=np.int64) for ids in enc["input_ids"]]


class _LabelledDataset(SkorchDataset):
    """A dataset that skorch's scoring callbacks read as they read their own.

    Without their cache (``EpochScoring(..., use_caching=False)``) they score
    ``net.predict(dataset.X)`` against ``dataset.y``, and only for a skorch
    dataset: here ``X`` is the dataset itself, ``y`` its label rows.
    skorch's ``__init__`` is not used; each subclass has its own.
    """

    @property
    def X(self):  # noqa: N802 - skorch's name
        return self

    @property
    def y(self) -> np.ndarray:
        return self.Y


class TokenDataset(_LabelledDataset):
    """Pre-tokenised texts and their label rows, for training and validation.

    With ``weights`` (one per text), an item is ``(ids, y, weight)``, and
    :class:`PadCollator` puts the batch's weights in its inputs under
    ``"sample_weight"``.
    """

    def __init__(self, ids: list[np.ndarray], Y: np.ndarray, weights: np.ndarray | None = None):
        self.ids = ids
        self.Y = Y
        self.weights = weights
        self.lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=len(ids))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        if self.weights is not None:
            return self.ids[i], self.Y[i], self.weights[i]
        return self.ids[i], self.Y[i]


class FeatureDataset(_LabelledDataset):
    """Pooled feature vectors (a frozen encoder's output), their label rows and optional
    weights (then in the inputs under ``"sample_weight"``)."""

    def __init__(self, features: np.ndarray, Y: np.ndarray, weights: np.ndarray | None = None):
        self.features = features
        self.Y = Y
        self.weights = weights

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int):
        inputs = {"features": self.features[i]}
        if self.weights is not None:
            inputs["sample_weight"] = self.weights[i]
        return inputs, self.Y[i]


def _base_seed(seed: int | None) -> int:
    return int(np.random.SeedSequence().entropy % 2**63) if seed is None else int(seed)


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The shuffling stream of one epoch: a function of (seed, epoch) only, so training
    resumed at epoch ``k`` sees the order an uninterrupted run would have."""
    return np.random.default_rng([seed, epoch])


class FeatureBatches:
    """Batches of a :class:`FeatureDataset` by tensor slicing (no per-row collation).

    Training on cached features is a few microseconds of arithmetic per
    batch, so the usual ``DataLoader`` + ``default_collate`` would dominate.
    """

    def __init__(
        self,
        dataset: FeatureDataset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int | None = None,
        drop_last: bool = False,
    ):
        self.features = torch.from_numpy(np.ascontiguousarray(dataset.features, dtype=np.float32))
        self.Y = torch.from_numpy(np.ascontiguousarray(dataset.Y, dtype=np.float32))
        weights = getattr(dataset, "weights", None)
        self.weights = None if weights is None else torch.from_numpy(np.asarray(weights, dtype=np.float32))
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = _base_seed(seed)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.features)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_sizes(self) -> list[int]:
        """The number of rows of each batch an epoch yields, in order."""
        n, step = len(self.features), self.batch_size
        return [min(step, n - start) for start in range(0, len(self) * step, step)]

    def __iter__(self):
        n = len(self.features)
        features, Y, weights = self.features, self.Y, self.weights
        if self.shuffle:
            # One gather per epoch; the batches are then views of it.
            order = torch.from_numpy(_epoch_rng(self.seed, self.epoch).permutation(n))
            features, Y = features.index_select(0, order), Y.index_select(0, order)
            if weights is not None:
                weights = weights.index_select(0, order)
            self.epoch += 1
        # One split per tensor: the batches' views in one call each, not slicing calls a batch.
        count, step = len(self), self.batch_size
        tensors = (features, Y) if weights is None else (features, Y, weights)
        for x, y, *w in zip(*(t.split(step)[:count] for t in tensors), strict=True):
            yield ({"features": x, "sample_weight": w[0]} if w else {"features": x}), y


def _weights_tensor(weights) -> torch.Tensor:
    return torch.tensor(np.asarray(weights, dtype=np.float32))


class PadCollator:
    """Stack a list of ``(ids, y)`` into padded tensors, padded to the longest.

    Items ``(ids, y, weight)`` add the weights to the inputs as ``"sample_weight"``.
    """

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, batch):
        ids, ys, *weights = zip(*batch, strict=True)
        width = max(len(t) for t in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, t in enumerate(ids):
            input_ids[row, : len(t)] = torch.from_numpy(t)
            attention_mask[row, : len(t)] = 1
        y = torch.from_numpy(np.stack(ys).astype(np.float32, copy=False))
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if weights:
            inputs["sample_weight"] = _weights_tensor(weights[0])
        return inputs, y


class _RecordingSampler(Sampler):
    """A batch sampler whose ``yielded`` lists the batches of its last pass, in order, so that
    outputs computed batch by batch can be put back in the dataset's order. Subclasses plan
    the batches in ``_batches()``."""

    def __iter__(self) -> Iterator[list[int]]:
        self.yielded: list[list[int]] = []
        for batch in self._batches():
            self.yielded.append(batch)
            yield batch


class LengthBucketBatchSampler(_RecordingSampler):
    """Batches of indices with similar token lengths.

    With ``shuffle=True`` (training), the indices are shuffled, cut into
    windows of ``BUCKET_WINDOW`` batches, sorted by length inside each window,
    cut into batches, and the batches are shuffled: each epoch sees a new
    random order while padding stays small. With ``shuffle=False``, the
    indices are sorted by length once.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int | None = None,
        drop_last: bool = False,
    ):
        self.lengths = np.asarray(lengths)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = _base_seed(seed)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self) -> Iterator[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            batches = [order[i : i + bs] for i in range(0, n, bs)]
        else:
            rng = _epoch_rng(self.seed, self.epoch)
            self.epoch += 1
            perm = rng.permutation(n)
            window = bs * BUCKET_WINDOW
            batches = []
            for start in range(0, n, window):
                chunk = perm[start : start + window]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
            batches = [batches[i] for i in rng.permutation(len(batches))]
        for batch in batches:
            if self.drop_last and len(batch) < bs:
                continue
            yield batch.tolist()


#: The shrinking last batches of a multi-worker prediction call hold at least this many rows.
MIN_TAIL_ROWS = 16


def iter_id_batches(
    ids: Sequence[np.ndarray], batch_size: int, pad_id: int, workers: int = 1
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Yield ``(row_indices, padded_inputs)`` over ``ids`` sorted by length.

    Every row appears exactly once; the caller writes each batch's outputs at
    ``row_indices``, which restores the original order. For ``workers``
    sharing the batches, each batch holds at most ``1 / (2 * workers)`` of
    the rows still to come (but at least :data:`MIN_TAIL_ROWS`), so the last,
    longest texts come in small batches and the workers finish together
    rather than one of them running a full batch alone at the end.
    """
    collate = PadCollator(pad_id)
    empty = np.zeros(0, dtype=np.float32)
    lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(lengths, kind="stable")
    start, n = 0, len(order)
    while start < n:
        size = batch_size
        if workers > 1:
            size = min(batch_size, max(MIN_TAIL_ROWS, -(-(n - start) // (2 * workers))))
        rows = order[start : start + size]
        start += size
        inputs, _ = collate([(ids[r], empty) for r in rows])
        yield rows, inputs


def iter_text_batches(
    tokenizer, texts: Sequence[str], max_length: int, batch_size: int, pad_id: int, workers: int = 1
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Like :func:`iter_id_batches`, tokenising ``PREDICT_CHUNK`` texts at a time.

    Only one chunk of token ids is held at once, so memory stays flat
    however many texts are given.
    """
    for start in range(0, len(texts), PREDICT_CHUNK):
        ids = tokenize(tokenizer, texts[start : start + PREDICT_CHUNK], max_length)
        for rows, inputs in iter_id_batches(ids, batch_size, pad_id, workers):
            yield rows + start, inputs


# ------------------------------------------------------------------ long texts
class LongTextWarning(UserWarning):
    """Some texts had more windows than ``max_chunks``; only their first windows were read."""


def window_text_ids(
    tokenizer, texts: Sequence[str], max_length: int, stride: int, max_chunks: int | None
) -> tuple[list[list[np.ndarray]], int]:
    """Cut each text's tokens into windows of at most ``max_length`` tokens.

    Neighbouring windows share ``stride`` tokens. Each window gets the
    tokenizer's special tokens (``[CLS] ... [SEP]`` for BERT). Returns the
    windows of each text (an empty text has one window of special tokens
    only) and how many texts lost windows to ``max_chunks``.
    """
    if len(texts) == 0:
        return [], 0
    # The fast tokenizer's own overflow windows: special tokens in every window,
    # neighbours sharing ``stride`` tokens, the mapping back to each text.
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    if "overflow_to_sample_mapping" not in enc:
        raise ValueError(
            f"long_text='chunk' needs a fast (Rust) tokenizer, which reports the windows of each text; "
            f"{type(tokenizer).__name__} is not one. Use a model that ships tokenizer.json, or "
            "long_text='truncate'."
        )
    windows: list[list[np.ndarray]] = [[] for _ in texts]
    for ids, doc in zip(enc["input_ids"], enc["overflow_to_sample_mapping"], strict=True):
        windows[doc].append(np.asarray(ids, dtype=np.int64))
    cut = 0
    if max_chunks is not None:
        for doc, doc_windows in enumerate(windows):
            if len(doc_windows) > max_chunks:
                windows[doc] = doc_windows[:max_chunks]
                cut += 1
    return windows, cut


class WindowDataset(_LabelledDataset):
    """The windows of each text and their label rows, for training and validation."""

    def __init__(self, windows: list[list[np.ndarray]], Y: np.ndarray, weights: np.ndarray | None = None):
        self.windows = windows
        self.Y = Y
        self.weights = weights  # one per text, as in TokenDataset
        self.n_windows = np.fromiter((len(w) for w in windows), dtype=np.int64, count=len(windows))
        # Longest window of each text: what the batch is padded to.
        self.lengths = np.fromiter(
            (max(len(x) for x in w) for w in windows), dtype=np.int64, count=len(windows)
        )

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int):
        if self.weights is not None:
            return self.windows[i], self.Y[i], self.weights[i]
        return self.windows[i], self.Y[i]


class WindowCollator:
    """Stack the windows of a list of ``(windows, y)`` into one padded batch with ``doc_index``.

    Items ``(windows, y, weight)`` add each text's weight as ``"sample_weight"``.
    """

    def __init__(self, pad_id: int):
        self.pad = PadCollator(pad_id)

    def __call__(self, batch):
        empty = np.zeros(0, dtype=np.float32)
        rows, doc_index = [], []
        for doc, item in enumerate(batch):
            rows += [(w, empty) for w in item[0]]
            doc_index += [doc] * len(item[0])
        inputs, _ = self.pad(rows)
        inputs["doc_index"] = torch.tensor(doc_index, dtype=torch.long)
        y = torch.from_numpy(np.stack([item[1] for item in batch]).astype(np.float32, copy=False))
        if len(batch[0]) == 3:
            inputs["sample_weight"] = _weights_tensor([item[2] for item in batch])
        return inputs, y


class WindowBudgetBatchSampler(_RecordingSampler):
    """Batches of texts holding at most ``budget`` windows in all (at least one text each).

    Texts of similar length share a batch as in :class:`LengthBucketBatchSampler`;
    with ``shuffle=True`` the order is drawn per epoch from ``(seed, epoch)``.
    """

    def __init__(self, n_windows, lengths, budget: int, *, shuffle: bool, seed: int | None = None):
        self.n_windows = np.asarray(n_windows)
        self.lengths = np.asarray(lengths)
        self.budget = int(budget)
        self.batch_size = self.budget  # what samplers are expected to expose (Accelerate reads it)
        self.drop_last = False
        self.shuffle = shuffle
        self.seed = _base_seed(seed)
        self.epoch = 0
        self._plan_len = len(self._plan(np.argsort(self.lengths, kind="stable")))

    def _plan(self, order: np.ndarray) -> list[list[int]]:
        batches, current, used = [], [], 0
        for i in order.tolist():
            k = int(self.n_windows[i])
            if current and used + k > self.budget:
                batches.append(current)
                current, used = [], 0
            current.append(i)
            used += k
        if current:
            batches.append(current)
        return batches

    def __len__(self) -> int:
        return self._plan_len

    def _batches(self) -> Iterator[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            yield from self._plan(np.argsort(self.lengths, kind="stable"))
            return
        rng = _epoch_rng(self.seed, self.epoch)
        self.epoch += 1
        perm = rng.permutation(n)
        window = max(1, self.budget) * BUCKET_WINDOW
        batches: list[list[int]] = []
        for start in range(0, n, window):
            chunk = perm[start : start + window]
            batches += self._plan(chunk[np.argsort(self.lengths[chunk], kind="stable")])
        for i in rng.permutation(len(batches)):
            yield batches[i]


def iter_window_batches(
    windows: list[list[np.ndarray]], batch_size: int, pad_id: int, workers: int = 1
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Like :func:`iter_id_batches` over all windows of all texts (flattened, length-sorted).

    Yields the flat window numbers of each batch; windows of one text may
    land in different batches.
    """
    flat = [w for doc in windows for w in doc]
    yield from iter_id_batches(flat, batch_size, pad_id, workers)
