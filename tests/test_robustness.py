"""Robustness: odd inputs (property-based), training faults, resuming, leaks and threads."""

from __future__ import annotations

import gc
import os
import threading
import warnings
import weakref

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import make_texts, weights_after_each_training_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback

from sklearn_bert_multilabel import (
    BertMultiLabelClassifier,
    InvalidInputError,
    MultiLabelTextModule,
    NonFiniteLossError,
    SingleLabelWarning,
    UnusedLabelWarning,
)
from sklearn_bert_multilabel._net import MultiLabelNet

FAST = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,  # the same examples on every run: CI stays predictable
    database=None,
)

# Text that stresses tokenisers: emoji, right-to-left scripts, control and
# zero-width characters, very long words, blank strings.
ODD_PIECES = [
    "",
    " ",
    "\t\n",
    "😀🔥👍🏽",
    "مرحبا بالعالم",
    "שלום",
    "\u200b\u200c\u200d\ufeff",
    "\x00\x01\x1b[31m",
    "a" * 3000,
    "goal" * 500,
    "Ünïcödé ñ",
    "\u202eevil",
    "中文文本",
]
texts_strategy = st.lists(
    st.one_of(st.text(max_size=60), st.sampled_from(ODD_PIECES)),
    min_size=1,
    max_size=12,
)


# ---------------------------------------------------------------- property-based
@settings(FAST, max_examples=40)
@given(texts=texts_strategy)
def test_any_unicode_predicts_finite_probabilities_in_order(one_epoch_model, texts):
    proba = one_epoch_model.predict_proba(texts)
    assert proba.shape == (len(texts), 3)
    assert np.isfinite(proba).all() and (proba >= 0).all() and (proba <= 1).all()
    # Order is preserved: each row equals that text predicted alone.
    j = len(texts) - 1
    np.testing.assert_allclose(proba[j], one_epoch_model.predict_proba([texts[j]])[0], atol=1e-5)


@st.composite
def label_matrices(draw):
    n = draw(st.integers(2, 10))
    n_labels = draw(st.sampled_from([1, 2, 5]))
    Y = draw(
        st.lists(st.lists(st.integers(0, 1), min_size=n_labels, max_size=n_labels), min_size=n, max_size=n)
    )
    Y = np.asarray(Y)
    column = draw(st.sampled_from(["as is", "all zero", "all one"]))
    if column == "all zero":
        Y[:, 0] = 0
    elif column == "all one":
        Y[:, 0] = 1
    kind = draw(st.sampled_from(["bool", "int8", "int64", "float32", "float64", "sparse", "frame", "list"]))
    if kind == "sparse":
        return sp.csr_matrix(Y)
    if kind == "frame":
        index = draw(st.sampled_from([None, "shifted", "strings"]))
        frame = pd.DataFrame(Y, columns=[f"label {j}" for j in range(n_labels)])
        if index == "shifted":
            frame.index = frame.index + 1000
        elif index == "strings":
            frame.index = [f"row{i}" for i in range(n)]
        return frame
    if kind == "list":
        return Y.tolist()
    return Y.astype(kind)


@settings(FAST, max_examples=12)
@given(data=st.data())
def test_fit_on_any_small_problem_works_or_raises_clearly(tiny_model_dir, data):
    Y = data.draw(label_matrices())
    n = Y.shape[0] if hasattr(Y, "shape") else len(Y)
    texts = data.draw(
        st.lists(st.one_of(st.text(max_size=30), st.sampled_from(ODD_PIECES)), min_size=n, max_size=n)
    )
    if data.draw(st.booleans()):
        texts = texts[:1] * n  # duplicates
    X = pd.Series(texts, index=np.arange(n) * 7 + 3) if data.draw(st.booleans()) else texts
    clf = BertMultiLabelClassifier(
        model_name=tiny_model_dir, max_epochs=1, batch_size=4, train_split=None, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedLabelWarning)  # all-zero columns are allowed, with a warning
        warnings.simplefilter("ignore", SingleLabelWarning)  # and so is a single column
        try:
            clf.fit(X, Y)
        except InvalidInputError as exc:
            assert str(exc)  # a clear message, never a crash from inside torch
            return
    n_labels = Y.shape[1] if hasattr(Y, "shape") else len(Y[0])
    proba = clf.predict_proba(X)
    assert proba.shape == (n, n_labels) and np.isfinite(proba).all()
    assert clf.predict(X).shape == (n, n_labels)


