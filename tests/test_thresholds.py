"""Per-label threshold tuning."""

from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import pytest
from conftest import make_texts
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import fbeta_score, precision_score, recall_score

from sklearn_bert_multilabel import (
    BertMultiLabelClassifier,
    InvalidInputError,
    UnusedLabelWarning,
    tune_thresholds,
)
from sklearn_bert_multilabel._thresholds import (
    DEFAULT_THRESHOLD,
    best_threshold,
    bound_labels,
    constrained_threshold,
)


def brute_force(scores, y, beta):
    candidates = np.unique(np.concatenate([scores, [0.0, 1.0]]))
    return max(fbeta_score(y, scores >= t, beta=beta, zero_division=0) for t in candidates)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_matches_brute_force(beta, seed):
    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.2
    scores = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1).round(2)  # with ties
    t = best_threshold(scores, y, beta)
    achieved = fbeta_score(y, scores >= t, beta=beta, zero_division=0)
    assert achieved == pytest.approx(brute_force(scores, y, beta))


@pytest.mark.parametrize("seed", range(5))
def test_negative_scores_keep_every_cut(seed):
    # Logits (decision_function) are negative for most rows; the best cut may predict every row.
    rng = np.random.default_rng(seed)
    y = rng.random(60) < 0.85
    scores = rng.normal(-3.0 + 0.5 * y, 1.0)
    for beta in (0.5, 1.0, 2.0):
        t = best_threshold(scores, y, beta)
        achieved = fbeta_score(y, scores >= t, beta=beta, zero_division=0)
        assert achieved == pytest.approx(brute_force(scores, y, beta))
    t, met = constrained_threshold(scores, y, "precision@recall", 1.0)
    assert met and recall_score(y, scores >= t) == 1.0


def test_every_row_positive_with_negative_scores():
    logits = np.array([[2.0, 0.5], [-3.0, 4e-7]])
    Y = np.array([[1, 1], [1, 1]])
    for metric in ("f1", "precision@recall=1", "recall@precision=1"):
        t = tune_thresholds(logits, Y, metric)
        assert (logits >= t).all(), metric
    assert 0.0 <= tune_thresholds(logits, Y)[1] < 4e-7  # scores >= 0 keep a threshold >= 0


def test_scores_one_float_apart_are_cut_between():
    scores = np.array([np.nextafter(0.1, 1.0), 0.1])  # their mean rounds to 0.1
    t = best_threshold(scores, np.array([1, 0]))
    assert (scores >= t).tolist() == [True, False]


@settings(deadline=None, derandomize=True, database=None, max_examples=200)
@given(
    pairs=st.lists(
        st.tuples(
            st.one_of(
                st.floats(-1e300, 1e300, allow_nan=False),
                st.sampled_from([0.0, 1.0, -1.0, 0.5, 5e-7, 1e-300]),  # ties and edges
            ),
            st.booleans(),
        ),
        min_size=1,
        max_size=25,
    ),
    beta=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_any_real_scores_get_the_best_cut(pairs, beta):
    scores = np.array([score for score, _ in pairs])
    y = np.array([label for _, label in pairs])
    t = best_threshold(scores, y, beta)
    if y.any():
        achieved = fbeta_score(y, scores >= t, beta=beta, zero_division=0)
        assert achieved == pytest.approx(brute_force(scores, y, beta))
        t, met = constrained_threshold(scores, y, "precision@recall", 1.0)
        assert met and recall_score(y, scores >= t) == 1.0
        best = brute_force_constrained(scores, y, "recall@precision", 0.5)
        t, met = constrained_threshold(scores, y, "recall@precision", 0.5)
        assert met == (best is not None)
        if met:
            assert rates(scores, y, t)[::-1] == pytest.approx(best)


def rates(scores, y, t):
    predicted = scores >= t
    return precision_score(y, predicted, zero_division=0), recall_score(y, predicted)


def brute_force_constrained(scores, y, kind, level):
    """Best (objective, constraint) over every threshold that predicts at least one positive."""
    best = None
    for t in np.unique(scores):
        precision, recall = rates(scores, y, t)
        objective, constraint = (precision, recall) if kind == "precision@recall" else (recall, precision)
        if constraint >= level - 1e-12 and (best is None or (objective, constraint) > best):
            best = (objective, constraint)
    return best


@pytest.mark.parametrize(
    "kind, level",
    [
        ("precision@recall", 0.5),
        ("precision@recall", 0.9),
        ("precision@recall", 1.0),
        ("recall@precision", 0.7),
    ],
)
@pytest.mark.parametrize("seed", range(5))
def test_constrained_threshold_matches_brute_force(kind, level, seed):
    rng = np.random.default_rng(seed)
    y = rng.random(200) < 0.2
    scores = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1).round(2)  # with ties
    t, met = constrained_threshold(scores, y, kind, level)
    precision, recall = rates(scores, y, t)
    objective, constraint = (precision, recall) if kind == "precision@recall" else (recall, precision)
    best = brute_force_constrained(scores, y, kind, level)
    assert met and best is not None
    assert constraint >= level - 1e-12
    assert (objective, constraint) == pytest.approx(best)


