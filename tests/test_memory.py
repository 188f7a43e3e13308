"""The ``memory`` cache: what hits, what misses, and what survives corruption."""

from __future__ import annotations

import datetime
import pickle
import threading
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback, EarlyStopping, EpochScoring

import sklearn_bert_multilabel._net as net_module
from sklearn_bert_multilabel import BertMultiLabelClassifier, CacheWarning
from sklearn_bert_multilabel._model import MultiLabelTextModule


@pytest.fixture
def count_trainings(monkeypatch):
    calls = []
    original = net_module.MultiLabelNet.fit

    def counting(self, X, y=None, **kwargs):
        calls.append(len(X))
        return original(self, X, y, **kwargs)

    monkeypatch.setattr(net_module.MultiLabelNet, "fit", counting)
    return calls


@pytest.fixture
def count_encoder_texts(monkeypatch):
    """Number of texts the encoder has run on (training and prediction)."""
    seen = []
    original = MultiLabelTextModule.pool

    def counting(self, input_ids, attention_mask):
        seen.append(len(input_ids))
        return original(self, input_ids, attention_mask)

    monkeypatch.setattr(MultiLabelTextModule, "pool", counting)
    return seen


@pytest.fixture
def params(fast_params, tmp_path):
    return dict(fast_params, memory=str(tmp_path / "cache"))


def test_prediction_only_parameters_hit_the_cache(params, toy_data, count_trainings):
    X, Y = toy_data
    first = BertMultiLabelClassifier(**params).fit(X, Y)
    assert count_trainings == [len(X)]
    changes = ({"threshold": 0.3}, {"threshold_metric": "f2"}, {"min_labels": 1}, {"max_labels": 1})
    for change in (*changes, {"predict_batch_size": 7}, {"verbose": 0}):
        again = BertMultiLabelClassifier(**{**params, **change}).fit(X, Y)
        np.testing.assert_array_equal(again.predict_proba(X), first.predict_proba(X))
        assert again.cache_key_ == first.cache_key_
        assert len(again.history_) == len(first.history_)
    assert count_trainings == [len(X)]


