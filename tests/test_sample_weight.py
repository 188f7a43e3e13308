"""``fit(X, Y, sample_weight=...)``: what the weights change, and what they must not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sklearn
import torch
from scipy.special import expit
from sklearn.metrics import get_scorer
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from skorch.callbacks import Callback

from sklearn_bert_multilabel import BertMultiLabelClassifier, InvalidInputError, tune_thresholds

PATHS = {
    "fine-tuned": {},
    "frozen (cached features)": {"freeze_encoder": True, "hidden_layer_sizes": (8,)},
    "chunked": {"long_text": "chunk", "max_length": 8},
}
NO_DROPOUT = {"encoder__hidden_dropout_prob": 0.0, "encoder__attention_probs_dropout_prob": 0.0}


class CountTrainingBatches(Callback):
    """Acts on training batches, so the net takes skorch's per-batch loop."""

    def on_batch_end(self, net, training=False, **kwargs):
        pass


def varied_weights(n: int) -> np.ndarray:
    return np.linspace(0.1, 3.0, n)


@pytest.mark.parametrize("path", list(PATHS))
def test_equal_weights_train_exactly_as_no_weights(fast_params, toy_data, path):
    X, Y = toy_data
    params = {**fast_params, **PATHS[path]}
    plain = BertMultiLabelClassifier(**params).fit(X, Y).predict_proba(X)
    equal = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=np.full(len(X), 3.0)).predict_proba(X)
    weights = varied_weights(len(X))
    varied = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=weights).predict_proba(X)
    np.testing.assert_array_equal(equal, plain)
    assert np.abs(varied - plain).max() > 1e-3  # the weights reach the loss


def test_only_the_ratios_between_weights_matter(fast_params, toy_data):
    X, Y = toy_data
    params = {**fast_params, "freeze_encoder": True, "max_epochs": 1}
    weights = varied_weights(len(X))
    reference = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=weights).predict_proba(X)
    for scale in (1e307, 1e-300):  # the sum of the large ones overflows a float64
        proba = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=weights * scale).predict_proba(X)
        np.testing.assert_array_equal(proba, reference)


@pytest.mark.parametrize("path", list(PATHS))
def test_weight_zero_leaves_a_text_out(fast_params, toy_data, path):
    X, Y = toy_data
    params = {**fast_params, **PATHS[path]}
    weights = np.ones(len(X))
    weights[:10] = 0.0
    weighted = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=weights)
    without = BertMultiLabelClassifier(**params).fit(X[10:], Y[10:])
    np.testing.assert_array_equal(weighted.predict_proba(X), without.predict_proba(X))


@pytest.mark.parametrize(
    "extra",
    [
        {"freeze_encoder": True, "hidden_layer_sizes": (16,)},
        NO_DROPOUT,  # the encoder's own dropout would draw other masks for other batches
    ],
    ids=["frozen", "fine-tuned"],
)
def test_integer_weights_train_as_repeated_texts(fast_params, toy_data, extra):
    """With one batch per epoch and no dropout, weight 2 is the text given twice."""
    X, Y = toy_data
    params = {**fast_params, **extra, "batch_size": 500, "dropout": 0.0, "max_epochs": 4}
    weights = np.ones(len(X), dtype=int)
    weights[::3] = 2
    repeated_X = [x for x, k in zip(X, weights, strict=True) for _ in range(k)]
    repeated_Y = np.repeat(Y, weights, axis=0)
    weighted = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=weights)
    repeated = BertMultiLabelClassifier(**params).fit(repeated_X, repeated_Y)
    unweighted = BertMultiLabelClassifier(**params).fit(X, Y)
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), atol=1e-6)
    assert np.abs(weighted.predict_proba(X) - unweighted.predict_proba(X)).max() > 1e-4