@pytest.mark.parametrize("n_labels", [1, 10_000])
def test_one_and_ten_thousand_labels(tiny_model_dir, n_labels):
    X, _ = make_texts(12, seed=1)
    rng = np.random.default_rng(0)
    Y = sp.random(12, n_labels, density=0.3, format="csr", random_state=rng)
    Y.data[:] = 1
    Y = Y.tolil()
    Y[:, 0] = 1  # at least one column has positives
    clf = BertMultiLabelClassifier(
        model_name=tiny_model_dir, max_epochs=1, train_split=None, random_state=0, threshold="auto"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedLabelWarning)
        warnings.simplefilter("ignore", UserWarning)  # "auto" without validation data falls back to 0.5
        clf.fit(X, Y.tocsr())
    proba = clf.predict_proba(X)
    assert proba.shape == (12, n_labels) and np.isfinite(proba).all()
    assert clf.predict(X).shape == (12, n_labels)


# ---------------------------------------------------------------- training faults
def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_weights(
    fast_params, toy_data, monkeypatch
):

    X, Y = toy_data  # 96 texts, batch 16: 6 batches an epoch
    real_get_loss = MultiLabelNet.get_loss
    calls = {"train": 0}

    def get_loss(self, y_pred, y_true, X=None, training=False):
        loss = real_get_loss(self, y_pred, y_true, X=X, training=training)
        if training:
            calls["train"] += 1
            if calls["train"] == 9:  # epoch 2, batch 3
                return loss * float("nan")
        return loss

    snapshot = weights_after_each_training_batch()
    monkeypatch.setattr(MultiLabelNet, "get_loss", get_loss)
    clf = BertMultiLabelClassifier(callbacks=[("snapshot", snapshot)], **fast_params)
    with pytest.raises(NonFiniteLossError, match=r"became nan in epoch 2, batch 3.*lower lr") as info:
        clf.fit(X, Y)
    assert (info.value.epoch, info.value.batch) == (2, 3)
    for key, value in clf.module_.state_dict().items():  # the weights after batch 2, untouched since
        torch.testing.assert_close(value, snapshot.state[key], rtol=0, atol=0)
    proba = clf.predict_proba(X)  # a usable model
    assert proba.shape == (96, 3) and np.isfinite(proba).all()


def test_a_failed_fit_is_freed_as_soon_as_its_error_is_dropped(
    fast_params, toy_data, monkeypatch, collector_off
):
    """No reference cycle through the error: in a distributed fit, the network it holds wraps
    the process group, and one freed by the garbage collector while the interpreter shuts
    down (after destroy_process_group) can abort the process."""
    real_get_loss, nets = MultiLabelNet.get_loss, []

    def get_loss(self, y_pred, y_true, X=None, training=False):
        nets.append(weakref.ref(self))
        loss = real_get_loss(self, y_pred, y_true, X=X, training=training)
        return loss * float("nan") if training and len(nets) == 3 else loss

    monkeypatch.setattr(MultiLabelNet, "get_loss", get_loss)
    X, Y = toy_data
    clf = BertMultiLabelClassifier(**fast_params)
    try:
        clf.fit(X, Y)
    except NonFiniteLossError as exc:
        error = weakref.ref(exc)
        assert exc.model_kept
    assert error() is None
    assert nets[-1]() is None
    assert np.isfinite(clf.predict_proba(X[:4])).all()  # the estimator kept its model


def _interrupt_at(monkeypatch, call: int) -> None:
    real_train_step = MultiLabelNet.train_step
    calls = {"n": 0}

    def train_step(self, batch, **fit_params):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real_train_step(self, batch, **fit_params)

    monkeypatch.setattr(MultiLabelNet, "train_step", train_step)