@pytest.mark.parametrize(
    "change",
    [
        {"lr": 5e-4},
        {"hidden_layer_sizes": (8,)},
        {"dropout": 0.2},
        {"max_epochs": 3},
        {"random_state": 1},
        {"optimizer__eps": 1e-6},
        {"pos_weight": "balanced"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_training_parameters_miss_the_cache(change, params, toy_data, count_trainings):
    X, Y = toy_data
    BertMultiLabelClassifier(**params).fit(X, Y)
    BertMultiLabelClassifier(**{**params, **change}).fit(X, Y)
    assert len(count_trainings) == 2


def test_numpy_valued_parameters_hit_the_entry_of_their_python_values(params, toy_data, count_trainings):
    """A search over ``np.arange(1, 4)`` fits with ``np.int64(2)``: the same training as ``2``."""
    X, Y = toy_data
    first = BertMultiLabelClassifier(**params, hidden_layer_sizes=(8,)).fit(X, Y)
    numpy_valued = dict(params, max_epochs=np.int64(2), lr=np.float64(1e-3), random_state=np.int32(0))
    for sizes in ([np.int64(8)], np.array([8]), 8):  # each the same head, as in MLPClassifier
        again = BertMultiLabelClassifier(**numpy_valued, hidden_layer_sizes=sizes).fit(X, Y)
        assert again.cache_key_ == first.cache_key_
        np.testing.assert_array_equal(again.predict_proba(X), first.predict_proba(X))
    assert count_trainings == [len(X)]


def test_different_data_misses_the_cache(params, toy_data, count_trainings):
    X, Y = toy_data
    BertMultiLabelClassifier(**params).fit(X, Y)
    Y2 = Y.copy()
    Y2[0] = 1 - Y2[0]
    BertMultiLabelClassifier(**params).fit(X, Y2)
    BertMultiLabelClassifier(**params).fit(X[:-1], Y[:-1])
    BertMultiLabelClassifier(**params).fit([X[1], X[0], *X[2:]], Y)  # the same texts, two swapped
    BertMultiLabelClassifier(**params).fit([X[0] + X[1][:1], X[1][1:], *X[2:]], Y)  # a character moved
    assert len(count_trainings) == 5


def test_auto_thresholds_from_cached_validation_logits(params, toy_data, count_trainings):
    X, Y = toy_data
    p = dict(params, train_split=0.25, threshold="auto")
    a = BertMultiLabelClassifier(**p).fit(X, Y)
    b = BertMultiLabelClassifier(**dict(p, threshold_metric="f2")).fit(X, Y)
    c = BertMultiLabelClassifier(**dict(p, threshold_metric="f1")).fit(X, Y)
    assert len(count_trainings) == 1
    np.testing.assert_array_equal(a.thresholds_, c.thresholds_)
    assert (b.thresholds_ <= a.thresholds_).all()


def test_logits_are_cached_for_repeated_prediction(params, toy_data, count_encoder_texts):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(**params).fit(X, Y)
    count_encoder_texts.clear()
    first = clf.predict_proba(X[:20])
    assert sum(count_encoder_texts) == 20
    clf.set_params(threshold=0.2)
    np.testing.assert_array_equal(clf.predict_proba(X[:20]), first)
    assert clf.predict(X[:20]).sum() >= (first >= 0.5).sum()
    assert sum(count_encoder_texts) == 20  # the second call read the cache


def test_cached_logits_are_read_back_per_text(params, toy_data, count_encoder_texts):
    """Texts predicted in an earlier call are not encoded again when they come back among others."""
    X, Y = toy_data
    clf = BertMultiLabelClassifier(**params).fit(X, Y)
    plain = BertMultiLabelClassifier(**dict(params, memory=None)).fit(X, Y)
    count_encoder_texts.clear()
    clf.predict_proba(X[:20])
    assert sum(count_encoder_texts) == 20
    mixed = clf.predict_proba(X[10:30] + X[:3])
    assert sum(count_encoder_texts) == 30  # only X[20:30] were new
    np.testing.assert_allclose(mixed, plain.predict_proba(X[10:30] + X[:3]), atol=1e-5)


def test_predicting_one_text_at_a_time_keeps_few_logit_chunks(params, toy_data, tmp_path):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(**params).fit(X, Y)
    plain = BertMultiLabelClassifier(**dict(params, memory=None)).fit(X, Y)
    texts = [f"{X[i % len(X)]} again {i}" for i in range(70)]
    proba = np.vstack([clf.predict_proba([text]) for text in texts])
    np.testing.assert_allclose(proba, plain.predict_proba(texts), atol=1e-5)
    (folder,) = (tmp_path / "cache" / "sklearn_bert_multilabel" / "logits").iterdir()
    # 70 one-text chunks merged as 1 x 64 + 6 x 1.
    assert len(list(folder.glob("chunk-*"))) == 7


def test_logit_cache_follows_prediction_settings(params, toy_data):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(**params).fit(X, Y)
    full = clf.predict_proba(X[:10])
    clf.set_params(max_length=4)  # truncation changes the logits: not served from the cache
    short = clf.predict_proba(X[:10])
    assert not np.allclose(short, full)
    clf.set_params(memory=None)
    np.testing.assert_allclose(clf.predict_proba(X[:10]), short, atol=1e-6)


def test_grid_search_over_thresholds_trains_once_per_fold(params, toy_data, count_trainings):
    X, Y = toy_data
    search = GridSearchCV(
        BertMultiLabelClassifier(**dict(params, max_epochs=1)),
        {"threshold": [0.1, 0.3, 0.5, 0.7, 0.9]},
        scoring="f1_macro",
        cv=3,
        refit=False,
    ).fit(X, Y)
    assert len(count_trainings) == 3
    scores = search.cv_results_["mean_test_score"]
    assert len(set(np.round(scores, 6))) > 1  # the thresholds do change the predictions


def test_frozen_encoder_features_are_computed_once(params, toy_data, count_encoder_texts, count_trainings):
    X, Y = toy_data
    p = dict(params, freeze_encoder=True, max_epochs=3, lr=1e-2)
    GridSearchCV(
        BertMultiLabelClassifier(**p),
        {"hidden_layer_sizes": [(), (8,), (16,), (8, 8)]},
        scoring="f1_macro",
        cv=3,
        refit=False,
    ).fit(X, Y)
    assert len(count_trainings) == 12  # heads are trained per candidate and fold...
    assert sum(count_encoder_texts) == len(set(X))  # ...but each text is encoded once


def test_frozen_features_without_memory_are_computed_once_per_fit(fast_params, toy_data, count_encoder_texts):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(**dict(fast_params, freeze_encoder=True, max_epochs=5)).fit(X, Y)
    assert sum(count_encoder_texts) == len(X)  # not once per epoch
    assert len(clf.history_) == 5


def test_frozen_cached_predictions_match_the_full_model(params, toy_data):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(**dict(params, freeze_encoder=True, lr=1e-2)).fit(X, Y)
    cached = clf.predict_proba(X)
    clf.set_params(memory=None)
    np.testing.assert_allclose(clf.predict_proba(X), cached, atol=1e-5)


def test_joblib_memory_object(fast_params, toy_data, tmp_path, count_trainings):
    X, Y = toy_data
    memory = joblib.Memory(str(tmp_path / "jm"), verbose=0)
    BertMultiLabelClassifier(**dict(fast_params, memory=memory)).fit(X, Y)
    BertMultiLabelClassifier(**dict(fast_params, memory=memory, threshold=0.4)).fit(X, Y)
    assert len(count_trainings) == 1
    assert (tmp_path / "jm" / "sklearn_bert_multilabel" / "fits").is_dir()
    BertMultiLabelClassifier(**dict(fast_params, memory=joblib.Memory(None))).fit(X, Y)
    assert len(count_trainings) == 2


def test_refitting_with_callbacks_that_keep_state_hits_the_cache(params, toy_data, count_trainings):
    """skorch callbacks keep what a fit left in them (EarlyStopping a copy of the best weights, a
    scoring its best score); that is not a setting, so the same estimator fitted again hits."""
    X, Y = toy_data
    stopper = EarlyStopping(monitor="valid_loss", patience=1, load_best=True)
    scores = EpochScoring("f1_macro", lower_is_better=False)
    callbacks = [stopper, ("scores", scores)]
    clf = BertMultiLabelClassifier(**dict(params, train_split=0.25, max_epochs=4, callbacks=callbacks))
    first = clf.fit(X, Y).predict_proba(X)
    assert stopper.best_model_weights_ is not None and scores.best_score_ is not None  # state kept
    clf.fit(X, Y)
    assert len(count_trainings) == 1
    np.testing.assert_array_equal(clf.predict_proba(X), first)
    other = [EarlyStopping(monitor="valid_loss", patience=2, load_best=True), ("scores", scores)]
    BertMultiLabelClassifier(**dict(clf.get_params(), callbacks=other)).fit(X, Y)
    assert len(count_trainings) == 2  # a callback's setting is still part of the key


@pytest.mark.parametrize("wrap", [str, joblib.Memory])
def test_memory_under_the_home_folder(wrap, fast_params, toy_data, tmp_path, monkeypatch, count_trainings):
    """``~`` is the home folder, as for the other paths the package takes, not a folder named ``~``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    X, Y = toy_data
    memory = wrap("~/cache")
    BertMultiLabelClassifier(**dict(fast_params, memory=memory)).fit(X, Y)
    BertMultiLabelClassifier(**dict(fast_params, memory=memory, threshold=0.4)).fit(X, Y)
    assert len(count_trainings) == 1
    assert (tmp_path / "home" / "cache" / "sklearn_bert_multilabel" / "fits").is_dir()
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("damage", ["truncate-weights", "garbage-meta", "garbage-valid", "empty-folder"])
def test_corrupt_fit_entry_is_ignored_with_a_warning(damage, params, toy_data, tmp_path, count_trainings):
    X, Y = toy_data
    p = dict(params, train_split=0.25)
    reference = BertMultiLabelClassifier(**p).fit(X, Y).predict_proba(X)
    (entry,) = (tmp_path / "cache" / "sklearn_bert_multilabel" / "fits").iterdir()
    if damage == "truncate-weights":
        data = (entry / "weights.safetensors").read_bytes()
        (entry / "weights.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "garbage-meta":
        (entry / "meta.json").write_text("{not json")
    elif damage == "garbage-valid":
        (entry / "valid.npz").write_bytes(b"nonsense")
    else:
        for f in entry.iterdir():
            f.unlink()
    with pytest.warns(CacheWarning, match="ignoring the unreadable cache entry"):
        again = BertMultiLabelClassifier(**p).fit(X, Y)
    assert len(count_trainings) == 2
    np.testing.assert_allclose(again.predict_proba(X), reference, atol=1e-6)
    BertMultiLabelClassifier(**p).fit(X, Y)  # the entry was rewritten, whole
    assert len(count_trainings) == 2


def test_cache_entry_of_another_shape_is_ignored(params, toy_data, tmp_path, count_trainings):
    from safetensors.torch import load_file, save_file

    X, Y = toy_data
    reference = BertMultiLabelClassifier(**params).fit(X, Y).predict_proba(X)
    (entry,) = (tmp_path / "cache" / "sklearn_bert_multilabel" / "fits").iterdir()
    weights = load_file(str(entry / "weights.safetensors"))
    weights["head.1.weight"] = torch.zeros(5, 32)  # readable, but not this model's
    save_file(weights, str(entry / "weights.safetensors"))
    with pytest.warns(CacheWarning, match="do not match this model"):
        again = BertMultiLabelClassifier(**params).fit(X, Y)
    assert len(count_trainings) == 2
    np.testing.assert_allclose(again.predict_proba(X), reference, atol=1e-6)
    BertMultiLabelClassifier(**params).fit(X, Y)  # replaced by the retrained weights
    assert len(count_trainings) == 2


def test_corrupt_logits_and_features_are_ignored(params, toy_data, tmp_path):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(**params).fit(X, Y)
    expected = clf.predict_proba(X[:10])
    logit_chunks = list((tmp_path / "cache" / "sklearn_bert_multilabel" / "logits").rglob("chunk-*"))
    assert logit_chunks
    for chunk in logit_chunks:
        (chunk / "features.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.warns(CacheWarning):
        np.testing.assert_array_equal(clf.predict_proba(X[:10]), expected)

    frozen = BertMultiLabelClassifier(**dict(params, freeze_encoder=True)).fit(X, Y)
    expected = frozen.predict_proba(X[:10])
    chunks = list((tmp_path / "cache" / "sklearn_bert_multilabel" / "features").rglob("chunk-*"))
    assert chunks
    for chunk in chunks:
        (chunk / "features.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.warns(CacheWarning):
        np.testing.assert_allclose(frozen.predict_proba(X[:10]), expected, atol=1e-5)


def test_feature_store_finds_every_stored_text_and_no_other(tmp_path):
    from sklearn_bert_multilabel._memory import FitCache, text_keys

    cache = FitCache(tmp_path)
    texts = [f"text {i}" for i in range(300)]
    keys = text_keys(texts)
    # Digests ending in zero bytes, which NumPy's bytes arrays treat specially.
    keys[:3] = [b"a" * 15 + b"\x00", b"a" * 14 + b"\x00\x01", b"\x00" * 16]
    rows = np.random.default_rng(0).random((300, 8)).astype(np.float32)
    cache.save_rows("features", "k", keys[:200], rows[:200])
    cache.save_rows("features", "k", keys[150:], rows[150:])  # 50 texts stored twice, by two fits
    assert not cache.load_rows("features", "other", 8).fill(keys, np.zeros((300, 8), dtype=np.float32)).any()

    store = cache.load_rows("features", "k", 8)
    assert len(store.chunks) == 2
    order = np.random.default_rng(1).permutation(300)
    queried = np.concatenate([keys[order], text_keys(["never stored", "text 3000"])])
    out = np.full((302, 8), -1.0, dtype=np.float32)
    found = store.fill(queried, out)
    np.testing.assert_array_equal(found, [True] * 300 + [False] * 2)
    np.testing.assert_array_equal(out[:300], rows[order])
    assert (out[300:] == -1).all()  # rows not found are left alone
    assert not FitCache(tmp_path / "none").load_rows("features", "k", 8).fill(keys, out).any()


def test_feature_chunks_of_another_shape_are_ignored_and_removed(tmp_path):
    from sklearn_bert_multilabel._memory import FitCache, text_keys

    cache = FitCache(tmp_path)
    keys = text_keys(["a", "b", "c"])
    cache.save_rows("features", "k", keys[:2], np.ones((2, 8), dtype=np.float32))
    cache.save_rows("features", "k", keys[2:], np.ones((1, 4), dtype=np.float32))  # another width
    with pytest.warns(CacheWarning, match="expected S16 keys and 8 values a row"):
        store = cache.load_rows("features", "k", 8)
    np.testing.assert_array_equal(store.fill(keys, np.zeros((3, 8), dtype=np.float32)), [True, True, False])
    assert len(list((tmp_path / "features" / "k").glob("chunk-*"))) == 1


def test_feature_lookup_reads_only_the_rows_it_returns(tmp_path):
    import tracemalloc

    from sklearn_bert_multilabel._memory import FitCache, text_keys

    cache = FitCache(tmp_path)
    keys = text_keys([f"text {i}" for i in range(20_000)])
    rows = np.random.default_rng(0).random((20_000, 64)).astype(np.float32)  # 5 MB
    cache.save_rows("features", "k", keys[:10_000], rows[:10_000])
    cache.save_rows("features", "k", keys[10_000:], rows[10_000:])
    wanted = np.array([5, 17_000, 3, 9_999, 10_000])
    out = np.zeros((5, 64), dtype=np.float32)
    tracemalloc.start()
    try:
        found = cache.load_rows("features", "k", 64).fill(keys[wanted], out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found.all()
    np.testing.assert_array_equal(out, rows[wanted])
    assert peak < 200_000  # neither the 5 MB of rows nor the 320 kB of keys were read into memory


def test_feature_chunks_are_read_whole_where_files_cannot_be_mapped(tmp_path, monkeypatch):
    import mmap

    from sklearn_bert_multilabel._memory import FitCache, text_keys

    cache = FitCache(tmp_path)
    keys = text_keys(["a", "b"])
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    cache.save_rows("features", "k", keys, rows)

    def no_mmap(*args, **kwargs):
        raise OSError(19, "No such device")

    monkeypatch.setattr(mmap, "mmap", no_mmap)
    out = np.zeros((2, 4), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a file that cannot be mapped is not a damaged entry
        assert cache.load_rows("features", "k", 4).fill(keys, out).all()
    np.testing.assert_array_equal(out, rows)
    assert len(list((tmp_path / "features" / "k").glob("chunk-*"))) == 1


def test_feature_chunks_written_as_one_file_are_still_read(tmp_path):
    from sklearn_bert_multilabel._memory import FitCache, text_keys

    keys = text_keys(["c", "a", "b", "a"])  # unsorted, one text twice: as a fit computed them
    rows = np.arange(16, dtype=np.float32).reshape(4, 4)
    folder = tmp_path / "features" / "k"
    folder.mkdir(parents=True)
    np.savez(folder / "chunk-0.npz", keys=keys, features=rows)
    out = np.zeros((3, 4), dtype=np.float32)
    found = FitCache(tmp_path).load_rows("features", "k", 4).fill(text_keys(["a", "b", "z"]), out)
    np.testing.assert_array_equal(found, [True, True, False])
    np.testing.assert_array_equal(out[:2], rows[[1, 2]])


def test_feature_chunk_removed_while_reading_is_skipped_quietly(tmp_path, monkeypatch):
    import shutil

    from sklearn_bert_multilabel import _memory

    cache = _memory.FitCache(tmp_path)
    keys = _memory.text_keys(["a", "b"])
    cache.save_rows("features", "k", keys[:1], np.ones((1, 4), dtype=np.float32))
    cache.save_rows("features", "k", keys[1:], np.full((1, 4), 2.0, dtype=np.float32))
    read = _memory._read_chunk
    gone = sorted((tmp_path / "features" / "k").glob("chunk-*"))[0]

    def read_after_another_process_removed_one(chunk):
        if chunk == gone:
            shutil.rmtree(chunk)
        return read(chunk)

    monkeypatch.setattr(_memory, "_read_chunk", read_after_another_process_removed_one)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store = cache.load_rows("features", "k", 4)
    assert len(store.chunks) == 1
    assert store.fill(keys, np.zeros((2, 4), dtype=np.float32)).sum() == 1


def _one_text_chunks(cache, texts, width=4):
    """Save each text's features as its own chunk, as one prediction per text would."""
    from sklearn_bert_multilabel._memory import text_keys

    keys = text_keys(texts)
    rows = np.random.default_rng(0).random((len(texts), width)).astype(np.float32)
    for i in range(len(texts)):
        cache.save_rows("features", "k", keys[i : i + 1], rows[i : i + 1])
    return keys, rows


def test_feature_chunks_of_one_size_class_are_merged(tmp_path):
    from sklearn_bert_multilabel._memory import MERGE_FAN_IN, FitCache

    assert MERGE_FAN_IN == 8
    cache = FitCache(tmp_path)
    keys, rows = _one_text_chunks(cache, [f"text {i}" for i in range(100)])
    # Like a base-8 counter: 100 = 1 x 64 + 4 x 8 + 4 x 1 rows.
    folder = tmp_path / "features" / "k"
    sizes = sorted(len(np.load(chunk / "keys.npy")) for chunk in folder.glob("chunk-*"))
    assert sizes == [1] * 4 + [8] * 4 + [64]
    assert all(chunk.name.startswith("chunk-") for chunk in folder.iterdir())  # nothing left over
    order = np.random.default_rng(1).permutation(100)
    out = np.zeros((100, 4), dtype=np.float32)
    assert cache.load_rows("features", "k", 4).fill(keys[order], out).all()
    np.testing.assert_array_equal(out, rows[order])


def test_merging_keeps_the_rows_a_look_up_read(tmp_path, monkeypatch):
    from sklearn_bert_multilabel import _memory

    cache = _memory.FitCache(tmp_path)
    keys = _memory.text_keys(["a", "b", "c"])
    monkeypatch.setattr(_memory, "MERGE_FAN_IN", 100)  # no merging yet
    for i in range(8):  # the same texts, with other rows each time (as by several "fits")
        cache.save_rows(
            "features", "k", keys[: 1 + i % 3], np.full((1 + i % 3, 4), float(i), dtype=np.float32)
        )
    folder = tmp_path / "features" / "k"
    assert len(list(folder.glob("chunk-*"))) == 8
    before = np.zeros((3, 4), dtype=np.float32)
    assert cache.load_rows("features", "k", 4).fill(keys, before).all()
    monkeypatch.undo()
    assert _memory._merge_a_full_class(folder, 4)
    assert len(list(folder.glob("chunk-*"))) == 1
    after = np.zeros((3, 4), dtype=np.float32)
    assert cache.load_rows("features", "k", 4).fill(keys, after).all()
    np.testing.assert_array_equal(after, before)
    assert len(np.unique(before)) > 1  # the rows came from several chunks


def test_a_chunk_removed_during_a_merge_stops_it_quietly(tmp_path, monkeypatch):
    import shutil

    from sklearn_bert_multilabel import _memory

    cache = _memory.FitCache(tmp_path)
    keys, rows = _one_text_chunks(cache, [f"text {i}" for i in range(7)])
    folder = tmp_path / "features" / "k"
    read = _memory._read_chunk
    removed = []

    def read_after_another_process_merged_one(chunk):
        if not removed:
            removed.append(chunk)
            shutil.rmtree(chunk)
        return read(chunk)

    monkeypatch.setattr(_memory, "_read_chunk", read_after_another_process_merged_one)
    extra = _memory.text_keys(["text 7"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.save_rows("features", "k", extra, np.ones((1, 4), dtype=np.float32))
    monkeypatch.undo()
    assert len(list(folder.glob("chunk-*"))) == 7  # nothing merged, nothing else removed
    out = np.zeros((8, 4), dtype=np.float32)
    found = cache.load_rows("features", "k", 4).fill(np.concatenate([keys, extra]), out)
    assert found.sum() == 7  # all but the chunk removed "by the other process"
    stored = np.vstack([rows, np.ones((1, 4), dtype=np.float32)])
    np.testing.assert_array_equal(out[found], stored[found])


def test_processes_saving_and_merging_chunks_at_once_lose_no_text(tmp_path):
    import subprocess
    import sys

    from sklearn_bert_multilabel._memory import FitCache, text_keys

    script = """
import sys
import warnings
import numpy as np
from pathlib import Path
from sklearn_bert_multilabel._memory import CacheWarning, FitCache, text_keys
warnings.simplefilter("error", CacheWarning)  # nothing unreadable, nothing unwritable
cache, name = FitCache(Path(sys.argv[1])), sys.argv[2]
for i in range(60):
    key = text_keys([f"{name} {i}"])
    cache.save_rows("features", "k", key, np.full((1, 4), i, dtype=np.float32))
"""
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), name]) for name in ("first", "second")
    ]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]
    texts = [f"{name} {i}" for name in ("first", "second") for i in range(60)]
    out = np.full((120, 4), -1.0, dtype=np.float32)
    assert FitCache(tmp_path).load_rows("features", "k", 4).fill(text_keys(texts), out).all()
    np.testing.assert_array_equal(out[:, 0], np.tile(np.arange(60), 2))
    # 120 rows: one chunk of 64 or more, and fewer than 8 in each smaller class (some twice
    # where both processes merged the same chunks).
    assert len(list((tmp_path / "features" / "k").glob("chunk-*"))) < 24