@pytest.mark.parametrize("extra", [{}, {"pos_weight": "balanced", "accumulate_batches": 4, "dropout": 0.3}])
def test_lean_head_epoch_weights_as_skorchs_loop(fast_params, toy_data, extra, monkeypatch):
    from sklearn_bert_multilabel._net import MultiLabelNet

    lean_epochs, run_head_epoch = [], MultiLabelNet._run_head_epoch

    def counted(self, *args, **kwargs):
        lean_epochs.append(1)
        return run_head_epoch(self, *args, **kwargs)

    monkeypatch.setattr(MultiLabelNet, "_run_head_epoch", counted)
    X, Y = toy_data
    params = {**fast_params, "freeze_encoder": True, "hidden_layer_sizes": (8,), "max_epochs": 3, **extra}
    weights = varied_weights(len(X))
    lean = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=weights)
    assert len(lean_epochs) == 3  # the hand-written step
    loop = BertMultiLabelClassifier(**params, callbacks=[("count", CountTrainingBatches())])
    loop.fit(X, Y, sample_weight=weights)
    assert len(lean_epochs) == 3  # skorch's loop, through the module and get_loss
    for (name, a), b in zip(
        lean.module_.head.state_dict().items(), loop.module_.head.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    np.testing.assert_allclose(lean.history_[:, "train_loss"], loop.history_[:, "train_loss"], rtol=1e-6)


@pytest.mark.parametrize("frozen", [False, True])
def test_validation_weights_weigh_the_validation_loss_and_the_tuned_thresholds(fast_params, frozen):
    from conftest import make_texts

    X, Y = make_texts(64, seed=1)
    X_val, Y_val = make_texts(40, seed=2)
    w_val = np.where(Y_val.sum(1) <= 1, 5.0, 0.2)  # texts with few labels count most
    params = {**fast_params, "threshold": "auto", "max_epochs": 2, "dropout": 0.0}
    if frozen:
        params.update(freeze_encoder=True, hidden_layer_sizes=(8,))
    clf = BertMultiLabelClassifier(**params).fit(X, Y, validation_data=(X_val, Y_val, w_val))
    logits = clf.decision_function(X_val)  # the model of the last epoch, which was validated
    z, y = torch.from_numpy(logits), torch.from_numpy(Y_val.astype(np.float32))
    per_text = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none").mean(1).numpy()
    assert clf.history_[-1, "valid_loss"] == pytest.approx(np.average(per_text, weights=w_val), rel=1e-4)
    assert clf.history_[-1, "valid_loss"] != pytest.approx(per_text.mean(), rel=1e-4)

    expected = tune_thresholds(expit(logits), Y_val, sample_weight=w_val)
    np.testing.assert_allclose(clf.thresholds_, expected, atol=1e-5)
    assert not np.allclose(tune_thresholds(expit(logits), Y_val), expected)


def test_weights_follow_their_texts_into_the_validation_split(fast_params, toy_data):
    X, Y = toy_data
    params = {**fast_params, "train_split": 0.25, "threshold": "auto", "max_epochs": 1}
    equal = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=np.full(len(X), 2.0))
    plain = BertMultiLabelClassifier(**params).fit(X, Y)
    varied = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=varied_weights(len(X)))
    assert equal.history_[-1, "valid_loss"] == plain.history_[-1, "valid_loss"]
    np.testing.assert_array_equal(equal.thresholds_, plain.thresholds_)
    assert varied.history_[-1, "valid_loss"] != plain.history_[-1, "valid_loss"]


def test_balanced_pos_weight_counts_weighted_positives(fast_params, toy_data):
    X, Y = toy_data
    weights = varied_weights(len(X))
    clf = BertMultiLabelClassifier(**{**fast_params, "max_epochs": 1, "pos_weight": "balanced"})
    clf.fit(X, Y, sample_weight=weights)
    expected = (weights @ (1 - Y)) / (weights @ Y)
    np.testing.assert_allclose(clf.pos_weight_, expected, rtol=1e-6)
    assert not np.allclose(expected, (1 - Y).sum(0) / Y.sum(0), rtol=1e-3)


def test_weights_as_list_series_or_column_train_the_same_and_are_not_modified(fast_params, toy_data):
    X, Y = toy_data
    params = {**fast_params, "max_epochs": 1, "freeze_encoder": True}
    weights = varied_weights(len(X))
    kept = weights.copy()
    reference = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=weights).predict_proba(X)
    np.testing.assert_array_equal(weights, kept)
    for given in (list(weights), pd.Series(weights, index=np.arange(len(X))[::-1]), weights[:, None]):
        proba = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=given).predict_proba(X)
        np.testing.assert_array_equal(proba, reference)
    plain = BertMultiLabelClassifier(**params).fit(X, Y).predict_proba(X)
    one_number = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=2.5).predict_proba(X)
    np.testing.assert_array_equal(one_number, plain)  # as np.full(n, 2.5): equal weights