def test_recall_at_precision_out_of_reach_warns_and_predicts_nothing():
    proba = np.array([[0.9, 0.9], [0.8, 0.8], [0.7, 0.1], [0.6, 0.2]])
    Y = np.array([[0, 1], [1, 1], [1, 0], [0, 0]])  # label "a": precision never above 2/3
    with pytest.warns(UserWarning, match=r"precision 0.9 .* label\(s\) a; they get a threshold above"):
        t = tune_thresholds(proba, Y, "recall@precision=0.9", label_names=["a", "b"])
    assert 0.9 < t[0] <= 1.0 and not (proba[:, 0] >= t[0]).any()  # no false alarm, recall 0
    import pandas as pd

    with pytest.warns(UserWarning, match=r"label\(s\) sports; they get"):  # a DataFrame's names
        tune_thresholds(proba, pd.DataFrame(Y, columns=["sports", "news"]), "recall@precision=0.9")
    assert rates(proba[:, 1], Y[:, 1], t[1]) == (1.0, 1.0)
    saturated = np.array([1.0, 1.0, 0.5])  # probabilities: the threshold stays at most 1
    t, met = constrained_threshold(saturated, np.array([0, 1, 1]), "recall@precision", 0.9)
    assert not met and t == 1.0
    logits = np.array([3.0, -1.0, 2.0])  # other scores: just above the highest
    t, met = constrained_threshold(logits, np.array([0, 1, 0]), "recall@precision", 0.9)
    assert not met and 3.0 < t < 3.0 + 1e-9


@pytest.mark.parametrize(
    "metric", ["precision@recall=1.5", "recall@precision=", "recall@precision=0", "precision@recall=x", "f3"]
)
def test_unknown_threshold_metrics_are_refused(metric):
    with pytest.raises(ValueError, match="metric must be one of .*precision@recall=R"):
        tune_thresholds(np.array([[0.5]]), np.array([[1]]), metric)


def test_tune_thresholds_takes_array_likes_and_checks_shapes():
    import pandas as pd

    proba = [[0.9, 0.2], [0.6, 0.1], [0.4, 0.3], [0.1, 0.05]]
    Y = pd.DataFrame({"a": [1, 1, 0, 0], "b": [0, 0, 1, 0]})
    np.testing.assert_allclose(tune_thresholds(proba, Y), [0.5, 0.25])
    with pytest.raises(ValueError, match=r"same shape .* got \(4, 2\) and \(4, 1\)"):
        tune_thresholds(proba, Y[["a"]])
    frame = pd.DataFrame(proba, columns=["a", "b"])
    np.testing.assert_allclose(tune_thresholds(frame, Y), [0.5, 0.25])
    with pytest.raises(InvalidInputError, match=r"proba has the same labels in another order than Y"):
        tune_thresholds(frame, Y[["b", "a"]])  # matched by position, it would swap the thresholds
    np.testing.assert_allclose(tune_thresholds(pd.DataFrame(proba), Y), [0.5, 0.25])  # columns 0, 1: no names