def test_later_look_ups_reuse_the_mapped_chunks(tmp_path, monkeypatch):
    from sklearn_bert_multilabel import _memory

    cache = _memory.FitCache(tmp_path)
    keys, rows = _one_text_chunks(cache, ["a", "b", "c"])
    reads = []
    read = _memory._read_chunk
    monkeypatch.setattr(_memory, "_read_chunk", lambda chunk: reads.append(chunk) or read(chunk))
    out = np.zeros((3, 4), dtype=np.float32)
    assert cache.load_rows("features", "k", 4).fill(keys, out).all()
    assert len(reads) == 3
    assert cache.load_rows("features", "k", 4).fill(keys, out).all()
    assert len(reads) == 3  # all three mapped already
    np.testing.assert_array_equal(out, rows)
    damaged = sorted((tmp_path / "features" / "k").glob("chunk-*"))[0]
    (damaged / "features.npy").write_bytes(b"\x93NUMPY garbage")  # changed: read again
    with pytest.warns(CacheWarning, match="unreadable cache entry"):
        store = cache.load_rows("features", "k", 4)
    assert len(reads) == 4 and len(store.chunks) == 2 and not damaged.exists()


def test_mappings_of_removed_caches_are_dropped(tmp_path):
    import shutil

    from sklearn_bert_multilabel import _memory

    def mapped_under(folder):
        return [name for name in _memory._MAPPED._chunks if name.startswith(str(folder))]

    removed, kept = _memory.FitCache(tmp_path / "removed"), _memory.FitCache(tmp_path / "kept")
    for cache in (removed, kept):
        keys, _ = _one_text_chunks(cache, ["a", "b"])
        assert cache.load_rows("features", "k", 4).fill(keys, np.zeros((2, 4), dtype=np.float32)).all()
    assert len(mapped_under(tmp_path / "removed")) == 2
    shutil.rmtree(tmp_path / "removed")  # as a temporary folder is at the end of a search
    assert kept.load_rows("features", "k", 4).fill(keys, np.zeros((2, 4), dtype=np.float32)).all()
    assert mapped_under(tmp_path / "removed") == []
    assert len(mapped_under(tmp_path / "kept")) == 2