def test_bad_weights_are_reported_with_the_other_problems(fast_params, toy_data):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(**fast_params)
    cases = {
        "has 5 weights but X has 96 texts; give one weight per row": np.ones(5),
        "negative value(s) (first at row 3, -1)": np.where(np.arange(96) == 3, -1.0, 1.0),
        "NaN or infinite value(s) (first at row 7)": np.where(np.arange(96) == 7, np.nan, 1.0),
        "is 0 for every text": np.zeros(96),
        "must be 1-D": np.ones((96, 2)),
        "must hold numbers": ["a"] * 96,
    }
    for expected, weights in cases.items():
        with pytest.raises(InvalidInputError, match="sample_weight") as info:
            clf.fit(X, Y[:50], sample_weight=weights)
        message = str(info.value)
        assert expected in message, message
        assert "Y has 50 rows" in message  # reported together
    expected = "validation_data sample_weight has 3 weights but validation_data X has 10 texts"
    with pytest.raises(InvalidInputError, match=expected):
        clf.fit(X, Y, validation_data=(X[:10], Y[:10], np.ones(3)))
    with pytest.raises(InvalidInputError, match=r"\(X_val, Y_val, sample_weight_val\)"):
        clf.fit(X, Y, validation_data=(X[:10], Y[:10], np.ones(10), None))
    assert not hasattr(clf, "module_")


def test_grid_search_and_pipeline_pass_the_weights_to_fit(fast_params, toy_data):
    X, Y = toy_data
    params = {**fast_params, "max_epochs": 1, "freeze_encoder": True}
    weights = varied_weights(len(X))
    expected = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=weights).predict_proba(X)
    unweighted = BertMultiLabelClassifier(**params).fit(X, Y).predict_proba(X)
    assert np.abs(expected - unweighted).max() > 1e-4

    search = GridSearchCV(BertMultiLabelClassifier(**params), {"lr": [1e-3]}, cv=KFold(2), scoring="f1_macro")
    search.fit(X, Y, sample_weight=weights)  # indexed per fold, then the refit on everything
    np.testing.assert_array_equal(search.predict_proba(X), expected)

    pipe = Pipeline([("clf", BertMultiLabelClassifier(**params))]).fit(X, Y, clf__sample_weight=weights)
    np.testing.assert_array_equal(pipe.predict_proba(X), expected)

    with sklearn.config_context(enable_metadata_routing=True):
        routed = BertMultiLabelClassifier(**params).set_fit_request(sample_weight=True)
        scorer = get_scorer("f1_macro").set_score_request(sample_weight=True)
        search = GridSearchCV(routed, {"lr": [1e-3]}, cv=KFold(2), scoring=scorer)
        search.fit(X, Y, sample_weight=weights)
    np.testing.assert_array_equal(search.predict_proba(X), expected)


def test_memory_keys_weighted_fits_apart(fast_params, toy_data, tmp_path):
    X, Y = toy_data
    params = {**fast_params, "max_epochs": 1, "memory": str(tmp_path)}
    plain = BertMultiLabelClassifier(**params).fit(X, Y).cache_key_
    equal = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=np.ones(len(X))).cache_key_
    weights = varied_weights(len(X))
    varied = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=weights).cache_key_
    other = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=weights[::-1]).cache_key_
    assert equal == plain  # equal weights train as none: the same entry
    assert len({plain, varied, other}) == 3
    # Only ratios train: weights times a factor share the entry (integers, so that both scale
    # to the same floats exactly).
    counts = np.arange(len(X)) % 4 + 1
    once = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=counts)
    thrice = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=3 * counts)
    assert once.cache_key_ == thrice.cache_key_ and once.cache_key_ not in {plain, varied, other}
    np.testing.assert_array_equal(thrice.decision_function(X), once.decision_function(X))


def test_fit_thresholds_weighs_the_tuning_texts(one_epoch_model):
    from conftest import make_texts

    X_val, Y_val = make_texts(48, seed=5)
    weights = varied_weights(len(X_val))
    proba = one_epoch_model.predict_proba(X_val)
    one_epoch_model.fit_thresholds(X_val, Y_val, sample_weight=weights)
    np.testing.assert_array_equal(
        one_epoch_model.tuned_thresholds_, tune_thresholds(proba, Y_val, sample_weight=weights)
    )
    with pytest.raises(InvalidInputError, match="sample_weight has 2 weights but X has 48") as info:
        one_epoch_model.fit_thresholds(X_val, Y_val, metric="f3", sample_weight=[1, 2])
    assert "metric must be one of" in str(info.value)  # reported together