@pytest.mark.parametrize(
    "proba, Y, match",
    [
        (
            [[0.2, np.nan], [0.7, 0.1]],
            [[0, 1], [1, 0]],
            r"proba contains 1 NaN value\(s\) \(first at row 0, column 1\)",
        ),
        ([[0.2, 0.4], [0.7, 0.1]], [[0, 1], [1, -1]], r"Y must be binary \(0/1\); found other values \[-1\]"),
        ([[0.2, 0.4], [0.7, 0.1]], [[0, np.nan], [1, 0]], r"Y contains 1 NaN value"),
        ([[0.2, "x"], [0.7, 0.1]], [[0, 1], [1, 0]], "proba must hold numbers only"),
        ([0.2, 0.7], [0, 1], r"(?s)Y must be 2-D.*proba must be 2-D"),
        ([[0, 1], [1, 0]], [[0.2, 0.4], [0.7, 0.1]], r"(?s)Y must be binary.*the arguments look swapped"),
    ],
    ids=["nan-scores", "minus-one", "nan-labels", "text-scores", "1-d", "swapped"],
)
def test_tune_thresholds_refuses_bad_input(proba, Y, match):
    with pytest.raises(InvalidInputError, match=match):
        tune_thresholds(proba, Y)


def test_tune_thresholds_takes_sparse_and_text_labels():
    import scipy.sparse as sp

    proba = np.array([[0.9, 0.2], [0.6, 0.1], [0.4, 0.3], [0.1, 0.05]])
    Y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    expected = tune_thresholds(proba, Y)
    np.testing.assert_array_equal(tune_thresholds(proba, sp.csr_matrix(Y)), expected)
    np.testing.assert_array_equal(tune_thresholds(proba, Y.astype(str)), expected)
    with pytest.raises(InvalidInputError) as info:  # bad labels, but scores that are not 0/1
        tune_thresholds(proba, Y * 2)
    assert "swapped" not in str(info.value)