def test_predicting_one_text_at_a_time_keeps_few_feature_chunks(params, toy_data, tmp_path):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(**dict(params, freeze_encoder=True)).fit(X, Y)
    plain = BertMultiLabelClassifier(**dict(params, freeze_encoder=True, memory=None)).fit(X, Y)
    texts = [f"{X[i % len(X)]} again {i}" for i in range(70)]
    proba = np.vstack([clf.predict_proba([text]) for text in texts])
    np.testing.assert_allclose(proba, plain.predict_proba(texts), atol=1e-5)
    folder = next((tmp_path / "cache" / "sklearn_bert_multilabel" / "features").iterdir())
    # The fit's chunk, then 70 one-text chunks merged as 1 x 64 + 6 x 1.
    assert len(list(folder.glob("chunk-*"))) == 8


def test_unwritable_cache_does_not_break_fit(fast_params, toy_data, tmp_path):
    X, Y = toy_data
    (tmp_path / "sklearn_bert_multilabel").write_text("not a folder")  # where the entries would go
    clf = BertMultiLabelClassifier(**dict(fast_params, memory=str(tmp_path)))
    with pytest.warns(CacheWarning, match="could not write"):
        clf.fit(X, Y)
    with pytest.warns(CacheWarning, match="could not write logits"):
        assert clf.predict(X[:3]).shape == (3, 3)


