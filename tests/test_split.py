"""Iterative stratification: the validation split and MultilabelStratifiedKFold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_bert_multilabel import BertMultiLabelClassifier, InvalidInputError, MultilabelStratifiedKFold
from sklearn_bert_multilabel import _estimator as estimator_module
from sklearn_bert_multilabel._split import iterative_stratification, stratified_validation_split


def skewed_labels(n: int = 600, seed: int = 0) -> np.ndarray:
    """Labels from common (40%) to rare (6 positives), some rows with none."""
    rng = np.random.default_rng(seed)
    rates = np.array([0.4, 0.2, 0.1, 0.05, 0.02])
    Y = (rng.random((n, len(rates))) < rates).astype(int)
    rare = np.zeros((n, 1), dtype=int)
    rare[rng.choice(n, 6, replace=False)] = 1
    return np.hstack([Y, rare])


def deviation(Y: np.ndarray, tests: list[np.ndarray]) -> np.ndarray:
    """|positives in each test part - the part's share of them|, per part and label."""
    return np.array([np.abs(Y[t].sum(0) - Y.sum(0) * len(t) / len(Y)) for t in tests])


@pytest.mark.parametrize("seed", range(3))
def test_folds_share_every_labels_positives_out_in_proportion(seed):
    Y = skewed_labels(seed=seed)
    cv = MultilabelStratifiedKFold(n_splits=3, random_state=seed)
    splits = list(cv.split(np.zeros(len(Y)), Y))
    tests = [test for _, test in splits]
    assert cv.get_n_splits() == 3 and len(splits) == 3
    np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(len(Y)))  # a partition
    for train, test in splits:
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(Y)
    assert all(abs(len(t) - len(Y) / 3) <= 0.05 * len(Y) for t in tests)
    assert (Y[tests[0]][:, -1].sum(), Y[tests[1]][:, -1].sum(), Y[tests[2]][:, -1].sum()) == (2, 2, 2)
    stratified = deviation(Y, tests)
    shuffled = deviation(Y, [t for _, t in KFold(3, shuffle=True, random_state=seed).split(Y)])
    assert stratified.max() <= 2
    assert stratified.mean() < shuffled.mean() / 2, (stratified.mean(), shuffled.mean())