@pytest.mark.parametrize("metric", ["f1", "f0.5", "f2", "precision@recall=0.6", "recall@precision=0.7"])
@pytest.mark.parametrize("seed", range(4))
def test_integer_weights_tune_as_repeated_rows_and_zero_as_left_out(metric, seed):
    rng = np.random.default_rng(seed)
    proba = np.round(rng.random((60, 3)), 2)  # rounded: ties between rows too
    Y = (rng.random((60, 3)) < proba).astype(int)
    weights = rng.integers(0, 4, size=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a precision floor out of reach
        weighted = tune_thresholds(proba, Y, metric, sample_weight=weights)
        repeated = tune_thresholds(np.repeat(proba, weights, 0), np.repeat(Y, weights, 0), metric)
    # The same cut: the thresholds may differ only inside the gap between two kept scores.
    kept = proba[weights > 0]
    for j in range(3):
        assert (kept[:, j] >= weighted[j]).tolist() == (kept[:, j] >= repeated[j]).tolist(), j


def test_weighted_thresholds_maximise_the_weighted_score():
    rng = np.random.default_rng(3)
    proba = rng.random((80, 1))
    Y = (rng.random((80, 1)) < proba).astype(int)
    weights = np.where(Y[:, 0] == 0, 3.0, 0.5) * rng.random(80)  # false positives cost more
    t = tune_thresholds(proba, Y, sample_weight=weights)[0]
    best = fbeta_score(Y[:, 0], proba[:, 0] >= t, beta=1.0, sample_weight=weights)
    for candidate in np.unique(proba):
        assert fbeta_score(Y[:, 0], proba[:, 0] >= candidate, beta=1.0, sample_weight=weights) <= best + 1e-12
    assert tune_thresholds(proba, Y)[0] != t  # the weighted optimum is another cut
    assert tune_thresholds(proba, Y, sample_weight=weights * 1e307)[0] == t  # only the ratios matter


def test_tune_thresholds_checks_the_weights_with_the_rest():
    proba, Y = np.full((4, 2), 0.5), np.ones((4, 2))
    with pytest.raises(InvalidInputError) as info:
        tune_thresholds(proba[:, :1], Y, sample_weight=[1, 2, -1, 1])
    message = str(info.value)
    assert "sample_weight contains 1 negative value(s) (first at row 2, -1)" in message
    assert "same shape" in message
    with pytest.raises(InvalidInputError, match="sample_weight has 3 weights but Y has 4 rows"):
        tune_thresholds(proba, Y, sample_weight=[1, 2, 3])
    # A label whose positives all weigh 0 has nothing to tune on: the default.
    scores, labels = (
        np.array([[0.9, 0.9], [0.8, 0.8], [0.4, 0.2], [0.1, 0.1]]),
        np.array([[1, 1], [1, 0], [0, 0], [0, 1]]),
    )
    assert tune_thresholds(scores, labels, sample_weight=[0, 1, 1, 0]).tolist() == pytest.approx(
        [0.6, DEFAULT_THRESHOLD]
    )


def test_no_positive_keeps_default():
    assert best_threshold(np.array([0.1, 0.9]), np.array([0, 0]), 1.0) == DEFAULT_THRESHOLD


def test_tune_thresholds_per_column_far_from_half():
    rng = np.random.default_rng(0)
    Y = rng.random((500, 3)) < 0.3
    proba = np.column_stack(
        [
            np.where(Y[:, 0], 0.15, 0.05) + rng.normal(0, 0.01, 500),  # optimum near 0.1
            np.where(Y[:, 1], 0.95, 0.85) + rng.normal(0, 0.01, 500),  # optimum near 0.9
            np.where(Y[:, 2], 0.7, 0.3) + rng.normal(0, 0.01, 500),
        ]
    )
    t = tune_thresholds(proba, Y)
    assert 0.07 < t[0] < 0.13 and 0.87 < t[1] < 0.93 and 0.35 < t[2] < 0.65
    f1 = [fbeta_score(Y[:, j], proba[:, j] >= t[j], beta=1) for j in range(3)]
    assert min(f1) > 0.99


@pytest.fixture(scope="module")
def skewed(tiny_model_dir):
    """A fitted model whose probabilities sit far below 0.5 for a rare label."""
    X, Y = make_texts(120, seed=20)
    clf = BertMultiLabelClassifier(
        model_name=tiny_model_dir,
        max_epochs=4,
        lr=3e-3,
        batch_size=16,
        random_state=0,
        train_split=None,
        pos_weight=[0.05, 0.05, 0.05],
    )
    return clf.fit(X, Y)


def test_fit_thresholds_beats_fixed_half(skewed):
    Xv, Yv = make_texts(150, seed=21)
    Xt, Yt = make_texts(150, seed=22)
    before = fbeta_score(Yt, skewed.predict(Xt), beta=1, average="macro", zero_division=0)
    module = skewed.module_
    skewed.fit_thresholds(Xv, Yv)
    after = fbeta_score(Yt, skewed.predict(Xt), beta=1, average="macro", zero_division=0)
    assert skewed.threshold == "auto" and skewed.module_ is module
    assert (skewed.thresholds_ < 0.5).all()
    assert after > before + 0.2, (before, after)
    np.testing.assert_array_equal(skewed.thresholds_, skewed.tuned_thresholds_)
    skewed.set_params(threshold=0.5)  # back to the fixed threshold, no refit
    assert fbeta_score(Yt, skewed.predict(Xt), beta=1, average="macro", zero_division=0) == before


def test_fit_thresholds_metric_choice(skewed):
    Xv, Yv = make_texts(150, seed=23)
    high_precision = skewed.fit_thresholds(Xv, Yv, metric="f0.5").thresholds_
    high_recall = skewed.fit_thresholds(Xv, Yv, metric="f2").thresholds_
    assert (high_precision >= high_recall).all() and (high_precision > high_recall).any()
    with pytest.raises(ValueError, match="metric must be one of"):
        skewed.fit_thresholds(Xv, Yv, metric="auc")


def test_fit_thresholds_with_a_recall_or_precision_floor(skewed):
    Xv, Yv = make_texts(150, seed=23)
    proba = skewed.predict_proba(Xv)
    skewed.fit_thresholds(Xv, Yv, metric="precision@recall=0.95")
    for j in range(Yv.shape[1]):
        assert recall_score(Yv[:, j], proba[:, j] >= skewed.thresholds_[j]) >= 0.95
    floor = skewed.thresholds_.copy()
    skewed.fit_thresholds(Xv, Yv, metric="recall@precision=0.8")
    for j in range(Yv.shape[1]):
        assert precision_score(Yv[:, j], proba[:, j] >= skewed.thresholds_[j], zero_division=0) >= 0.8
    assert (skewed.thresholds_ >= floor).all() and (skewed.thresholds_ > floor).any()
    with pytest.raises(ValueError, match="metric must be one of"):
        skewed.fit_thresholds(Xv, Yv, metric="recall@precision=2")


def test_auto_threshold_tunes_on_validation_split(tiny_model_dir):
    X, Y = make_texts(160, seed=24)
    clf = BertMultiLabelClassifier(
        model_name=tiny_model_dir,
        max_epochs=4,
        lr=3e-3,
        batch_size=16,
        random_state=0,
        train_split=0.25,
        threshold="auto",
        pos_weight=[0.05, 0.05, 0.05],
    ).fit(X, Y)
    assert clf.tuned_thresholds_ is not None
    np.testing.assert_array_equal(clf.thresholds_, clf.tuned_thresholds_)
    assert not np.allclose(clf.thresholds_, 0.5)


def test_auto_threshold_without_validation_warns_and_uses_half(tiny_model_dir):
    X, Y = make_texts(40, seed=25)
    clf = BertMultiLabelClassifier(
        model_name=tiny_model_dir, max_epochs=1, random_state=0, train_split=None, threshold="auto"
    )
    with pytest.warns(UserWarning, match="threshold='auto' needs validation data.*train_split is None"):
        clf.fit(X, Y)
    np.testing.assert_array_equal(clf.thresholds_, [0.5, 0.5, 0.5])


def test_auto_threshold_on_a_single_row_warns_and_uses_half(tiny_model_dir):
    """One row cannot be split: the warning says so rather than blaming train_split."""
    X, Y = make_texts(1, seed=25)
    clf = BertMultiLabelClassifier(model_name=tiny_model_dir, max_epochs=1, random_state=0, threshold="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedLabelWarning)
        with pytest.warns(UserWarning, match="needs validation data to tune on, but no rows were held out"):
            clf.fit(X, Y)
    np.testing.assert_array_equal(clf.thresholds_, np.full(Y.shape[1], 0.5))


def test_auto_threshold_logs_labels_without_validation_positives(tiny_model_dir, caplog):
    """threshold='auto' keeps 0.5 for a label the validation data never has, and logs it."""
    X, Y = make_texts(64, seed=27)
    Xv, Yv = make_texts(32, seed=28)
    Yv[:, 2] = 0
    clf = BertMultiLabelClassifier(
        model_name=tiny_model_dir, max_epochs=1, random_state=0, threshold="auto", batch_size=16
    )
    with caplog.at_level(logging.INFO, logger="sklearn_bert_multilabel"), warnings.catch_warnings():
        warnings.simplefilter("error", UnusedLabelWarning)  # a small split often lacks a rare label
        clf.fit(X, Y, validation_data=(Xv, Yv))
    assert clf.thresholds_[2] == DEFAULT_THRESHOLD
    assert "threshold kept at 0.5: ['2']" in caplog.text


def test_label_without_positives_keeps_default_threshold(skewed):
    Xv, Yv = make_texts(60, seed=26)
    Yv[:, 1] = 0
    with pytest.warns(
        UnusedLabelWarning,
        match=r"1 label column\(s\) have no positive example in the "
        r"tuning data \(1\); their thresholds were not tuned and keep 0.5",
    ):
        skewed.fit_thresholds(Xv, Yv)
    assert skewed.thresholds_[1] == DEFAULT_THRESHOLD
    assert (skewed.thresholds_[[0, 2]] != DEFAULT_THRESHOLD).all()  # the others were tuned


# ------------------------------------------------------- min_labels and max_labels
def test_bound_labels_fills_short_rows_with_the_most_probable_others():
    proba = np.array(
        [
            [0.9, 0.2, 0.1],  # predicted: enough already
            [0.3, 0.4, 0.1],  # nothing passes: the most probable label
            [0.05, 0.3, 0.4],  # the first label passes its low threshold; the 0.4 is added
            [0.2, 0.2, 0.1],  # a tie goes to the first column
        ]
    )
    predicted = proba >= np.array([0.02, 0.5, 0.5])
    predicted[1:, 0] = [False, True, False]
    before = predicted.copy()
    one = bound_labels(proba, predicted, 1)
    np.testing.assert_array_equal(one, [[1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]])
    two = bound_labels(proba, predicted, 2)
    np.testing.assert_array_equal(two, [[1, 1, 0], [1, 1, 0], [1, 0, 1], [1, 1, 0]])
    np.testing.assert_array_equal(predicted, before)  # the input is left as it was
    assert bound_labels(proba, predicted, 0) is predicted
    assert bound_labels(proba, predicted, 0, 3) is predicted
    assert bound_labels(proba, predicted, 3).all()


def test_bound_labels_keeps_the_most_probable_of_long_rows():
    proba = np.array(
        [
            [0.9, 0.6, 0.7, 0.1],  # three pass: keep 0.9 and 0.7
            [0.5, 0.5, 0.5, 0.9],  # three tied pass (the 0.9 does not): the first two columns
            [0.9, 0.1, 0.1, 0.1],  # one: kept, and with min_labels=2 the tied next goes to column 1
        ]
    )
    predicted = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=bool)
    before = predicted.copy()
    np.testing.assert_array_equal(
        bound_labels(proba, predicted, 0, 2), [[1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
        bound_labels(proba, predicted, 2, 2), [[1, 0, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    )
    np.testing.assert_array_equal(predicted, before)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), low=st.integers(0, 5), extra=st.none() | st.integers(0, 5))
def test_bound_labels_keeps_the_most_probable(seed, low, extra):
    high = None if extra is None else max(low + extra, 1)
    rng = np.random.default_rng(seed)
    proba = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], size=(20, 5))  # ties on purpose
    predicted = proba >= rng.uniform(0.2, 0.95, size=5)
    result = bound_labels(proba, predicted, low, high)
    counts = np.maximum(predicted.sum(axis=1), low)
    if high is not None:
        counts = np.minimum(counts, high)
    np.testing.assert_array_equal(result.sum(axis=1), counts)
    for row, was, now in zip(proba, predicted, result, strict=True):
        added, dropped = now & ~was, was & ~now
        assert not (added.any() and dropped.any())
        if added.any() and (~now).any():
            assert row[added].min() >= row[~now].max()
        if dropped.any():
            assert row[now].min() >= row[dropped].max()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), low=st.integers(0, 6), extra=st.none() | st.integers(0, 6))