def test_parallel_grid_search_shares_the_cache(params, toy_data):
    X, Y = toy_data
    grid = {"threshold": [0.3, 0.5]}
    est = BertMultiLabelClassifier(**dict(params, max_epochs=1))
    serial = GridSearchCV(est, grid, scoring="f1_macro", cv=2, refit=False).fit(X, Y)
    parallel = GridSearchCV(est, grid, scoring="f1_macro", cv=2, refit=False, n_jobs=2).fit(X, Y)
    np.testing.assert_allclose(
        parallel.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"], atol=1e-6
    )
    fresh = params["memory"] + "-parallel-first"
    est2 = BertMultiLabelClassifier(**dict(params, max_epochs=1, memory=fresh))
    again = GridSearchCV(est2, grid, scoring="f1_macro", cv=2, refit=False, n_jobs=2).fit(X, Y)
    np.testing.assert_allclose(
        again.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"], atol=1e-6
    )
    assert torch.get_num_threads() >= 1


def test_parallel_frozen_search_shares_feature_chunks(params, toy_data, tmp_path):
    """Worker processes write and read each other's feature chunks; scores match a search without memory."""
    X, Y = toy_data
    grid = {"hidden_layer_sizes": [(), (8,)]}
    p = dict(params, freeze_encoder=True, lr=1e-2, max_epochs=2)
    plain = BertMultiLabelClassifier(**dict(p, memory=None))
    serial = GridSearchCV(plain, grid, scoring="f1_macro", cv=2, refit=False).fit(X, Y)
    cached = BertMultiLabelClassifier(**dict(p, memory=str(tmp_path / "cache")))
    parallel = GridSearchCV(cached, grid, scoring="f1_macro", cv=2, refit=False, n_jobs=2).fit(X, Y)
    np.testing.assert_allclose(
        parallel.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"], atol=1e-5
    )
    folder = tmp_path / "cache" / "sklearn_bert_multilabel" / "features"
    chunks = list(folder.rglob("chunk-*"))
    assert chunks and all(sorted(f.name for f in c.iterdir()) == ["features.npy", "keys.npy"] for c in chunks)
    assert not list(folder.rglob(".*"))  # no temporary folder left behind
    stored = np.concatenate([np.load(c / "keys.npy") for c in chunks])
    assert len(np.unique(stored)) == len(set(X))  # every text's features were stored


