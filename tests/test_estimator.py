"""Behaviour of BertMultiLabelClassifier on the tiny random encoder."""

from __future__ import annotations

import copy
import pickle
import shutil
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from conftest import TRANSFORMERS_5, make_texts
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import f1_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

import sklearn_bert_multilabel._net as net_module
from sklearn_bert_multilabel import BertMultiLabelClassifier, InvalidInputError, SingleLabelWarning
from sklearn_bert_multilabel._pretrained import _dtype_keyword


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, toy_data):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(
        model_name=tiny_model_dir, max_epochs=8, batch_size=16, lr=3e-3, random_state=0, train_split=None
    )
    return clf.fit(X, Y)


def test_output_shapes_dtypes_and_ranges(fitted):
    X, _ = make_texts(10, seed=5)
    logits = fitted.decision_function(X)
    proba = fitted.predict_proba(X)
    pred = fitted.predict(X)
    assert logits.shape == proba.shape == pred.shape == (10, 3)
    assert logits.dtype == np.float32 and proba.dtype == np.float32
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba, 1 / (1 + np.exp(-logits)), rtol=1e-5)
    assert set(np.unique(pred)) <= {0, 1} and pred.dtype == np.int64
    np.testing.assert_array_equal(pred, (proba >= 0.5).astype(int))
    log_proba = fitted.predict_log_proba(X)
    assert log_proba.shape == (10, 3) and log_proba.dtype == np.float32 and (log_proba <= 0).all()
    np.testing.assert_allclose(log_proba, np.log(proba), rtol=1e-5)


def test_log_proba_stays_finite_where_the_probability_rounds_to_zero(fitted, monkeypatch):
    logits = np.array([[-200.0, 0.0, 50.0]], dtype=np.float32)
    monkeypatch.setattr(type(fitted), "decision_function", lambda self, X: logits)
    assert fitted.predict_proba(["x"])[0, 0] == 0
    np.testing.assert_allclose(fitted.predict_log_proba(["x"]), [[-200.0, np.log(0.5), 0.0]], atol=1e-6)


def test_fitted_attributes(fitted):
    np.testing.assert_array_equal(fitted.classes_, [0, 1, 2])
    assert fitted.n_labels_ == 3
    assert fitted.label_names_ == ["0", "1", "2"]
    np.testing.assert_array_equal(fitted.thresholds_, [0.5, 0.5, 0.5])
    assert isinstance(fitted.module_, torch.nn.Module)
    assert len(fitted.history_) == 8
    assert fitted.device_ == "cpu"


def test_learns_the_toy_task(fitted):
    X, Y = make_texts(200, seed=7)
    assert f1_score(Y, fitted.predict(X), average="macro") > 0.8


def test_probabilities_are_independent_not_softmax(fitted):
    X, Y = make_texts(50, seed=8)
    sums = fitted.predict_proba(X).sum(axis=1)
    assert not np.allclose(sums, 1.0)


def test_threshold_set_params_changes_predict_without_refit(fitted):
    clf = pickle.loads(pickle.dumps(fitted))
    X, _ = make_texts(20, seed=9)
    proba = clf.predict_proba(X)
    module = clf.module_
    clf.set_params(threshold=0.0)
    assert clf.predict(X).all()
    clf.set_params(threshold=[1.0, 0.0, 0.5])
    pred = clf.predict(X)
    assert not pred[:, 0].any() and pred[:, 1].all()
    np.testing.assert_array_equal(pred[:, 2], proba[:, 2] >= 0.5)
    assert clf.module_ is module  # no refit


def test_threshold_of_wrong_length_at_predict_is_clear(fitted):
    clf = pickle.loads(pickle.dumps(fitted))
    clf.threshold = [0.5, 0.5]
    with pytest.raises(ValueError, match="threshold has 2 values but the model has 3 labels"):
        clf.predict(["a game"])


def test_thresholds_by_label_name(fitted):
    """A dict or a labelled Series is matched by name, whatever its order; a Series with the
    default index stays positional."""
    clf = pickle.loads(pickle.dumps(fitted))  # label names "0", "1", "2"
    X, _ = make_texts(30, seed=12)
    proba = clf.predict_proba(X)
    for value in (
        {2: 0.7, 0: 0.2, 1: 0.5},
        {"1": 0.5, "2": 0.7, "0": 0.2},
        pd.Series([0.7, 0.2, 0.5], index=[2, 0, 1]),
        pd.Series([0.2, 0.5, 0.7]),
    ):
        clf.set_params(threshold=value)
        np.testing.assert_array_equal(clf.thresholds_, [0.2, 0.5, 0.7])
        np.testing.assert_array_equal(clf.predict(X), proba >= [0.2, 0.5, 0.7])
    clf.set_params(threshold={"0": 0.2, "1": 0.5})
    with pytest.raises(InvalidInputError, match=r"label of the model \('0', '1', '2'\): no value for '2'\."):
        clf.predict(X)


def test_per_label_parameters_by_name_follow_the_label_columns(fast_params, tmp_path):
    """Given by name, pos_weight lands on the right columns, and a threshold saved by name
    loads and predicts the same."""
    X, Y = make_texts(48, seed=13)
    frame = pd.DataFrame(Y, columns=["sports", "business", "positive"])
    clf = BertMultiLabelClassifier(
        pos_weight=pd.Series({"positive": 3.0, "sports": 1.0, "business": 2.0}),
        threshold={"business": 0.4, "positive": 0.6, "sports": 0.5},
        **fast_params,
    ).fit(X, frame)
    np.testing.assert_array_equal(clf.pos_weight_, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(clf.thresholds_, [0.5, 0.4, 0.6])
    by_position = BertMultiLabelClassifier(pos_weight=[1.0, 2.0, 3.0], **fast_params).fit(X, frame)
    np.testing.assert_array_equal(clf.predict_proba(X), by_position.predict_proba(X))
    clf.save(tmp_path / "m")
    loaded = BertMultiLabelClassifier.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.thresholds_, [0.5, 0.4, 0.6])
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    assert clone(loaded).get_params()["pos_weight"] == {"positive": 3.0, "sports": 1.0, "business": 2.0}
    clf.set_params(threshold=torch.tensor([0.25, 0.5, 0.75]))  # array-like that JSON cannot hold
    clf.save(tmp_path / "m")
    np.testing.assert_allclose(BertMultiLabelClassifier.load(tmp_path / "m").thresholds_, [0.25, 0.5, 0.75])