def test_the_exported_decision_is_bound_labels(seed, low, extra):
    """The torch operations an ONNX export records decide as predict does, ties included."""
    import torch

    from sklearn_bert_multilabel._export import decide_labels

    high = None if extra is None else min(max(low + extra, 1), 6)
    low = min(low, 6)
    rng = np.random.default_rng(seed)
    proba = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], size=(40, 6)).astype(np.float32)  # ties
    # float64 thresholds, some equal to a float32 probability's value: ">=" must keep those
    thresholds = np.where(rng.random(6) < 0.5, np.float64(np.float32(0.5)), rng.uniform(0.05, 0.95, 6))
    expected = bound_labels(proba, proba >= thresholds, low, high)
    got = decide_labels(torch.from_numpy(proba), torch.from_numpy(thresholds), low, high)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), expected)


def test_min_and_max_labels_in_predict(skewed):
    X, _ = make_texts(60, seed=25)
    proba = skewed.predict_proba(X)
    threshold = skewed.threshold
    skewed.set_params(threshold=0.5)
    plain = skewed.predict(X)
    assert (plain.sum(axis=1) == 0).sum() > 10  # rows that predict nothing at 0.5
    try:
        at_least_one = skewed.set_params(min_labels=1).predict(X)
        np.testing.assert_array_equal(skewed.predict_proba(X), proba)
        assert (at_least_one.sum(axis=1) >= 1).all()
        empty = plain.sum(axis=1) == 0
        np.testing.assert_array_equal(at_least_one[~empty], plain[~empty])
        np.testing.assert_array_equal(at_least_one[empty].argmax(axis=1), proba[empty].argmax(axis=1))
        assert (at_least_one[empty].sum(axis=1) == 1).all()
        assert skewed.set_params(min_labels=3).predict(X).all()
        assert skewed.score(X, plain) < 1.0  # score reads predict, min_labels included
        every = skewed.set_params(threshold=0.0, min_labels=0).predict(X)
        assert every.all()
        one = skewed.set_params(max_labels=1).predict(X)
        np.testing.assert_array_equal(one, np.eye(3, dtype=int)[proba.argmax(axis=1)])
        problems = {
            (4, None): "min_labels=4 asks for more labels per text than the 3",
            (-1, None): "min_labels must be an int >= 0",
            (0, 0): "max_labels must be None or an int >= 1",
            (2, 1): "min_labels=2 is above max_labels=1",
        }
        for (low, high), match in problems.items():
            with pytest.raises(InvalidInputError, match=match):
                skewed.set_params(min_labels=low, max_labels=high).predict(X)
        skewed.set_params(max_labels=7, min_labels=0).predict(X)  # more than the labels: no cap
    finally:
        skewed.set_params(threshold=threshold, min_labels=0, max_labels=None)