class _RecordThreads(Callback):
    def on_epoch_end(self, net, **kwargs):
        net.history.record("torch_threads", torch.get_num_threads())


def test_parallel_workers_do_not_oversubscribe_cores(fast_params, toy_data):
    """Under joblib's process workers, workers x torch threads stays within the cores."""
    import os

    from sklearn.model_selection import cross_validate

    X, Y = toy_data
    est = BertMultiLabelClassifier(**dict(fast_params, max_epochs=1, callbacks=[_RecordThreads()]))
    out = cross_validate(est, X, Y, cv=2, n_jobs=2, return_estimator=True, scoring="f1_macro")
    threads = [e.history_[-1, "torch_threads"] for e in out["estimator"]]
    assert all(2 * t <= max(2, os.cpu_count()) for t in threads), threads


def test_frozen_fits_with_memory_share_one_unchanged_encoder(params, toy_data):
    X, Y = toy_data
    p = dict(params, freeze_encoder=True, lr=1e-2)
    a = BertMultiLabelClassifier(**p).fit(X, Y)
    before = {k: v.clone() for k, v in a.module_.encoder.state_dict().items()}
    b = BertMultiLabelClassifier(**dict(p, hidden_layer_sizes=(8,))).fit(X, Y)
    assert b.module_.encoder is a.module_.encoder  # loaded once for both fits
    assert b.tokenizer_ is a.tokenizer_
    assert not any(param.requires_grad for param in a.module_.encoder.parameters())
    after = a.module_.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nobody trains it
    # Fits that train the encoder, or do not read features through memory, get their own.
    tuned = BertMultiLabelClassifier(**params).fit(X, Y)
    plain = BertMultiLabelClassifier(**dict(p, memory=None)).fit(X, Y)
    assert tuned.module_.encoder is not a.module_.encoder
    assert plain.module_.encoder is not a.module_.encoder


def test_sharing_the_frozen_encoder_does_not_change_the_model(params, toy_data):
    X, Y = toy_data
    p = dict(params, freeze_encoder=True, lr=1e-2, hidden_layer_sizes=(8,))
    shared = BertMultiLabelClassifier(**p).fit(X, Y)
    alone = BertMultiLabelClassifier(**dict(p, memory=None)).fit(X, Y)
    np.testing.assert_allclose(shared.predict_proba(X), alone.predict_proba(X), atol=1e-5)
    restored = pickle.loads(pickle.dumps(shared))
    assert restored.module_.encoder is not shared.module_.encoder
    np.testing.assert_allclose(restored.predict_proba(X), alone.predict_proba(X), atol=1e-5)


def test_reused_tokenizers_are_per_thread(params, toy_data):
    X, Y = toy_data
    p = dict(params, freeze_encoder=True)
    here = [BertMultiLabelClassifier(**p).fit(X, Y) for _ in range(2)]
    there = []
    worker = threading.Thread(target=lambda: there.append(BertMultiLabelClassifier(**p).fit(X, Y)))
    worker.start()
    worker.join()
    assert here[0].tokenizer_ is here[1].tokenizer_
    assert there[0].tokenizer_ is not here[0].tokenizer_
    assert there[0].module_.encoder is here[0].module_.encoder  # the encoder is only read: shared