def test_a_weighted_fit_read_from_memory_tunes_the_same_thresholds(fast_params, toy_data, tmp_path):
    X, Y = toy_data
    weights = np.where(np.asarray(Y).sum(1) <= 1, 5.0, 0.2)
    params = {
        **fast_params,
        "max_epochs": 1,
        "memory": str(tmp_path),
        "train_split": 0.25,
        "threshold": "auto",
    }
    trained = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=weights)
    read = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=weights)
    assert read.cache_key_ == trained.cache_key_ is not None
    np.testing.assert_array_equal(read.thresholds_, trained.thresholds_)
    unweighted = BertMultiLabelClassifier(**params).fit(X, Y)
    assert unweighted.cache_key_ != trained.cache_key_
    assert not np.array_equal(unweighted.thresholds_, trained.thresholds_)


def test_resuming_a_weighted_fit_from_its_checkpoint(fast_params, toy_data, tmp_path, monkeypatch):
    from sklearn_bert_multilabel._net import MultiLabelNet

    X, Y = toy_data
    weights = varied_weights(len(X))
    params = {**fast_params, "max_epochs": 3, "train_split": 0.25}
    expected = BertMultiLabelClassifier(**params).fit(X, Y, sample_weight=weights).predict_proba(X)

    train_step, steps = MultiLabelNet.train_step, []

    def interrupted(self, batch, **fit_params):
        steps.append(1)
        if len(steps) == 2 * 5 + 2:  # during epoch 3 (5 batches an epoch)
            raise KeyboardInterrupt
        return train_step(self, batch, **fit_params)

    with monkeypatch.context() as patch:
        patch.setattr(MultiLabelNet, "train_step", interrupted)
        with pytest.warns(UserWarning, match="interrupted during epoch 3"):
            BertMultiLabelClassifier(**params, checkpoint_dir=tmp_path).fit(X, Y, sample_weight=weights)
    # Other weights are another fit: it starts from the pretrained encoder, not from that checkpoint.
    unweighted = BertMultiLabelClassifier(**params, checkpoint_dir=tmp_path, warm_start=True).fit(X, Y)
    np.testing.assert_array_equal(
        unweighted.predict_proba(X), BertMultiLabelClassifier(**params).fit(X, Y).predict_proba(X)
    )
    resumed = BertMultiLabelClassifier(**params, checkpoint_dir=tmp_path, warm_start=True)
    resumed.fit(X, Y, sample_weight=weights)
    assert len(resumed.history_) == 3
    np.testing.assert_allclose(resumed.predict_proba(X), expected, rtol=0, atol=1e-6)


def test_score_weighs_the_texts_and_checks_the_weights(one_epoch_model):
    from conftest import make_texts
    from sklearn.metrics import accuracy_score

    X, Y = make_texts(40, seed=6)
    weights = varied_weights(len(X))
    expected = accuracy_score(Y, one_epoch_model.predict(X), sample_weight=weights)
    assert one_epoch_model.score(X, Y, sample_weight=weights) == pytest.approx(expected)
    with pytest.raises(InvalidInputError) as info:
        one_epoch_model.score(X, Y[:30], sample_weight=-weights)
    assert "sample_weight contains 40 negative value(s)" in str(info.value)
    assert "X has 40 texts but Y has 30 rows" in str(info.value)


def test_a_label_positive_only_on_texts_of_weight_zero_is_unused(fast_params, toy_data, one_epoch_model):
    from sklearn_bert_multilabel import UnusedLabelWarning

    X, Y = toy_data
    weights = np.where(Y[:, 2] == 1, 0.0, 1.0)  # the third label's texts all weigh 0
    clf = BertMultiLabelClassifier(**{**fast_params, "max_epochs": 1})
    with pytest.warns(
        UnusedLabelWarning, match=r"never positive in the training data \(among the texts of weight"
    ):
        clf.fit(X, Y, sample_weight=weights)
    with pytest.warns(UnusedLabelWarning, match=r"tuning data \(among the texts of weight above 0\) \(2\)"):
        one_epoch_model.fit_thresholds(X, Y, sample_weight=weights)
