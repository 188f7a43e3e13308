"""Tokenising once, length-aware batching and order restoration."""

from __future__ import annotations

import numpy as np
import pytest

from sklearn_bert_multilabel._text import (
    MIN_TAIL_ROWS,
    FeatureBatches,
    FeatureDataset,
    LengthBucketBatchSampler,
    PadCollator,
    WindowCollator,
    WindowDataset,
    iter_id_batches,
    iter_text_batches,
)


def test_training_sampler_covers_every_index_once_and_reshuffles():
    lengths = np.random.default_rng(0).integers(1, 60, size=1000)
    sampler = LengthBucketBatchSampler(lengths, 32, shuffle=True, seed=0)
    first = [b for b in sampler]
    second = [b for b in sampler]
    assert len(first) == len(sampler) == 32
    for epoch in (first, second):
        flat = np.concatenate(epoch)
        assert sorted(flat.tolist()) == list(range(1000))
    assert [b[0] for b in first] != [b[0] for b in second]  # a new order each epoch


def test_training_batches_group_similar_lengths():
    lengths = np.random.default_rng(1).integers(1, 100, size=3200)
    sampler = LengthBucketBatchSampler(lengths, 32, shuffle=True, seed=0)
    padded = sum(len(b) * lengths[b].max() for b in sampler)
    random_batches = np.random.default_rng(2).permutation(3200).reshape(-1, 32)
    padded_random = sum(len(b) * lengths[b].max() for b in random_batches)
    assert padded < 0.7 * padded_random