def test_a_model_folder_rewritten_in_place_is_loaded_again(params, toy_data, tiny_model_dir, tmp_path):
    import os
    import shutil

    X, Y = toy_data
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    p = dict(params, model_name=str(folder), freeze_encoder=True)
    first = BertMultiLabelClassifier(**p).fit(X, Y)
    config = folder / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    second = BertMultiLabelClassifier(**p).fit(X, Y)
    assert second.module_.encoder is not first.module_.encoder


def test_weights_rewritten_in_place_miss_the_disk_cache(
    params, toy_data, tiny_model_dir, tmp_path, count_trainings
):
    """The weights file rewritten in place, same size, other weights: cached fits and features
    must not be reused."""
    import shutil

    from transformers import AutoModel

    X, Y = toy_data
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    for freeze in (False, True):
        p = dict(
            params, model_name=str(folder), freeze_encoder=freeze, memory=str(tmp_path / f"cache{freeze}")
        )
        first = BertMultiLabelClassifier(**p).fit(X, Y).predict_proba(X)
        before = (folder / "model.safetensors").stat().st_size
        encoder = AutoModel.from_pretrained(str(folder))
        torch.manual_seed(int(freeze))
        with torch.no_grad():
            for param in encoder.parameters():
                param.add_(torch.randn_like(param), alpha=0.5)
        encoder.save_pretrained(str(folder))
        assert (folder / "model.safetensors").stat().st_size == before  # the same size, new weights
        n = len(count_trainings)
        second = BertMultiLabelClassifier(**p).fit(X, Y).predict_proba(X)
        assert len(count_trainings) == n + 1  # trained again, not loaded from the cache
        assert not np.allclose(first, second, atol=1e-4)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_cached_state_of_a_frozen_module_is_its_state_without_the_encoder(tiny_model_dir, pooling):
    from transformers import AutoModel

    from sklearn_bert_multilabel._memory import state_for_cache

    encoder = AutoModel.from_pretrained(tiny_model_dir)
    module = MultiLabelTextModule(encoder, 3, pooling=pooling, hidden_layer_sizes=(8,), freeze_encoder=True)
    full = module.state_dict()
    expected = {k: v for k, v in full.items() if not k.startswith("encoder.")}
    got = state_for_cache(module, frozen=True)
    assert list(got) == list(expected)  # same keys, same order
    assert all(got[k] is expected[k] or torch.equal(got[k], expected[k]) for k in expected)
    assert list(state_for_cache(module, frozen=False)) == list(full)


def test_model_fingerprint_is_remembered_until_a_file_changes(tiny_model_dir, tmp_path, monkeypatch):
    import os
    import shutil

    import sklearn_bert_multilabel._memory as memory_module
    from sklearn_bert_multilabel._pretrained import file_stamps

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = folder / "config.json"
    first = memory_module.model_fingerprint(str(folder))
    # The same hash as before it was remembered: cache keys written earlier stay valid.
    assert first == memory_module.stable_hash(file_stamps(str(folder)), config.read_bytes())
    hashed = []
    original = memory_module.stable_hash
    monkeypatch.setattr(memory_module, "stable_hash", lambda *a: hashed.append(a) or original(*a))
    assert memory_module.model_fingerprint(str(folder)) == first
    assert hashed == []  # remembered: neither read nor hashed again
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    second = memory_module.model_fingerprint(str(folder))
    assert second != first and len(hashed) == 1


def test_history_as_json_values():
    from skorch.history import History

    from sklearn_bert_multilabel._estimator import _jsonable

    history = History()
    history.new_epoch()
    history.record("epoch", 1)
    history.record("train_loss", np.float32(0.25))
    history.record("best", np.bool_(True))
    history.record("pair", (torch.tensor(2.5), np.int64(3)))
    history.record("arrays", [torch.tensor([1.5]), torch.tensor([1.0, 2.0]), np.array([[1, 2]])])
    history.record("when", datetime.date(2024, 5, 1))
    history.new_batch()
    history.record_batch("train_loss", torch.tensor(0.5))
    history.record_batch("train_batch_size", 4)
    got = _jsonable(history)
    assert got == [
        {
            "epoch": 1,
            "train_loss": 0.25,
            "best": True,
            "pair": [2.5, 3],
            "arrays": [1.5, [1.0, 2.0], [[1, 2]]],
            "when": "2024-05-01",
            "batches": [{"train_loss": 0.5, "train_batch_size": 4}],
        }
    ]
    assert type(got[0]["train_loss"]) is float and type(got[0]["best"]) is bool


class RecordsADate(Callback):
    def on_epoch_end(self, net, **kwargs):
        net.history.record("when", datetime.date(2024, 5, 1))


def test_a_callback_recording_any_value_does_not_stop_caching(params, toy_data, count_trainings):
    X, Y = toy_data
    p = dict(params, callbacks=[("when", RecordsADate())])
    first = BertMultiLabelClassifier(**p).fit(X, Y)
    assert first.history_[-1, "when"] == datetime.date(2024, 5, 1)
    second = BertMultiLabelClassifier(**p).fit(X, Y)
    assert len(count_trainings) == 1  # the second fit is read from the cache
    assert second.history_[-1, "when"] == "2024-05-01"
    np.testing.assert_allclose(second.predict_proba(X), first.predict_proba(X), atol=1e-6)