def test_keyboard_interrupt_leaves_a_usable_model_with_the_best_weights(
    fast_params, toy_data, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    X, Y = toy_data
    params = {**fast_params, "max_epochs": 3, "train_split": 0.25, "threshold": "auto"}
    _interrupt_at(monkeypatch, 5 + 3)  # 72 training texts, batch 16: 5 batches an epoch
    clf = BertMultiLabelClassifier(checkpoint_dir=tmp_path, **params)
    with pytest.warns(
        UserWarning, match="interrupted during epoch 2; the model keeps the weights of epoch 1"
    ):
        clf.fit(X, Y)
    assert clf.predict(X).shape == (96, 3)
    assert clf.thresholds_.shape == (3,)
    (folder,) = list(tmp_path.glob("*/epoch-0001"))
    saved = load_file(folder / "weights.safetensors")
    state = clf.module_.state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_an_interrupted_fit_leaves_no_predictions_for_a_complete_one_to_read(
    fast_params, toy_data, tmp_path, monkeypatch
):
    """With memory, the interrupted model's predictions must not be cached under the key of the
    data and parameters, where the complete fit that follows would read them."""
    X, Y = toy_data
    params = {**fast_params, "max_epochs": 3, "lr": 5e-3, "memory": tmp_path}
    real_train_step = MultiLabelNet.train_step
    calls = {"n": 0}

    def train_step(self, batch, **fit_params):
        calls["n"] += 1
        if calls["n"] == 2 * 6 + 2:  # once, during epoch 3 (6 batches an epoch)
            raise KeyboardInterrupt
        return real_train_step(self, batch, **fit_params)

    monkeypatch.setattr(MultiLabelNet, "train_step", train_step)
    clf = BertMultiLabelClassifier(**params)
    with pytest.warns(UserWarning, match="interrupted during epoch 3"):
        clf.fit(X, Y)
    assert clf.cache_key_ is None
    interrupted = clf.decision_function(X)
    clf.fit(X, Y)  # the same data and parameters, uninterrupted
    assert len(clf.history_) == 3 and clf.cache_key_ is not None
    complete = BertMultiLabelClassifier(**{**params, "memory": None}).fit(X, Y).decision_function(X)
    assert not np.allclose(complete, interrupted, atol=1e-4)
    np.testing.assert_allclose(clf.decision_function(X), complete, atol=1e-5)


def test_a_model_kept_after_a_non_finite_loss_has_no_cache_key(fast_params, toy_data, tmp_path, monkeypatch):
    real_get_loss = MultiLabelNet.get_loss

    def get_loss(self, y_pred, y_true, X=None, training=False):
        loss = real_get_loss(self, y_pred, y_true, X=X, training=training)
        return loss * float("nan") if training and len(self.history) == 2 else loss

    monkeypatch.setattr(MultiLabelNet, "get_loss", get_loss)
    X, Y = toy_data
    clf = BertMultiLabelClassifier(**{**fast_params, "memory": tmp_path})
    with pytest.raises(NonFiniteLossError):
        clf.fit(X, Y)
    assert clf.cache_key_ is None and np.isfinite(clf.decision_function(X)).all()


def test_the_best_weights_are_copied_only_while_an_epoch_is_left(fast_params, toy_data, monkeypatch):
    import sklearn_bert_multilabel._checkpoint as checkpoint_module

    X, Y = toy_data
    params = {**fast_params, "max_epochs": 3, "train_split": None}
    copies = []
    original = checkpoint_module._snapshot
    monkeypatch.setattr(
        checkpoint_module, "_snapshot", lambda module, **kw: copies.append(1) or original(module, **kw)
    )
    BertMultiLabelClassifier(**params).fit(X, Y)
    assert len(copies) == 2  # after epochs 1 and 2; nothing can interrupt a finished fit
    copies.clear()
    _interrupt_at(monkeypatch, 2 * 6 + 2)  # 96 texts, batch 16: 6 batches an epoch
    clf = BertMultiLabelClassifier(**params)
    with pytest.warns(
        UserWarning, match="interrupted during epoch 3; the model keeps the weights of epoch 2"
    ):
        clf.fit(X, Y)
    assert len(copies) == 2
    assert clf.predict(X).shape == (96, 3)


@pytest.mark.parametrize("early_stopping", [False, True])
def test_interrupt_restores_the_best_completed_epoch_by_the_validation_score(
    early_stopping, fast_params, toy_data, monkeypatch
):
    from skorch.callbacks import Callback

    class EpochWeights(Callback):
        def initialize(self):
            self.states = []
            return self

        def on_epoch_end(self, net, **kwargs):
            self.states.append({k: v.clone() for k, v in net.module_.state_dict().items()})

    X, Y = toy_data
    record = EpochWeights()
    params = {**fast_params, "max_epochs": 4, "train_split": 0.25, "early_stopping": early_stopping}
    params.update(n_iter_no_change=3, lr=3e-3, callbacks=[("record", record)])
    _interrupt_at(monkeypatch, 3 * 5 + 2)  # during epoch 4
    clf = BertMultiLabelClassifier(**params)
    with pytest.warns(UserWarning, match="interrupted during epoch 4"):
        clf.fit(X, Y)
    scores = [row["valid_f1_macro"] for row in clf.history_[:3]]
    best = int(np.argmax(scores))  # the first of equal scores, as strict improvement keeps
    state = clf.module_.state_dict()
    for key, value in record.states[best].items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_resume_from_checkpoint_equals_an_uninterrupted_run(fast_params, toy_data, tmp_path, monkeypatch):
    X, Y = toy_data
    params = {**fast_params, "max_epochs": 3, "train_split": 0.25}
    expected = BertMultiLabelClassifier(**params).fit(X, Y).predict_proba(X)

    with monkeypatch.context() as patch:
        _interrupt_at(patch, 2 * 5 + 2)  # during epoch 3
        with pytest.warns(UserWarning, match="interrupted during epoch 3"):
            BertMultiLabelClassifier(checkpoint_dir=tmp_path, **params).fit(X, Y)

    resumed = BertMultiLabelClassifier(checkpoint_dir=tmp_path, warm_start=True, **params).fit(X, Y)
    assert len(resumed.history_) == 3
    np.testing.assert_allclose(resumed.predict_proba(X), expected, rtol=0, atol=1e-6)


def test_resume_with_early_stopping_keeps_its_patience_and_best_weights(fast_params, tmp_path, monkeypatch):
    X, Y = make_texts(96, seed=30)
    valid = make_texts(48, seed=31)
    # A learning rate far too high: validation scores collapse after the first epochs.
    params = dict(fast_params, lr=0.5, max_epochs=15, early_stopping=True, n_iter_no_change=2)
    params.update(lr_schedule="constant", warmup_ratio=0.0)
    full = BertMultiLabelClassifier(**params).fit(X, Y, validation_data=valid)
    n = len(full.history_)
    best = int(np.argmax(full.history_[:, "valid_f1_macro"])) + 1
    assert n == best + 2 < 15  # stopped after two epochs without improvement

    with monkeypatch.context() as patch:
        _interrupt_at(patch, (n - 1) * 6 + 2)  # during the last epoch: one miss already counted
        with pytest.warns(UserWarning, match=f"interrupted during epoch {n}"):
            BertMultiLabelClassifier(checkpoint_dir=tmp_path, **params).fit(X, Y, validation_data=valid)

    resumed = BertMultiLabelClassifier(checkpoint_dir=tmp_path, warm_start=True, **params)
    resumed.fit(X, Y, validation_data=valid)
    assert len(resumed.history_) == n  # patience carried over, not restarted
    expected = full.predict_proba(valid[0])  # the best epoch's weights
    np.testing.assert_allclose(resumed.predict_proba(valid[0]), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("ended_by", ["patience", "max_epochs"])
def test_resuming_a_finished_run_trains_nothing_and_keeps_its_best_weights(ended_by, fast_params, tmp_path):
    """A script that always fits with warm_start=True and checkpoint_dir, run again after its
    fit finished, gets that fit's model: no extra epoch, and the best epoch's weights that early
    stopping restored, not the last epoch's."""
    X, Y = make_texts(96, seed=30)
    valid = make_texts(48, seed=31)
    params = dict(fast_params, lr=0.5, early_stopping=True, lr_schedule="constant", warmup_ratio=0.0)
    if ended_by == "patience":
        params.update(max_epochs=15, n_iter_no_change=2)
    else:
        params.update(max_epochs=6, n_iter_no_change=10)
    params.update(checkpoint_dir=tmp_path)
    full = BertMultiLabelClassifier(**params).fit(X, Y, validation_data=valid)
    n = len(full.history_)
    best = int(np.argmax(full.history_[:, "valid_f1_macro"])) + 1
    assert best < n and (n < 15 if ended_by == "patience" else n == 6)
    again = BertMultiLabelClassifier(warm_start=True, **params).fit(X, Y, validation_data=valid)
    assert len(again.history_) == n
    np.testing.assert_allclose(again.predict_proba(valid[0]), full.predict_proba(valid[0]), rtol=0, atol=1e-6)


def test_warm_start_continues_from_the_previous_fit(fast_params, toy_data):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(**{**fast_params, "max_epochs": 1}).fit(X, Y)
    first = clf.history_[-1, "train_loss"]
    clf.set_params(warm_start=True).fit(X, Y)
    assert clf.history_[0, "train_loss"] < first  # it did not start over
    with pytest.warns(UserWarning, match="other labels or another architecture"):
        clf.fit(X, Y[:, :2])
    assert clf.n_labels_ == 2


def test_warm_start_with_memory_continues_and_leaves_the_cache_alone(fast_params, toy_data, tmp_path):
    """A warm-started fit is not the cold fit that memory holds for the same data and parameters:
    it must neither load that entry nor serve that entry's cached predictions."""
    X, Y = toy_data
    params = {**fast_params, "max_epochs": 1, "lr": 5e-3, "warm_start": True}
    plain = BertMultiLabelClassifier(**params).fit(X, Y)
    cold = plain.decision_function(X)
    cached = BertMultiLabelClassifier(**params, memory=tmp_path).fit(X, Y)
    np.testing.assert_allclose(cached.decision_function(X), cold, atol=1e-5)  # now in the cache
    plain.fit(X, Y)
    cached.fit(X, Y)
    warm = plain.decision_function(X)
    assert not np.allclose(warm, cold, atol=1e-4)
    np.testing.assert_allclose(cached.decision_function(X), warm, atol=1e-5)
    assert cached.cache_key_ is None
    fresh = BertMultiLabelClassifier(**params, memory=tmp_path).fit(X, Y)  # a cold fit: the entry
    np.testing.assert_allclose(fresh.decision_function(X), cold, atol=1e-5)
    assert fresh.cache_key_ is not None


class StartingWeights(Callback):
    """The model's weights when training starts."""

    def on_train_begin(self, net, **kwargs):
        self.state = {k: v.detach().clone() for k, v in net.module_.state_dict().items()}


@pytest.mark.parametrize("aggregation", [None, "attention"])
def test_warm_start_matches_labels_by_name(fast_params, toy_data, aggregation):
    X, Y = toy_data
    params = {**fast_params, "max_epochs": 1}
    if aggregation:  # the window scorer has one row per label too
        params.update(long_text="chunk", chunk_aggregation=aggregation, max_length=12, stride=4)
        params.update(hidden_layer_sizes=(8,))
    Y = pd.DataFrame(Y, columns=["a", "b", "c"])
    clf = BertMultiLabelClassifier(**params).fit(X, Y)
    before = {k: v.clone() for k, v in clf.module_.state_dict().items()}
    start = StartingWeights()
    clf.set_params(warm_start=True, callbacks=[("start", start)]).fit(X, Y[["c", "a", "b"]])
    assert clf.label_names_ == ["c", "a", "b"]
    last = f"head.{len(clf.module_.head) - 1}."
    per_label = [k for k in before if k.startswith((last, "window_scorer."))]
    assert len(per_label) == (4 if aggregation else 2)
    for key, value in before.items():  # each label continues from its own weights
        expected = value[[2, 0, 1]] if key in per_label else value
        torch.testing.assert_close(start.state[key], expected, rtol=0, atol=0)
    with pytest.warns(UserWarning, match="other labels"):  # other names: no label to continue
        clf.fit(X, Y.set_axis(["a", "b", "x"], axis=1))
    with warnings.catch_warnings():  # unnamed labels continue by position
        warnings.simplefilter("error")
        clf.fit(X, Y.to_numpy())
    assert clf.label_names_ == ["0", "1", "2"]


def test_damaged_checkpoint_is_skipped_with_a_warning(fast_params, toy_data, tmp_path):
    X, Y = toy_data
    params = {**fast_params, "max_epochs": 1, "checkpoint_dir": tmp_path}
    BertMultiLabelClassifier(**params).fit(X, Y)
    (folder,) = list(tmp_path.glob("*/epoch-0001"))
    (folder / "training.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        clf = BertMultiLabelClassifier(warm_start=True, **params).fit(X, Y)
    assert len(clf.history_) == 1


# ------------------------------------------------------------------- long runs
def _live(kind) -> int:
    gc.collect()
    return sum(issubclass(type(obj), kind) for obj in gc.get_objects())


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_no_modules_or_optimizers_leak_across_a_20_fit_search(fast_params, toy_data):
    X, Y = toy_data

    def search(lrs):
        return GridSearchCV(
            BertMultiLabelClassifier(**{**fast_params, "max_epochs": 1}),
            {"lr": lrs},
            cv=2,
            scoring="f1_macro",
        ).fit(X, Y)

    search([1e-3, 2e-3])  # warm-up: allocator pools, lazy imports
    gc.collect()
    before_modules, before_optimizers = _live(MultiLabelTextModule), _live(torch.optim.Optimizer)
    rss_before = _rss_mib()
    result = search(list(np.geomspace(1e-4, 1e-2, 10)))
    assert len(result.cv_results_["params"]) * 2 == 20
    del result
    assert _live(MultiLabelTextModule) - before_modules == 0
    assert _live(torch.optim.Optimizer) - before_optimizers == 0
    assert _rss_mib() - rss_before < 64  # 21 leaked models and tokenizers would show
    if torch.cuda.is_available():
        assert torch.cuda.memory_allocated() < 50e6


# ----------------------------------------------------------------- concurrency
def test_two_estimators_fit_in_two_threads(fast_params):
    X1, Y1 = make_texts(96, seed=21)
    X2, Y2 = make_texts(96, seed=22)
    tasks = {"a": (X1, Y1[:, :2]), "b": (X2, Y2[:, 1:])}
    results, errors = {}, []

    def work(name):
        try:
            X, Y = tasks[name]
            clf = BertMultiLabelClassifier(**{**fast_params, "max_epochs": 8, "lr": 3e-3})
            results[name] = (clf.fit(X, Y), X, Y)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for clf, X, Y in results.values():
        assert clf.n_labels_ == 2
        assert f1_score(Y, clf.predict(X), average="macro") > 0.8  # each learned its own task


def test_predict_from_several_threads_matches_single_thread(one_epoch_model):
    X, _ = make_texts(300, seed=31)
    expected = one_epoch_model.predict_proba(X)
    outputs, errors = [None] * 4, []

    def work(i):
        try:
            outputs[i] = one_epoch_model.predict_proba(X)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for out in outputs:
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_a_snapshot_is_refreshed_in_place_when_it_has_the_same_tensors():
    from sklearn_bert_multilabel._checkpoint import _snapshot

    module = torch.nn.Linear(3, 2)
    first = _snapshot(module)
    buffers = {k: v.data_ptr() for k, v in first.items()}
    with torch.no_grad():
        module.weight.add_(1.0)
    again = _snapshot(module, into=first)
    assert again is first and {k: v.data_ptr() for k, v in again.items()} == buffers
    for key, value in module.state_dict().items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=0)
        assert again[key].data_ptr() != value.data_ptr()  # a copy, not the weights themselves
    other = _snapshot(torch.nn.Linear(4, 2), into=first)
    assert other is not first and other["weight"].shape == (2, 4) and first["weight"].shape == (2, 3)


def test_an_interruption_while_the_weights_are_copied_keeps_the_previous_copy(
    fast_params, toy_data, monkeypatch
):
    import sklearn_bert_multilabel._checkpoint as checkpoint_module

    X, Y = toy_data
    params = {**fast_params, "max_epochs": 4, "train_split": None}
    original = checkpoint_module._snapshot
    copies = []

    def snapshot(module, into=None):
        if len(copies) == 2:  # the end of epoch 3: half a copy, then Ctrl-C
            if into is not None:
                next(iter(into.values())).fill_(123.0)
            raise KeyboardInterrupt
        fresh = original(module, into=into)
        copies.append({k: v.clone() for k, v in fresh.items()})
        return fresh

    monkeypatch.setattr(checkpoint_module, "_snapshot", snapshot)
    clf = BertMultiLabelClassifier(**params)
    kept = "interrupted during epoch 3; the model keeps the weights of epoch 2"
    with pytest.warns(UserWarning, match=kept):
        clf.fit(X, Y)
    state = clf.module_.state_dict()
    for key, value in copies[1].items():  # epoch 2's weights, untouched by the broken copy
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_quiet_loads_in_two_threads_keep_the_progress_bars_off_until_the_last_ends():
    """transformers' switch is global: a load that ends must not turn the bars back on
    under another that is still loading, nor leave them off after both."""
    from transformers.utils import logging as hf_logging

    from sklearn_bert_multilabel._pretrained import _progress_bars

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    try:
        first, second = _progress_bars(False), _progress_bars(False)
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)  # the first load ends while the second goes on
        assert not hf_logging.is_progress_bar_enabled()
        with _progress_bars(True):  # a verbose load leaves the switch as it is
            assert not hf_logging.is_progress_bar_enabled()
        second.__exit__(None, None, None)
        assert hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # bars the user turned off stay off
        with _progress_bars(False):
            pass
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


def test_a_fit_never_builds_its_head_while_another_thread_loads_an_encoder(fast_params, monkeypatch):
    """While from_pretrained runs, transformers 4.x turns torch.nn.init's functions into no-ops
    for the whole process. Emulated here with a NaN fill, put back as found when the load ends:
    a head built during another thread's load would start from NaN weights."""
    import time

    import transformers

    init = torch.nn.init
    monkeypatch.setattr(init, "kaiming_uniform_", init.kaiming_uniform_)  # put back after the test
    original = transformers.AutoModel.from_pretrained
    a_loading, b_loading = threading.Event(), threading.Event()

    def nan_fill(tensor, *args, **kwargs):
        with torch.no_grad():
            return tensor.fill_(float("nan"))

    def from_pretrained(*args, **kwargs):
        name = threading.current_thread().name
        if name == "b":
            a_loading.wait(timeout=5)
        found = init.kaiming_uniform_
        init.kaiming_uniform_ = nan_fill
        (a_loading if name == "a" else b_loading).set()
        try:
            if name == "a":  # keep loading until b loads too, or b cannot start
                b_loading.wait(timeout=1)
            time.sleep(0.05)
            return original(*args, **kwargs)
        finally:
            init.kaiming_uniform_ = found

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", from_pretrained)
    X, Y = make_texts(48, seed=23)
    results, errors = {}, []

    def work():
        try:
            clf = BertMultiLabelClassifier(**{**fast_params, "max_epochs": 1, "hidden_layer_sizes": (8,)})
            results[threading.current_thread().name] = clf.fit(X, Y).predict_proba(X)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, name=name) for name in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sorted(results) == ["a", "b"]
    assert all(np.isfinite(proba).all() for proba in results.values())
    assert init.kaiming_uniform_ is not nan_fill