def test_feature_batches_cover_every_row_once_per_epoch_in_a_new_order():
    features = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    Y = (np.arange(50)[:, None] % np.array([2, 3]) == 0).astype(np.float32)
    batches = FeatureBatches(FeatureDataset(features, Y), 16, shuffle=True, seed=0)
    epochs = []
    for _ in range(2):
        rows = [(x["features"].numpy(), y.numpy()) for x, y in batches]
        assert [len(x) for x, _ in rows] == [16, 16, 16, 2] and len(batches) == 4
        X_epoch, Y_epoch = np.concatenate([x for x, _ in rows]), np.concatenate([y for _, y in rows])
        order = (X_epoch[:, 0] // 3).astype(int)
        assert sorted(order.tolist()) == list(range(50))
        np.testing.assert_array_equal(X_epoch, features[order])  # rows stay with their labels
        np.testing.assert_array_equal(Y_epoch, Y[order])
        epochs.append(order)
    assert not np.array_equal(epochs[0], epochs[1])
    fixed = FeatureBatches(FeatureDataset(features, Y), 16, shuffle=False, drop_last=True)
    assert np.concatenate([x["features"].numpy() for x, _ in fixed]).shape == (48, 3)


def test_same_seed_same_batches():
    lengths = np.arange(100) % 17
    a = list(LengthBucketBatchSampler(lengths, 8, shuffle=True, seed=3))
    b = list(LengthBucketBatchSampler(lengths, 8, shuffle=True, seed=3))
    assert a == b


def test_collator_pads_to_longest_in_batch():
    inputs, y = PadCollator(pad_id=7)([(np.array([1, 2, 3]), np.ones(2)), (np.array([4]), np.zeros(2))])
    assert inputs["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert y.shape == (2, 2)


def test_weights_travel_with_their_rows():
    features = np.arange(20 * 2, dtype=np.float32).reshape(20, 2)
    Y = np.zeros((20, 1), dtype=np.float32)
    weights = np.arange(20, dtype=np.float32) / 10
    for x, _ in FeatureBatches(FeatureDataset(features, Y, weights), 8, shuffle=True, seed=0):
        np.testing.assert_array_equal(x["sample_weight"].numpy(), x["features"][:, 0].numpy() / 20)
    assert "sample_weight" not in next(iter(FeatureBatches(FeatureDataset(features, Y), 8, shuffle=True)))[0]

    inputs, _ = PadCollator(pad_id=0)(
        [(np.array([1, 2]), np.ones(1), 0.5), (np.array([3]), np.zeros(1), 2.0)]
    )
    assert inputs["sample_weight"].tolist() == [0.5, 2.0]
    dataset = WindowDataset(
        [[np.array([1, 2]), np.array([3])], [np.array([4])]], np.ones((2, 1)), np.array([3.0, 1.0])
    )
    inputs, y = WindowCollator(pad_id=0)([dataset[0], dataset[1]])
    assert inputs["sample_weight"].tolist() == [3.0, 1.0] and inputs["doc_index"].tolist() == [0, 0, 1]
    assert y.shape == (2, 1)


def test_prediction_batches_cover_all_rows_in_length_order():
    ids = [np.arange(n) for n in (5, 1, 9, 3, 7)]
    batches = list(iter_id_batches(ids, 2, 0))
    rows = np.concatenate([r for r, _ in batches])
    assert sorted(rows.tolist()) == [0, 1, 2, 3, 4]
    assert [inp["input_ids"].shape[1] for _, inp in batches] == [3, 7, 9]


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 1000])
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_prediction_batches_shrink_at_the_end_for_several_workers(n, workers):
    lengths = np.random.default_rng(n).integers(1, 50, size=n)
    ids = [np.zeros(k, dtype=np.int64) for k in lengths]
    batches = list(iter_id_batches(ids, 128, 0, workers))
    rows = np.concatenate([r for r, _ in batches])
    assert sorted(rows.tolist()) == list(range(n))  # every row exactly once
    assert np.all(np.diff(lengths[rows]) >= 0)  # still in length order
    sizes = [len(r) for r, _ in batches]
    assert max(sizes) <= 128
    if workers == 1:
        assert sizes[:-1] == [128] * (len(sizes) - 1)
    else:
        remaining = n - np.cumsum([0, *sizes[:-1]])
        for size, left in zip(sizes, remaining, strict=True):
            assert size == min(128, left, max(MIN_TAIL_ROWS, -(-left // (2 * workers))))
        assert sizes == sorted(sizes, reverse=True)  # the last, longest texts in the smallest batches


def test_text_batches_stream_in_chunks(monkeypatch, tiny_model_dir):
    from transformers import AutoTokenizer

    import sklearn_bert_multilabel._text as text

    monkeypatch.setattr(text, "PREDICT_CHUNK", 4)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["a game"] * 5 + ["the bank is up today"] * 5
    seen = []
    for rows, inputs in iter_text_batches(tok, texts, 32, 3, tok.pad_token_id):
        seen += rows.tolist()
        assert inputs["input_ids"].shape[0] <= 3
    assert sorted(seen) == list(range(10))


def test_no_tokenizer_parallelism_warning_after_fork(tiny_model_dir):
    import os
    import subprocess
    import sys

    script = f"""
import multiprocessing as mp
from sklearn_bert_multilabel._text import tokenize
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({tiny_model_dir!r})
tokenize(tok, ["a good game today"] * 2000, 32)   # parallel tokenisation in the parent
def child(_):
    return len(tokenize(tok, ["the bank"] * 100, 16))
with mp.get_context("fork").Pool(2) as pool:
    assert pool.map(child, range(2)) == [100, 100]
"""
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "huggingface/tokenizers" not in done.stderr


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_keeps_the_side_the_tokenizer_says(tiny_model_dir, side):
    from transformers import AutoTokenizer

    from sklearn_bert_multilabel._text import tokenize

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, truncation_side=side)
    (ids,) = tokenize(tokenizer, ["goal " + "the " * 20 + "bank"], max_length=6)
    words = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert len(words) == 6 and words[0] == "[CLS]" and words[-1] == "[SEP]"
    kept = ["goal", "the", "the", "the"] if side == "right" else ["the", "the", "the", "bank"]
    assert words[1:-1] == kept