def test_fitted_module_is_moved_only_when_a_tensor_is_elsewhere(fast_params, toy_data, monkeypatch):
    X, Y = toy_data
    moves = []
    original = torch.nn.Module.to
    monkeypatch.setattr(
        torch.nn.Module, "to", lambda self, *a, **k: moves.append(a) or original(self, *a, **k)
    )
    clf = BertMultiLabelClassifier(**fast_params).fit(X, Y)
    assert clf.module_.head[1].weight.device.type == "cpu"
    module = clf.module_
    moves.clear()
    clf._set_model(module, clf.tokenizer_, "cpu", clf.label_names_)
    assert moves == []  # everything is on the CPU already
    module.head[1].register_buffer("elsewhere", torch.empty(1, device="meta"))
    monkeypatch.setattr(type(module), "to", lambda self, *a, **k: moves.append(a) or self)
    clf._set_model(module, clf.tokenizer_, "cpu", clf.label_names_)
    assert moves == [("cpu",)]


def test_unhashable_parameters_are_named_briefly_and_the_fit_still_works(params, toy_data, count_trainings):
    class Local(Callback):  # a class defined in a function cannot be pickled
        pass

    X, Y = toy_data
    with pytest.warns(CacheWarning, match="cannot be hashed .*Local.*this fit is not cached") as caught:
        clf = BertMultiLabelClassifier(**dict(params, callbacks=[("local", Local())])).fit(X, Y)
    message = str(caught[0].message)
    assert len(message) < 600  # not the whole hashed tuple, data included
    assert "module level" in message
    assert clf.predict(X).shape == Y.shape


def test_the_shared_frozen_encoder_can_be_dropped(params, toy_data):
    from sklearn_bert_multilabel import _pretrained

    X, Y = toy_data
    p = dict(params, freeze_encoder=True)
    first = BertMultiLabelClassifier(**p).fit(X, Y)
    _pretrained._FROZEN_ENCODERS.clear()
    _pretrained._TOKENIZERS.clear()
    second = BertMultiLabelClassifier(**p).fit(X, Y)
    assert second.module_.encoder is not first.module_.encoder  # loaded again
    assert second.tokenizer_ is not first.tokenizer_
    third = BertMultiLabelClassifier(**p).fit(X, Y)
    assert third.module_.encoder is second.module_.encoder and third.tokenizer_ is second.tokenizer_


def _frozen_logits_with_and_without(params, X, Y, **changes):
    """A frozen fit in the shared cache, and the same fit without a cache."""
    frozen = dict(params, freeze_encoder=True, random_state=21, **changes)
    cached = BertMultiLabelClassifier(**frozen).fit(X, Y)
    plain = BertMultiLabelClassifier(**dict(frozen, memory=None)).fit(X, Y)
    return cached.decision_function(X), plain.decision_function(X)


def test_a_fine_tuned_encoder_never_stores_features_for_the_pretrained_one(params, toy_data):
    """freeze_encoder=True set after a fit that trained the encoder, then predictions with memory:
    the features of the trained encoder must not be stored as the pretrained encoder's."""
    X, Y = toy_data
    tuned = BertMultiLabelClassifier(**dict(params, lr=5e-3, random_state=20)).fit(X, Y)
    before = tuned.decision_function(X)
    tuned.set_params(freeze_encoder=True)
    np.testing.assert_allclose(tuned.decision_function(X), before, atol=1e-5)
    cached, plain = _frozen_logits_with_and_without(params, X, Y)
    np.testing.assert_allclose(cached, plain, atol=1e-5)


def test_parameters_changed_after_a_frozen_fit_do_not_relabel_its_features(
    params, toy_data, tiny_model_dir, tmp_path
):
    """pooling or model_name set after a frozen fit: the fitted encoder's features keep its own key."""
    import shutil

    from transformers import AutoModel

    X, Y = toy_data
    other = tmp_path / "other-encoder"
    shutil.copytree(tiny_model_dir, other)
    torch.manual_seed(1)
    encoder = AutoModel.from_pretrained(str(other))
    for p in encoder.parameters():
        p.data.normal_(0.0, 0.2)
    encoder.save_pretrained(str(other))

    mean = BertMultiLabelClassifier(**dict(params, freeze_encoder=True, random_state=22)).fit(X, Y)
    before = mean.decision_function(X)
    for change in ({"pooling": "cls"}, {"model_name": str(other)}):
        mean.set_params(**change)
        np.testing.assert_allclose(mean.decision_function(X[:50]), before[:50], atol=1e-5)
    # Fits of those settings in the same cache read only their own encoder's features.
    cached, plain = _frozen_logits_with_and_without(params, X, Y, pooling="cls")
    np.testing.assert_allclose(cached, plain, atol=1e-5)
    cached, plain = _frozen_logits_with_and_without(params, X, Y, model_name=str(other))
    np.testing.assert_allclose(cached, plain, atol=1e-5)


def test_a_frozen_model_fitted_on_windows_predicts_whole_texts_from_cached_features(
    params, toy_data, tmp_path
):
    X, Y = toy_data
    frozen = dict(params, freeze_encoder=True, long_text="chunk", max_length=8, stride=2, random_state=23)
    cached = BertMultiLabelClassifier(**frozen).fit(X, Y)
    plain = BertMultiLabelClassifier(**dict(frozen, memory=None)).fit(X, Y)
    features = tmp_path / "cache" / "sklearn_bert_multilabel" / "features"
    assert not features.exists()  # training on windows does not go through the feature cache
    for clf in (cached, plain):
        clf.set_params(long_text="truncate", max_length=32)
    np.testing.assert_allclose(cached.decision_function(X), plain.decision_function(X), atol=1e-5)
    assert list(features.rglob("chunk-*"))  # the fixed encoder's features, cached for later fits
    same_reading = dict(params, freeze_encoder=True, max_length=32, random_state=24)
    later = BertMultiLabelClassifier(**same_reading).fit(X, Y)
    alone = BertMultiLabelClassifier(**dict(same_reading, memory=None)).fit(X, Y)
    np.testing.assert_allclose(later.decision_function(X), alone.decision_function(X), atol=1e-5)