def test_pandas_rows_in_another_order_than_their_labels_warn(fast_params):
    """Rows are matched by position; X and Y indexes with the same labels in another order say
    they were meant to match by index. Each warning points at the caller's line."""
    X, Y = make_texts(24, seed=14)
    frame = pd.DataFrame(Y, columns=["a", "b", "c"])
    texts = pd.Series(X)
    shuffled = texts.sample(frac=1, random_state=0)
    clf = BertMultiLabelClassifier(**dict(fast_params, max_epochs=1))
    with pytest.warns(UserWarning, match=r"X and Y have the same index labels in another order") as record:
        clf.fit(shuffled, frame)
    assert record[0].filename == __file__
    with pytest.warns(UserWarning, match=r"X_val and Y_val .* e\.g\. Y_val\.loc\[X_val\.index\]"):
        clf.fit(texts, frame, validation_data=(shuffled, frame))
    for call in (clf.score, clf.fit_thresholds):
        with pytest.warns(UserWarning, match="rows are matched by position, not by index") as record:
            call(shuffled, frame)
        assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.score(shuffled, frame.loc[shuffled.index])  # aligned
        clf.score(shuffled.reset_index(drop=True), frame)  # another index: nothing to tell
        clf.score(shuffled.to_numpy(), frame)


def test_score_is_subset_accuracy(fitted):
    X, Y = make_texts(40, seed=10)
    expected = np.mean((fitted.predict(X) == Y).all(axis=1))
    assert fitted.score(X, Y) == pytest.approx(expected)


@pytest.mark.parametrize("pooling", ["cls", "pooler", "mean", "attention"])
def test_each_pooling_fits_and_predicts(pooling, fast_params, toy_data):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(pooling=pooling, **fast_params).fit(X, Y)
    proba = clf.predict_proba(X[:5])
    assert proba.shape == (5, 3) and np.isfinite(proba).all()


def test_attention_pooling_gives_padding_zero_weight(fast_params, toy_data):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(pooling="attention", **fast_params).fit(X, Y)
    # One short text alone vs. batched with a much longer one: same output.
    short, long = "a great game", " ".join(["market"] * 60)
    alone = clf.predict_proba([short])
    clf.set_params(predict_batch_size=2)
    together = clf.predict_proba([short, long])[:1]
    np.testing.assert_allclose(alone, together, atol=1e-5)