def test_folds_are_reproducible_with_an_int_random_state():
    Y = skewed_labels()
    first = [t for _, t in MultilabelStratifiedKFold(4, random_state=7).split(Y, Y)]
    again = [t for _, t in MultilabelStratifiedKFold(4, random_state=7).split(Y, Y)]
    other = [t for _, t in MultilabelStratifiedKFold(4, random_state=8).split(Y, Y)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_unshuffled_folds_are_the_same_on_every_call_and_still_stratified():
    """shuffle=False, as in iterstrat's splitter: rows dealt in their order, ties to the first
    fold; the call iterstrat's users write, with shuffle=True and a seed, runs unchanged."""
    Y = skewed_labels()
    cv = MultilabelStratifiedKFold(n_splits=3, shuffle=False)
    first = [t for _, t in cv.split(Y, Y)]
    assert all(np.array_equal(a, b) for a, b in zip(first, [t for _, t in cv.split(Y, Y)], strict=True))
    np.testing.assert_array_equal(np.sort(np.concatenate(first)), np.arange(len(Y)))
    assert deviation(Y, first).max() <= 2
    assert [int(Y[t][:, -1].sum()) for t in first] == [2, 2, 2]
    seeded = [t for _, t in MultilabelStratifiedKFold(n_splits=3, shuffle=True, random_state=0).split(Y, Y)]
    default = [t for _, t in MultilabelStratifiedKFold(n_splits=3, random_state=0).split(Y, Y)]
    assert all(np.array_equal(a, b) for a, b in zip(seeded, default, strict=True))  # True is the default
    assert not all(np.array_equal(a, b) for a, b in zip(seeded, first, strict=True))
    with pytest.raises(InvalidInputError, match="random_state has no effect with shuffle=False"):
        list(MultilabelStratifiedKFold(3, shuffle=False, random_state=0).split(Y, Y))
    with pytest.raises(InvalidInputError, match="shuffle must be True or False, got 'yes'"):
        list(MultilabelStratifiedKFold(3, shuffle="yes").split(Y, Y))
    with pytest.raises(InvalidInputError) as info:  # both problems of one call, reported together
        list(MultilabelStratifiedKFold(3, shuffle="yes", random_state="seed").split(Y, Y))
    assert "shuffle must be True or False" in str(info.value) and "random_state must be None" in str(
        info.value
    )


def test_no_part_is_left_empty():
    Y = np.ones((3, 2), dtype=int)  # every row the same: nothing to tell the parts apart
    part = iterative_stratification(Y, np.full(3, 1 / 3), np.random.default_rng(0))
    assert sorted(part) == [0, 1, 2]
    train, valid = stratified_validation_split(np.zeros((2, 1)), 0.1, 0)
    assert len(train) == 1 and len(valid) == 1


@pytest.mark.parametrize(
    "n_splits, y, message",
    [
        (1, np.zeros((10, 2)), "n_splits must be an integer of at least 2"),
        (2, np.zeros(10), "y must be 2-D"),
        (2, np.zeros((9, 2)), "X has 10 rows but y has 9"),
        (11, np.zeros((10, 2)), "n_splits=11 is more than the 10 rows"),
        (2, np.full((10, 2), 2), "y must be binary"),
    ],
)
def test_bad_splitter_input_is_refused_in_words(n_splits, y, message):
    with pytest.raises(InvalidInputError, match=message):
        list(MultilabelStratifiedKFold(n_splits).split(np.zeros(10), y))


@pytest.mark.parametrize("seed", [-1, 2**32, "0"])
def test_splitter_seed_out_of_numpys_range_is_refused_in_words(seed):
    with pytest.raises(InvalidInputError, match=r"random_state must be None, an int in \[0, 2\*\*32 - 1\]"):
        list(MultilabelStratifiedKFold(2, random_state=seed).split(np.zeros(10), np.eye(10, 2)))


def test_splitter_reads_the_rows_of_a_sparse_or_2d_x_and_needs_y():
    # Features made outside the estimator (a TF-IDF baseline, say) get the same folds as texts.
    rng = np.random.default_rng(0)
    Y = (rng.random((30, 3)) < 0.3).astype(int)
    cv = MultilabelStratifiedKFold(3, random_state=0)
    expected = [test.tolist() for _, test in cv.split(np.zeros(30), Y)]
    for X in (sp.csr_matrix(rng.random((30, 5))), rng.random((30, 5)), pd.DataFrame(rng.random((30, 2)))):
        assert [test.tolist() for _, test in cv.split(X, Y)] == expected
    with pytest.raises(InvalidInputError, match="y is required"):
        list(cv.split(np.zeros(30), None))


def test_validation_split_gives_a_rare_label_its_share():
    Y = np.zeros((40, 2), dtype=int)
    Y[:4, 0] = 1  # 4 positives: a quarter of them is one
    Y[::2, 1] = 1
    for seed in range(10):
        train, valid = stratified_validation_split(Y, 0.25, seed)
        assert Y[valid, 0].sum() == 1 and Y[valid, 1].sum() == 5
        assert len(valid) == 10 and np.array_equal(np.sort(np.concatenate([train, valid])), np.arange(40))


def test_fit_splits_its_validation_data_by_label(fast_params, toy_data, monkeypatch):
    X, Y = toy_data
    calls = []

    def spy(Y_fit, fraction, seed):
        calls.append((Y_fit.copy(), fraction, seed))
        return stratified_validation_split(Y_fit, fraction, seed)

    monkeypatch.setattr(estimator_module, "stratified_validation_split", spy)
    clf = BertMultiLabelClassifier(**dict(fast_params, train_split=0.25, max_epochs=1)).fit(X, Y)
    assert len(calls) == 1
    np.testing.assert_array_equal(calls[0][0], np.asarray(Y, dtype=np.float32))
    assert calls[0][1] == 0.25
    assert "valid_loss" in clf.history_[-1]


def test_grid_search_accepts_the_splitter(fast_params, toy_data):
    X, Y = toy_data
    search = GridSearchCV(
        BertMultiLabelClassifier(**dict(fast_params, max_epochs=1)),
        {"threshold": [0.3, 0.5]},
        cv=MultilabelStratifiedKFold(2, random_state=0),
        scoring="f1_macro",
        refit=False,
    ).fit(X, Y)
    assert search.n_splits_ == 2
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_out_of_fold_probabilities_tune_thresholds(fast_params, toy_data):
    """The README's recipe: thresholds tuned on cross_val_predict's out-of-fold probabilities."""
    from sklearn.model_selection import cross_val_predict

    from sklearn_bert_multilabel import tune_thresholds

    X, Y = toy_data
    clf = BertMultiLabelClassifier(**dict(fast_params, max_epochs=1))
    P = cross_val_predict(clf, X, Y, cv=MultilabelStratifiedKFold(2, random_state=0), method="predict_proba")
    assert P.shape == np.shape(Y) and ((P >= 0) & (P <= 1)).all()
    thresholds = tune_thresholds(P, np.asarray(Y))
    assert not np.allclose(thresholds, 0.5)
    clf.fit(X, Y).set_params(threshold=thresholds)
    np.testing.assert_array_equal(clf.thresholds_, thresholds)
    np.testing.assert_array_equal(clf.predict(X), clf.predict_proba(X) >= thresholds)