def test_predict_reports_a_bad_threshold_bounds_and_texts_together(skewed):
    threshold = skewed.threshold
    try:
        skewed.set_params(threshold=1.5, min_labels=2, max_labels=1)
        with pytest.raises(InvalidInputError) as info:
            skewed.predict(["a text", 3])
        assert len(info.value.problems) == 3
        message = str(info.value)
        assert "threshold must be >= 0.0 and <= 1.0 (finite), got 1.5" in message
        assert "min_labels=2 is above max_labels=1" in message
        assert "not text: X[1]=3" in message
        skewed.set_params(threshold="auto", min_labels=5, max_labels=None)
        untuned = copy.copy(skewed)
        untuned.tuned_thresholds_ = None
        with pytest.raises(InvalidInputError) as info:
            untuned.predict(["a text"])
        assert len(info.value.problems) == 2
        assert "no thresholds were tuned" in str(info.value) and "min_labels=5" in str(info.value)
    finally:
        skewed.set_params(threshold=threshold, min_labels=0, max_labels=None)


def test_bad_label_bounds_are_refused_before_training_with_the_other_problems(tiny_model_dir):
    X, Y = make_texts(16, seed=26)
    for low, high, match in (
        (-1, None, "min_labels must be an int >= 0"),
        (1.0, None, "min_labels must be an int >= 0"),
        (True, None, "min_labels must be an int >= 0"),
        ("1", None, "min_labels must be an int >= 0"),
        (0, 0, "max_labels must be None or an int >= 1"),
        (0, 2.0, "max_labels must be None or an int >= 1"),
        (2, 1, "min_labels=2 is above max_labels=1"),
    ):
        clf = BertMultiLabelClassifier(model_name=tiny_model_dir, min_labels=low, max_labels=high, dropout=2)
        with pytest.raises(InvalidInputError, match=match) as info:
            clf.fit(X, Y)
        assert "dropout" in str(info.value)
        assert not hasattr(clf, "module_")
    clf = BertMultiLabelClassifier(model_name=tiny_model_dir, min_labels=4, lr=-1)
    match = r"min_labels=4 .* the 3 there are; use min_labels <= 3"
    with pytest.raises(InvalidInputError, match=match) as info:
        clf.fit(X, Y)
    assert "lr must be" in str(info.value)
    assert str(info.value).count("min_labels") == 2  # reported once