@pytest.mark.parametrize("sizes", [(), (16,), (16, 8)])
def test_head_sizes(sizes, fast_params, toy_data):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(hidden_layer_sizes=sizes, **fast_params).fit(X, Y)
    linears = [m for m in clf.module_.head if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [*sizes, 3]


@pytest.mark.parametrize(
    "convert",
    [
        lambda Y: Y,
        lambda Y: Y.tolist(),
        lambda Y: Y.astype(bool),
        lambda Y: Y.astype(np.float64),
        lambda Y: sp.csr_matrix(Y),
        lambda Y: pd.DataFrame(Y, columns=["sports", "business", "positive"]),
    ],
    ids=["ndarray", "list", "bool", "float", "sparse", "dataframe"],
)
def test_each_label_format_gives_the_same_model(convert, fast_params, toy_data):
    X, Y = toy_data
    reference = BertMultiLabelClassifier(**fast_params).fit(X, Y).predict_proba(X[:8])
    clf = BertMultiLabelClassifier(**fast_params).fit(X, convert(Y))
    np.testing.assert_allclose(clf.predict_proba(X[:8]), reference, atol=1e-6)
    if isinstance(convert(Y), pd.DataFrame):
        assert clf.label_names_ == ["sports", "business", "positive"]


@pytest.mark.parametrize(
    "convert",
    [
        tuple,
        np.array,
        lambda X: pd.Series(X, index=np.arange(len(X)) * 3 + 7),
        lambda X: pd.Series(X, dtype="string"),
        pd.Index,
    ],
    ids=["tuple", "ndarray", "series", "string-series", "index"],
)
def test_each_text_format(convert, fitted, toy_data):
    X, _ = toy_data
    np.testing.assert_allclose(fitted.predict_proba(convert(X[:6])), fitted.predict_proba(X[:6]), atol=1e-6)


def test_same_random_state_gives_identical_predictions(fast_params, toy_data):
    X, Y = toy_data
    params = dict(fast_params, train_split=0.2, dropout=0.3)
    a = BertMultiLabelClassifier(**params).fit(X, Y).predict_proba(X)
    b = BertMultiLabelClassifier(**params).fit(X, Y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    c = BertMultiLabelClassifier(**dict(params, random_state=1)).fit(X, Y).predict_proba(X)
    assert not np.allclose(a, c)


def test_fit_does_not_change_global_torch_rng(fast_params, toy_data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    BertMultiLabelClassifier(**fast_params).fit(*toy_data)
    np.testing.assert_array_equal(torch.rand(3), expected)


def test_cpu_fit_seeds_only_the_cpu_generator(fast_params, toy_data, monkeypatch):
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(("cuda", seed)))
    monkeypatch.setattr(torch.mps, "manual_seed", lambda seed: seeded.append(("mps", seed)))
    a = BertMultiLabelClassifier(**fast_params).fit(*toy_data)
    assert seeded == []  # a CPU fit neither uses nor restores the other devices' generators
    # Seeding the CPU generator alone is what torch.manual_seed did for it: the same model.
    monkeypatch.undo()

    class SeedsEverything:
        manual_seed = staticmethod(torch.manual_seed)

    monkeypatch.setattr(torch, "default_generator", SeedsEverything())
    b = BertMultiLabelClassifier(**fast_params).fit(*toy_data)
    monkeypatch.undo()
    X, _ = toy_data
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_length_aware_batching_does_not_change_results(fitted):
    X, _ = make_texts(40, seed=11)
    batched = fitted.predict_proba(X)
    one_by_one = np.vstack([fitted.predict_proba([x]) for x in X])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_batches_are_padded_to_their_own_longest_text(fast_params, toy_data, monkeypatch):
    X, Y = toy_data
    widths = []
    clf = BertMultiLabelClassifier(**dict(fast_params, max_length=128))
    original = torch.nn.Module.__call__

    def spy(module, *args, **kwargs):
        if "input_ids" in kwargs and type(module).__name__ == "MultiLabelTextModule":
            widths.append(kwargs["input_ids"].shape[1])
        return original(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", spy)
    clf.fit(X, Y)
    clf.predict_proba(X)
    longest = max(len(clf.tokenizer_(x)["input_ids"]) for x in X)
    assert widths and max(widths) == longest < 128
    assert len(set(widths)) > 1


def test_tokenizes_once_per_fit(fast_params, toy_data, monkeypatch):
    import sklearn_bert_multilabel._estimator as est

    calls = []
    original = est.tokenize

    def counting(tokenizer, texts, max_length):
        calls.append(len(texts))
        return original(tokenizer, texts, max_length)

    monkeypatch.setattr(est, "tokenize", counting)
    X, Y = toy_data
    BertMultiLabelClassifier(**dict(fast_params, max_epochs=3, train_split=0.2)).fit(X, Y)
    assert calls == [len(X)]


def test_clone_pickle_joblib_round_trip(fitted, tmp_path):
    X, _ = make_texts(12, seed=12)
    expected = fitted.predict_proba(X)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.predict_proba(X), expected)
    assert isinstance(fitted.module_, torch.nn.Module)  # pickling leaves the original intact
    joblib.dump(fitted, tmp_path / "clf.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "clf.joblib").predict_proba(X), expected)
    fresh = clone(fitted)
    assert not hasattr(fresh, "module_")
    assert fresh.get_params() == {**fitted.get_params(), "optimizer": fitted.optimizer}


def test_unfitted_predict_raises_not_fitted(tiny_model_dir):
    clf = BertMultiLabelClassifier(model_name=tiny_model_dir)
    for method in (clf.predict, clf.predict_proba, clf.decision_function):
        with pytest.raises(NotFittedError):
            method(["text"])
    with pytest.raises(NotFittedError):
        clf.fit_thresholds(["text"], [[1]])
    assert not hasattr(clf, "thresholds_")


def test_pipeline(fast_params, toy_data):
    X, Y = toy_data
    pipe = make_pipeline(
        FunctionTransformer(lambda texts: [t.upper() for t in texts]),
        BertMultiLabelClassifier(**fast_params),
    )
    pipe.fit(X, Y)
    assert pipe.predict(X[:4]).shape == (4, 3)
    assert pipe.predict_proba(X[:4]).shape == (4, 3)


def test_grid_search_over_head_sizes_and_thresholds(fast_params, toy_data):
    X, Y = toy_data
    search = GridSearchCV(
        BertMultiLabelClassifier(**dict(fast_params, max_epochs=1)),
        {"hidden_layer_sizes": [(), (8,)], "threshold": [0.3, 0.5]},
        scoring="f1_macro",
        cv=2,
    )
    search.fit(X, Y)
    assert len(search.cv_results_["params"]) == 4
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.predict(X[:3]).shape == (3, 3)


def test_freeze_encoder_trains_only_the_head(fast_params, toy_data):
    from transformers import AutoModel

    X, Y = toy_data
    clf = BertMultiLabelClassifier(freeze_encoder=True, **fast_params).fit(X, Y)
    pristine = AutoModel.from_pretrained(fast_params["model_name"])
    for (name, p), (_, q) in zip(
        clf.module_.encoder.named_parameters(), pristine.named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name
    untrained = BertMultiLabelClassifier(freeze_encoder=True, **dict(fast_params, max_epochs=1, lr=1e-9))
    assert not torch.equal(untrained.fit(X, Y).module_.head[-1].weight, clf.module_.head[-1].weight)


def test_balanced_pos_weight_is_computed_per_fit_and_capped(fast_params):
    X, _ = make_texts(40, seed=13)
    Y = np.zeros((40, 3), dtype=int)
    Y[:20, 0] = 1  # 20 / 20 -> 1.0
    Y[:4, 1] = 1  # 36 / 4 -> 9.0
    Y[:1, 2] = 1  # 39 / 1 -> capped at 10
    clf = BertMultiLabelClassifier(pos_weight="balanced", max_pos_weight=10.0, **fast_params).fit(X, Y)
    np.testing.assert_allclose(clf.pos_weight_, [1.0, 9.0, 10.0])
    explicit = BertMultiLabelClassifier(pos_weight=[1.0, 2.0, 3.0], **fast_params).fit(X, Y)
    np.testing.assert_allclose(explicit.pos_weight_, [1.0, 2.0, 3.0])


def test_positive_weight_raises_recall(fast_params):
    X, Y = make_texts(96, seed=14)
    plain = BertMultiLabelClassifier(**dict(fast_params, max_epochs=1)).fit(X, Y)
    weighted = BertMultiLabelClassifier(pos_weight=[20.0] * 3, **dict(fast_params, max_epochs=1)).fit(X, Y)
    assert weighted.predict_proba(X).mean() > plain.predict_proba(X).mean()


def test_validation_split_is_recorded_in_history(fast_params, toy_data):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(**dict(fast_params, train_split=0.25)).fit(X, Y)
    assert np.isfinite(clf.history_[:, "valid_loss"]).all()
    assert clf.history_[-1, "valid_batch_count"] == 2  # 24 texts, batches of 16


def test_validation_data_replaces_the_split(fast_params, toy_data):
    X, Y = toy_data
    Xv, Yv = make_texts(10, seed=15)
    clf = BertMultiLabelClassifier(**dict(fast_params, train_split=0.5))
    clf.fit(X, Y, validation_data=(Xv, Yv))
    assert clf.history_[-1, "valid_batch_count"] == 1
    assert sum(clf.history_[-1, "batches", :, "train_batch_size"]) == len(X)


def test_callable_split_gets_the_rows_and_the_labels(fast_params, toy_data):
    """A skorch-style train_split is called as skorch calls it: (dataset, y)."""
    from skorch.dataset import ValidSplit

    X, Y = toy_data
    clf = BertMultiLabelClassifier(**dict(fast_params, train_split=ValidSplit(4)))
    clf.fit(X, Y)
    assert sum(clf.history_[-1, "batches", :, "train_batch_size"]) == len(X) - len(X) // 4
    seen = []

    def last_rows_of_the_first_label(dataset, y):
        seen.append(y)
        rows = np.flatnonzero(y[:, 0])
        valid = set(rows[-4:].tolist())
        train = [i for i in range(len(dataset)) if i not in valid]
        return torch.utils.data.Subset(dataset, train), torch.utils.data.Subset(dataset, sorted(valid))

    clf = BertMultiLabelClassifier(**dict(fast_params, train_split=last_rows_of_the_first_label)).fit(X, Y)
    np.testing.assert_array_equal(seen[0], Y)
    assert sum(clf.history_[-1, "batches", :, "valid_batch_size"]) == 4


def test_split_returning_a_dataset_of_its_own_points_to_validation_data(fast_params, toy_data):
    """skorch's predefined_split returns the whole training set and a dataset of its own."""
    from skorch.dataset import Dataset
    from skorch.helper import predefined_split

    X, Y = toy_data
    split = predefined_split(Dataset(np.array(X[:8], dtype=object), Y[:8]))
    clf = BertMultiLabelClassifier(**dict(fast_params, train_split=split))
    with pytest.raises(InvalidInputError) as info:
        clf.fit(X, Y)
    assert "got _RowDataset and Dataset. For a validation set of your own" in str(info.value)
    assert "pass fit(X, Y, validation_data=(X_val, Y_val)) instead" in str(info.value)


def test_verbose_prints_epoch_table(fast_params, toy_data, capsys):
    BertMultiLabelClassifier(**dict(fast_params, verbose=1, train_split=0.2)).fit(*toy_data)
    out = capsys.readouterr().out
    assert "train_loss" in out and "valid_loss" in out


def test_silent_by_default(fast_params, toy_data, capsys):
    BertMultiLabelClassifier(**fast_params).fit(*toy_data)
    assert "train_loss" not in capsys.readouterr().out


def test_a_print_log_sink_still_gets_the_table_when_silent(fast_params, toy_data):
    lines = []
    BertMultiLabelClassifier(**fast_params, callbacks__print_log__sink=lines.append).fit(*toy_data)
    assert "train_loss" in lines[0]
    assert len(lines) == 2 + fast_params["max_epochs"]  # header, rule, one row per epoch


def test_callback_parameters_reach_unnamed_callbacks_by_their_numbered_class_name(fast_params, toy_data):
    from skorch.callbacks import EarlyStopping

    second = EarlyStopping(patience=9)
    params = dict(fast_params, train_split=0.25, callbacks=[EarlyStopping, second])
    BertMultiLabelClassifier(**params, callbacks__EarlyStopping_2__patience=3).fit(*toy_data)
    assert second.patience == 3


@pytest.mark.filterwarnings("ignore::sklearn_bert_multilabel.PrecisionWarning")  # CPUs without bf16
@pytest.mark.parametrize("precision", ["bf16"])
def test_bf16_precision_on_cpu(precision, fast_params, toy_data):
    X, Y = toy_data
    fp32 = BertMultiLabelClassifier(**fast_params).fit(X, Y)
    low = BertMultiLabelClassifier(precision=precision, **fast_params).fit(X, Y)
    assert next(low.module_.parameters()).dtype == torch.float32  # fp32 master weights
    np.testing.assert_allclose(low.predict_proba(X[:10]), fp32.predict_proba(X[:10]), atol=0.1)


@pytest.mark.parametrize("has_bf16", [True, False, None], ids=["bf16-cpu", "no-bf16-cpu", "unknown-cpu"])
def test_bf16_on_a_cpu_without_bf16_warns(has_bf16, fast_params, toy_data, monkeypatch):
    from sklearn_bert_multilabel import PrecisionWarning

    monkeypatch.setattr(net_module, "cpu_has_bf16", lambda: has_bf16)
    clf = BertMultiLabelClassifier(precision="bf16", **fast_params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(*toy_data)
    warned = [w for w in caught if issubclass(w.category, PrecisionWarning)]
    assert len(warned) == (1 if has_bf16 is False else 0)
    if warned:
        assert "precision='fp32'" in str(warned[0].message)
        assert warned[0].filename == __file__  # points at the caller's fit


@pytest.mark.parametrize("has_bf16, meaning", [(True, "bf16"), (False, "fp32"), (None, "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(
    has_bf16, meaning, fast_params, toy_data, monkeypatch
):
    monkeypatch.setattr(net_module, "cpu_has_bf16", lambda: has_bf16)
    X, Y = toy_data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "auto" never warns
        auto = BertMultiLabelClassifier(precision="auto", **fast_params).fit(X, Y)
    assert auto.get_params()["precision"] == "auto"  # the parameter is kept as given
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        same = BertMultiLabelClassifier(precision=meaning, **fast_params).fit(X, Y)
    # Same seed, same arithmetic: the same weights and the same probabilities, bit for bit.
    np.testing.assert_array_equal(auto.predict_proba(X), same.predict_proba(X))


def test_auto_precision_on_cuda_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert net_module.resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert net_module.resolve_precision("auto", "cuda") == "fp32"
    for given in ("fp32", "bf16", "fp16"):
        assert net_module.resolve_precision(given, "cpu") == given
    with pytest.raises(ValueError, match="auto"):  # never autocast to fp16 by mistake
        net_module.autocast_context("cpu", "auto")


def test_auto_precision_is_in_the_cache_key_as_what_it_means(fast_params, toy_data, tmp_path, monkeypatch):
    X, Y = toy_data
    params = dict(fast_params, precision="auto", memory=str(tmp_path / "cache"))
    monkeypatch.setattr(net_module, "cpu_has_bf16", lambda: False)
    fp32 = BertMultiLabelClassifier(**params).fit(X, Y)
    monkeypatch.setattr(net_module, "cpu_has_bf16", lambda: True)
    bf16 = BertMultiLabelClassifier(**params).fit(X, Y)
    assert bf16.cache_key_ != fp32.cache_key_  # a cache shared by two machines keeps both models


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_fit_and_cpu_reload(precision, fast_params, toy_data):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(device="cuda", precision=precision, **fast_params).fit(X, Y)
    assert next(clf.module_.parameters()).is_cuda
    expected = clf.predict_proba(X[:5])
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(restored.predict_proba(X[:5]), expected, atol=1e-5)


def test_gpu_pickle_loads_on_cpu_only_machine(fitted, monkeypatch):
    """A pickle whose device_ says CUDA loads on CPU when no GPU is present."""
    state = fitted.__getstate__()
    state["device_"] = "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    restored = BertMultiLabelClassifier.__new__(BertMultiLabelClassifier)
    restored.__setstate__(state)
    assert restored.device_ == "cpu"
    assert next(restored.module_.parameters()).device.type == "cpu"


def test_pickle_from_a_missing_gpu_index_loads_on_cpu(fitted, monkeypatch):
    """A pickle fitted on 'cuda:1' loads on CPU on a machine with one GPU."""
    state = fitted.__getstate__()
    state["device_"] = "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    restored = BertMultiLabelClassifier.__new__(BertMultiLabelClassifier)
    restored.__setstate__(state)
    assert restored.device_ == "cpu"
    assert next(restored.module_.parameters()).device.type == "cpu"


@pytest.mark.parametrize(
    "X, match",
    [(["ok", 5], r"X\[1\]=5"), ("text", "wrap it in a list"), ([], "X is empty")],
    ids=["number", "single-str", "empty"],
)
def test_bad_texts_at_predict_time(fitted, X, match):
    for method in (fitted.predict, fitted.predict_proba, fitted.decision_function):
        with pytest.raises(ValueError, match=match):
            method(X)


def test_label_count_mismatch_after_fit(fitted):
    with pytest.raises(ValueError, match="Y has 2 label columns but the model was fitted with 3"):
        fitted.score(["a", "b"], [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="Y has 4 label columns but the model was fitted with 3"):
        fitted.fit_thresholds(["a"], [[0, 1, 0, 1]])


def test_empty_and_whitespace_texts_predict(fitted):
    proba = fitted.predict_proba(["", "   ", "\n\t", "a game"])
    assert proba.shape == (4, 3) and np.isfinite(proba).all()
    np.testing.assert_allclose(proba[0], proba[1], atol=1e-6)  # both tokenise to [CLS] [SEP]


def test_model_folder_without_tokenizer_files_is_refused(tiny_model_dir, tmp_path):
    """transformers builds an all-[UNK] tokenizer from such a folder without complaint."""
    import shutil

    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny_model_dir) / name, folder / name)
    clf = BertMultiLabelClassifier(model_name=str(folder), max_epochs=1, train_split=None)
    if TRANSFORMERS_5:
        why = r"has only its 5 special tokens, so it turns every word of .* into its unknown token '\[UNK\]'"
    else:  # before version 5, transformers itself refuses to load such a tokenizer
        why = r"Could not load model_name=.*Can't load tokenizer"
    with pytest.raises(ValueError, match=rf"(?s){why}.*tokenizer.save_pretrained\(folder\)"):
        clf.fit(["a good game", "stocks fell"], [[1, 0], [0, 1]])


def test_model_name_that_is_a_file(tiny_model_dir):
    config = str(Path(tiny_model_dir) / "config.json")
    clf = BertMultiLabelClassifier(model_name=config, max_epochs=1, train_split=None)
    with pytest.raises(ValueError, match="is a file; pass the folder that holds config.json"):
        clf.fit(["a good game", "stocks fell"], [[1, 0], [0, 1]])


@pytest.mark.parametrize("damage", ["cut short", "empty", "not a checkpoint"])
def test_damaged_weights_file_is_named_with_the_fix(tiny_model_dir, tmp_path, damage):
    """safetensors' and torch.load's own errors name neither the model nor what to do."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    if damage == "cut short":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty":
        weights.write_bytes(b"")
    else:  # a .bin file that torch.load cannot read
        weights.unlink()
        (folder / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    clf = BertMultiLabelClassifier(model_name=str(folder), max_epochs=1, train_split=None)
    why = r"Could not read the weights of model_name=.*model'.*damaged"
    if damage == "not a checkpoint" and not TRANSFORMERS_5:
        why = (
            r"Could not load model_name=.*Unable to load weights from .*pytorch_model.bin"  # its own OSError
        )
    with pytest.raises(ValueError, match=why):
        clf.fit(["a good game", "stocks fell"], [[1, 0], [0, 1]])


@pytest.mark.parametrize(
    "content, why",
    [
        ('{"model_type": "be', "JSONDecodeError"),  # cut short
        ("", "JSONDecodeError"),
        ("[1, 2]", "it holds a JSON list, not an object"),  # transformers: a TypeError from its config class
        (b"\xff\xfe\x00", "UnicodeDecodeError"),
    ],
)
def test_damaged_config_file_is_named_with_the_fix(tiny_model_dir, tmp_path, content, why):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "config.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    clf = BertMultiLabelClassifier(model_name=str(folder), max_epochs=1, train_split=None)
    with pytest.raises(ValueError, match=r"Could not read config.json of model_name=") as info:
        clf.fit(["a good game", "stocks fell"], [[1, 0], [0, 1]])
    message = str(info.value)
    assert why in message and "model.save_pretrained(folder)" in message
    assert "hub" not in message  # a local folder: nothing to do with the hub


def test_damaged_tokenizer_file_is_named_with_the_fix(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "trunc', encoding="utf-8")
    clf = BertMultiLabelClassifier(model_name=str(folder), max_epochs=1, train_split=None)
    with pytest.raises(
        ValueError, match=r"Could not read the tokenizer of model_name=.*tokenizer.save_pretrained"
    ):
        clf.fit(["a good game", "stocks fell"], [[1, 0], [0, 1]])


def test_single_label_column_warns_about_sklearn_scorers(tiny_model_dir):
    """scikit-learn's 'roc_auc' scorer flips the scores of a one-entry classes_; the warning says so."""
    from sklearn.metrics import get_scorer, roc_auc_score

    X, Y_all = make_texts(64, seed=31)
    Y = Y_all[:, :1]
    clf = BertMultiLabelClassifier(
        model_name=tiny_model_dir, max_epochs=3, lr=1e-3, batch_size=16, train_split=None, random_state=0
    )
    with pytest.warns(SingleLabelWarning, match=r"single label column.*'roc_auc' scorer gives 1 - AUC"):
        clf.fit(X[:32], Y[:32])
    auc = roc_auc_score(Y[32:], clf.predict_proba(X[32:]))
    assert auc != 0.5
    # What the warning describes, and the callable it recommends instead.
    assert get_scorer("roc_auc")(clf, X[32:], Y[32:]) == pytest.approx(1 - auc)
    recommended = lambda est, X, y: roc_auc_score(y, est.predict_proba(X))  # noqa: E731
    assert recommended(clf, X[32:], Y[32:]) == pytest.approx(auc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two columns: no warning
        clone(clf).set_params(random_state=1).fit(X[:32], Y_all[:32, :2])


def test_encoder_saved_in_half_precision_trains_in_float32(tiny_model_dir, tmp_path):
    """transformers loads a checkpoint in its saved dtype; the head would refuse float16 inputs."""
    from transformers import AutoModel, AutoTokenizer

    folder = tmp_path / "fp16-encoder"
    AutoModel.from_pretrained(tiny_model_dir).half().save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    if TRANSFORMERS_5:  # earlier versions load float32 unless told otherwise
        assert next(AutoModel.from_pretrained(folder).parameters()).dtype == torch.float16
    X, Y = make_texts(48, seed=32)
    keyword = f"encoder__{_dtype_keyword()}"
    runs = [{keyword: torch.float32}, {}, {"freeze_encoder": True}]
    if TRANSFORMERS_5:  # which reads dtype names too, such as JSON can hold (saved below)
        runs.append({keyword: "float32"})
    for params in runs:
        clf = BertMultiLabelClassifier(
            model_name=str(folder), max_epochs=1, train_split=None, random_state=0, **params
        ).fit(X, Y)
        assert {p.dtype for p in clf.module_.parameters()} == {torch.float32}
        proba = clf.predict_proba(X)
        assert proba.shape == (48, 3) and np.isfinite(proba).all()
    clf.save(tmp_path / "saved")
    np.testing.assert_array_equal(BertMultiLabelClassifier.load(tmp_path / "saved").predict_proba(X), proba)


def test_encoder_options_the_model_does_not_take_are_named(fast_params, toy_data):
    clf = BertMultiLabelClassifier(**fast_params, encoder__attn_implementation="eager", encoder__hiden_size=8)
    with pytest.raises(
        TypeError, match=r"'hiden_size'.*encoder__attn_implementation, encoder__hiden_size go to"
    ):
        clf.fit(*toy_data)
    clf = BertMultiLabelClassifier(**fast_params, encoder__attn_implementation="eager").fit(*toy_data)
    assert clf.module_.encoder.config._attn_implementation == "eager"


def test_encoder_decoder_model_is_refused_clearly(tiny_model_dir, tmp_path):
    """AutoModel gives T5Model for a T5 folder, whose forward pass fails without decoder inputs."""
    from transformers import AutoTokenizer, T5Config, T5Model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    sizes = dict(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)
    config = T5Config(vocab_size=len(tokenizer), decoder_start_token_id=0, **sizes)
    T5Model(config).save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    clf = BertMultiLabelClassifier(model_name=str(tmp_path / "t5"), max_epochs=1, train_split=None)
    match = "loads as T5Model, an encoder-decoder model .* use an encoder-only model"
    with pytest.raises(ValueError, match=match):
        clf.fit(["a good game", "stocks fell"], [[1, 0], [0, 1]])


def test_roberta_style_position_offset_limits_max_length(tiny_model_dir, tmp_path):
    """RoBERTa numbers positions from padding_idx + 1: 34 position embeddings hold 32 tokens."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    sizes = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    config = RobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=34, pad_token_id=1, **sizes)
    RobertaModel(config).save_pretrained(tmp_path / "roberta")
    tokenizer.save_pretrained(tmp_path / "roberta")
    X, Y = make_texts(16, seed=33)
    X = [text + " the" * 60 for text in X]  # every text longer than max_length
    params = dict(model_name=str(tmp_path / "roberta"), max_epochs=1, train_split=None, random_state=0)
    with pytest.raises(ValueError, match="max_length=33 exceeds the 32 positions"):
        BertMultiLabelClassifier(max_length=33, **params).fit(X, Y)
    proba = BertMultiLabelClassifier(max_length=32, **params).fit(X, Y).predict_proba(X)
    assert proba.shape == (16, 3) and np.isfinite(proba).all()


def test_folder_without_config_names_the_subfolder_that_has_one(tiny_model_dir, tmp_path):
    """A sentence-transformers layout keeps the encoder in a subfolder such as 0_Transformer."""
    import shutil

    shutil.copytree(tiny_model_dir, tmp_path / "st" / "0_Transformer")
    (tmp_path / "st" / "modules.json").write_text("[]", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    fit_data = (["a good game", "stocks fell"], [[1, 0], [0, 1]])
    hints = {"st": r" Its subfolder '0_Transformer' has one: pass that folder\.", "empty": r"\)\.$"}
    for folder, hint in hints.items():
        clf = BertMultiLabelClassifier(model_name=str(tmp_path / folder), max_epochs=1, train_split=None)
        with pytest.raises(ValueError, match=f"is a folder without config.json.*{hint}"):
            clf.fit(*fit_data)
    inner = str(tmp_path / "st" / "0_Transformer")
    clf = BertMultiLabelClassifier(model_name=inner, max_epochs=1, train_split=None)
    assert clf.fit(*fit_data).predict(["a win"]).shape == (1, 2)


def test_small_vocabulary_of_its_own_is_accepted(tmp_path):
    """A protein-style vocabulary has no piece for English words but is not a missing tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    letters = list("ACDEFGHIKLMNPQRSTVWY")
    (tmp_path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters]) + "\n"
    )
    tokenizer = BertTokenizerFast.from_pretrained(str(tmp_path), do_lower_case=False)
    assert tokenizer.convert_ids_to_tokens(tokenizer("M K T")["input_ids"])[1:-1] == ["M", "K", "T"]
    assert set(tokenizer("the cat", add_special_tokens=False)["input_ids"]) == {tokenizer.unk_token_id}
    tokenizer.save_pretrained(str(tmp_path))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertModel(config).save_pretrained(str(tmp_path))
    rng = np.random.default_rng(0)
    X = [" ".join(rng.choice(letters, size=12)) for _ in range(16)]
    Y = np.array([[int("W" in x), int("C" in x)] for x in X])
    clf = BertMultiLabelClassifier(model_name=str(tmp_path), max_epochs=1, train_split=None, random_state=0)
    assert clf.fit(X, Y).predict_proba(X).shape == (16, 2)


def test_label_columns_after_fit_must_match_label_names(tiny_model_dir):
    """Labels are matched by position: a reordered DataFrame would give silently wrong thresholds."""
    X, Y = make_texts(48, seed=34)
    names = ["sports", "business", "positive"]
    frame = pd.DataFrame(Y, columns=names)
    clf = BertMultiLabelClassifier(model_name=tiny_model_dir, max_epochs=1, train_split=None, random_state=0)
    clf.fit(X, frame)
    reordered = frame[["positive", "sports", "business"]]
    for call in (clf.fit_thresholds, clf.score):
        with pytest.raises(ValueError, match=r"same labels in another order .* Y\[clf.label_names_\]"):
            call(X, reordered)
    with pytest.raises(ValueError, match=r"Y has other labels than the model .* column 0 is 'a'"):
        clf.score(X, frame.set_axis(["a", "b", "c"], axis=1))
    assert 0 <= clf.score(X, frame) <= 1 and 0 <= clf.score(X, Y) <= 1  # same order, or no names
    assert clf.score(X, pd.DataFrame(Y)) == clf.score(X, Y)  # pandas' default columns 0, 1, 2 name nothing
    with pytest.raises(ValueError, match=r"Y has other labels than the model .* column 0 is '1'"):
        clf.score(X, pd.DataFrame(Y, columns=[1, 2, 3]))  # integer names, but not pandas' default
    unnamed = clone(clf).fit(X, Y)  # names 0, 1, 2: nothing to check a DataFrame against
    assert 0 <= unnamed.score(X, reordered) <= 1


def test_weights_missing_from_the_checkpoint_are_named(tiny_model_dir, tmp_path):
    """A masked-language-model checkpoint has no pooler; a wrong folder leaves layers random."""
    from transformers import AutoConfig, AutoTokenizer, BertForMaskedLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    mlm = tmp_path / "mlm"
    BertForMaskedLM(config).save_pretrained(mlm)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(mlm)
    X, Y = make_texts(32, seed=33)
    params = dict(model_name=str(mlm), max_epochs=1, train_split=None, random_state=0)
    with pytest.warns(
        UserWarning,
        match=r"no weights for it \(pooler.dense.bias, pooler.dense.weight\): it starts random\. ",
    ):
        BertMultiLabelClassifier(pooling="pooler", **params).fit(X, Y)
    with pytest.warns(UserWarning, match="it starts random, and freeze_encoder=True keeps it so"):
        BertMultiLabelClassifier(pooling="pooler", freeze_encoder=True, **params).fit(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the other poolings do not use the pooler
        BertMultiLabelClassifier(pooling="cls", **params).fit(X, Y)

    deeper = shutil.copytree(tiny_model_dir, tmp_path / "deeper")  # its config asks for one more layer
    layers = config.num_hidden_layers
    config.num_hidden_layers = layers + 1
    config.save_pretrained(deeper)
    match = (
        rf"\d+ of the \d+ weight tensors .* start random \(encoder\.layer\.{layers}\..* the encoder is not"
    )
    with pytest.warns(UserWarning, match=match):
        BertMultiLabelClassifier(**{**params, "model_name": str(deeper)}).fit(X, Y)


def test_tokens_added_without_resizing_the_embeddings_are_refused(tiny_model_dir, tmp_path):
    """Their ids are beyond the embedding table: torch would fail with 'index out of range'."""
    from transformers import AutoTokenizer

    folder = shutil.copytree(tiny_model_dir, tmp_path / "added")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    size = len(tokenizer)  # the embedding table's rows
    tokenizer.add_tokens(["newword1", "newword2"])
    tokenizer.save_pretrained(folder)
    clf = BertMultiLabelClassifier(model_name=str(folder), max_epochs=1, train_split=None)
    match = (
        rf"has {size + 2} tokens, but the encoder embeds only ids below {size}: 'newword1', 'newword2' "
        ".*resize_token_embeddings"
    )
    with pytest.raises(InvalidInputError, match=match):
        clf.fit(["a newword1 game", "stocks fell"], [[1, 0], [0, 1]])


def test_model_name_may_be_a_path_object(tiny_model_dir, tmp_path):
    X, Y = make_texts(32, seed=34)
    params = dict(max_epochs=1, train_split=None, random_state=0, memory=tmp_path / "cache")
    as_text = BertMultiLabelClassifier(model_name=tiny_model_dir, **params).fit(X, Y)
    as_path = BertMultiLabelClassifier(model_name=Path(tiny_model_dir), **params).fit(X, Y)
    assert as_path.cache_key_ == as_text.cache_key_  # one model, one cache entry
    np.testing.assert_array_equal(as_path.predict_proba(X), as_text.predict_proba(X))
    as_path.save(tmp_path / "saved")
    loaded = BertMultiLabelClassifier.load(tmp_path / "saved")
    assert loaded.get_params()["model_name"] == tiny_model_dir
    with pytest.raises(
        InvalidInputError, match=r"model_name must be a hub id or a local folder path \(str or path\)"
    ):
        BertMultiLabelClassifier(model_name=3).fit(X, Y)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"predict_batch_size": 0}, r"predict_batch_size must be an int >= 1, got 0"),
        ({"max_length": 10**6}, r"max_length=1000000 exceeds the \d+ positions"),
        ({"max_length": 2}, r"max_length=2 leaves no room for text after the tokenizer's 2 special tokens"),
        ({"long_text": "chunk", "stride": 100, "max_length": 16}, r"stride=100 must be smaller than the 14"),
        ({"long_text": "chunk", "max_chunks": 0}, r"max_chunks must be None or an int >= 1, got 0"),
        ({"long_text": "windows"}, r"long_text must be 'truncate' or 'chunk'"),
        ({"precision": "fp8"}, r"precision must be one of"),
        ({"precision": "fp16"}, r"precision='fp16' needs a CUDA device; this model is on cpu"),
        ({"memory": 123}, r"memory must be None, a folder path or a joblib.Memory, got 123"),
        ({"memory": __file__}, r"memory=.* is a file; give a folder"),
    ],
)
def test_parameters_changed_after_fit_are_checked_when_predicting(one_epoch_model, params, match):
    """Predictions read these; set_params after fit must not reach torch with them."""
    clf = copy.deepcopy(one_epoch_model).set_params(**params)
    long_text = " ".join(["the match was great"] * 200)
    for method in (clf.predict_proba, clf.decision_function, clf.predict):
        with pytest.raises(InvalidInputError, match=match):
            method([long_text, "a short one"])
    with pytest.raises(InvalidInputError, match=match):
        clf.fit_thresholds([long_text, "a short one"], [[1, 0, 0], [0, 1, 0]])


def test_max_length_must_leave_room_for_text(tiny_model_dir):
    clf = BertMultiLabelClassifier(model_name=tiny_model_dir, max_length=2, max_epochs=1, train_split=None)
    with pytest.raises(InvalidInputError, match="max_length=2 leaves no room for text"):
        clf.fit(["a long match report " * 50, "stocks fell"], [[1, 0], [0, 1]])


def test_skorch_scoring_callbacks_get_label_predictions(tiny_model_dir):
    """EpochScoring("f1_macro") needs 0/1 predictions from the net, as the estimator gives at 0.5."""
    from sklearn.metrics import f1_score
    from skorch.callbacks import EpochScoring

    X, Y = make_texts(64, seed=35)
    X_val, Y_val = make_texts(32, seed=36)
    scoring = EpochScoring("f1_macro", lower_is_better=False, name="valid_f1_at_half")
    clf = BertMultiLabelClassifier(
        model_name=tiny_model_dir, max_epochs=2, lr=1e-3, random_state=0, callbacks=[scoring]
    ).fit(X, Y, validation_data=(X_val, Y_val))
    scores = clf.history_[:, "valid_f1_at_half"]
    assert len(scores) == 2 and all(0 <= score <= 1 for score in scores)
    expected = f1_score(Y_val, clf.predict(X_val), average="macro", zero_division=0)
    assert scores[-1] == pytest.approx(expected)


@pytest.mark.parametrize(
    "extra",
    [{}, {"freeze_encoder": True}, {"long_text": "chunk", "max_length": 8}],
    ids=["tokens", "cached features", "windows"],
)
def test_scoring_callbacks_without_their_cache_read_the_texts_in_order(tiny_model_dir, extra):
    """Without its cache, EpochScoring predicts the validation dataset again and reads its labels:
    the texts come out of length-sorted batches, and must be matched with their own labels."""
    from sklearn.metrics import f1_score
    from skorch.callbacks import EpochScoring

    X, Y = make_texts(64, seed=35)
    X_val, Y_val = make_texts(40, seed=36)
    scores = {}
    for cached in (True, False):
        scoring = EpochScoring("f1_macro", use_caching=cached, name="f1_at_half")
        clf = BertMultiLabelClassifier(
            model_name=tiny_model_dir, max_epochs=2, lr=1e-3, random_state=0, callbacks=[scoring], **extra
        ).fit(X, Y, validation_data=(X_val, Y_val))
        scores[cached] = clf.history_[-1, "f1_at_half"]
    assert scores[False] == scores[True]
    expected = f1_score(Y_val, clf.predict(X_val), average="macro", zero_division=0)
    assert scores[False] == pytest.approx(expected)
