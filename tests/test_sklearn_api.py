"""scikit-learn's own API checks, called one by one.

The ``string`` input tag makes ``parametrize_with_checks`` skip every check
(they feed numeric arrays), so the checks that need no numeric fit are
called here explicitly, on the default and on a non-default estimator.
"""

from __future__ import annotations

import joblib
import numpy as np
import pytest
from sklearn.base import clone, is_classifier
from sklearn.utils import estimator_checks as ec
from sklearn.utils import get_tags

from sklearn_bert_multilabel import BertMultiLabelClassifier

DATA_FREE_CHECKS = [
    ec.check_estimator_cloneable,
    ec.check_estimator_tags_renamed,
    ec.check_valid_tag_types,
    ec.check_estimator_repr,
    ec.check_no_attributes_set_in_init,
    ec.check_do_not_raise_errors_in_init_or_set_params,
    ec.check_mixin_order,
    ec.check_parameters_default_constructible,
    ec.check_get_params_invariance,
    ec.check_set_params,
    ec.check_estimators_unfitted,
]

ESTIMATORS = [
    BertMultiLabelClassifier(),
    BertMultiLabelClassifier(pooling="attention", hidden_layer_sizes=(64,), threshold="auto"),
]


@pytest.mark.parametrize("check", DATA_FREE_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=["default", "custom"])
def test_sklearn_check(check, estimator):
    check(type(estimator).__name__, clone(estimator))


def test_tags():
    tags = get_tags(BertMultiLabelClassifier())
    assert is_classifier(BertMultiLabelClassifier())
    assert tags.classifier_tags.multi_label is True
    assert tags.input_tags.string is True
    assert tags.input_tags.two_d_array is False
    assert tags.target_tags.required is True


def test_extra_prefixed_params_round_trip_through_clone_and_set_params():
    clf = BertMultiLabelClassifier(iterator_train__num_workers=0, optimizer__eps=1e-7)
    params = clf.get_params()
    assert params["optimizer__eps"] == 1e-7
    copy = clone(clf)
    assert copy.get_params()["iterator_train__num_workers"] == 0
    copy.set_params(optimizer__eps=1e-6, lr=3e-5)
    assert copy.optimizer__eps == 1e-6 and copy.lr == 3e-5
    assert "optimizer__eps=1e-06" in repr(copy)


def test_unknown_keyword_is_reported_by_fit(tiny_model_dir, toy_data):
    clf = BertMultiLabelClassifier(model_name=tiny_model_dir, learning_rate=0.1)  # init never raises
    assert clf.get_params()["learning_rate"] == 0.1
    with pytest.raises(ValueError, match="unknown parameter 'learning_rate'"):
        clf.fit(*toy_data)


def test_positional_arguments_after_model_name_are_refused():
    with pytest.raises(TypeError):
        BertMultiLabelClassifier("x", "mean")


@pytest.mark.parametrize(
    "params",
    [{}, {"threshold": "auto", "train_split": 0.25, "pos_weight": "balanced", "hidden_layer_sizes": (8,)}],
    ids=["default", "auto-threshold"],
)
def test_fit_keeps_parameters_sets_only_fitted_attributes_and_is_idempotent(tiny_model_dir, toy_data, params):
    """scikit-learn's check_estimators_overwrite_params, check_dont_overwrite_parameters and
    check_fit_idempotent, on texts (those checks feed numeric arrays)."""
    X, Y = toy_data
    clf = BertMultiLabelClassifier(
        **{"model_name": tiny_model_dir, "max_epochs": 1, "train_split": None, "random_state": 0, **params}
    )
    before = {name: joblib.hash(value) for name, value in clf.get_params().items()}
    attributes = set(vars(clf))
    first = clf.fit(X, Y).predict_proba(X)
    assert {name: joblib.hash(value) for name, value in clf.get_params().items()} == before
    added = set(vars(clf)) - attributes
    assert added and all(name.endswith("_") or name.startswith("_") for name in added), sorted(added)
    np.testing.assert_array_equal(clf.fit(X, Y).predict_proba(X), first)
    np.testing.assert_array_equal(clone(clf).fit(X, Y).predict_proba(X), first)
