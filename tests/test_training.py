"""Training recipe: schedule, accumulation, layer-wise decay, early stopping, validation scores."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from conftest import make_texts
from skorch.callbacks import Callback, EarlyStopping

from sklearn_bert_multilabel import BertMultiLabelClassifier
from sklearn_bert_multilabel._net import param_groups


class CountSteps(Callback):
    """Optimizer steps (on_grad_computed fires once per step) and lr at each training batch."""

    def initialize(self):
        self.steps, self.lrs = 0, []
        return self

    def on_grad_computed(self, net, named_parameters, **kwargs):
        self.steps += 1

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if training:
            self.lrs.append(net.optimizer_.param_groups[0]["lr"])


def test_lr_schedule_warms_up_and_decays(fast_params, toy_data):
    record = CountSteps()
    params = dict(fast_params, max_epochs=4, lr=1e-3, warmup_ratio=0.25, callbacks=[record])
    BertMultiLabelClassifier(**params).fit(*toy_data)
    lrs = np.array(record.lrs)  # 4 epochs x 6 batches
    peak = int(np.argmax(lrs))
    assert 0 < peak <= 7 and lrs[peak] <= 1e-3
    assert (np.diff(lrs[: peak + 1]) > 0).all() and (np.diff(lrs[peak:]) < 0).all()
    constant = CountSteps()
    params = dict(params, lr_schedule="constant", warmup_ratio=0.0, callbacks=[constant])
    BertMultiLabelClassifier(**params).fit(*toy_data)
    assert np.allclose(constant.lrs, 1e-3)


def test_a_users_lr_scheduler_sets_the_learning_rate(fast_params, toy_data):
    """A skorch LRScheduler in callbacks replaces lr_schedule, which would overwrite it every batch."""
    from skorch.callbacks import LRScheduler

    record = CountSteps()
    halving = LRScheduler(policy="StepLR", step_size=1, gamma=0.5)
    params = dict(fast_params, max_epochs=3, lr=1e-3, callbacks=[halving, record])
    BertMultiLabelClassifier(**params).fit(*toy_data)  # lr_schedule="linear", warmup_ratio=0.1
    np.testing.assert_allclose(record.lrs, np.repeat([1e-3, 5e-4, 2.5e-4], 6))  # 6 batches an epoch


def test_cosine_schedule_ends_near_zero(fast_params, toy_data):
    record = CountSteps()
    params = dict(fast_params, max_epochs=3, lr_schedule="cosine", warmup_ratio=0.0, callbacks=[record])
    BertMultiLabelClassifier(**params).fit(*toy_data)
    assert record.lrs[0] == pytest.approx(fast_params["lr"])
    assert record.lrs[-1] < 0.05 * fast_params["lr"]


@pytest.mark.parametrize("k, expected", [(1, 12), (2, 6), (4, 4)])  # 6 batches per epoch, 2 epochs
def test_accumulate_batches_steps_once_per_window(k, expected, fast_params, toy_data):
    record = CountSteps()
    BertMultiLabelClassifier(**dict(fast_params, accumulate_batches=k, callbacks=[record])).fit(*toy_data)
    assert record.steps == expected


def test_accumulation_matches_one_large_batch_in_expectation(fast_params, toy_data):
    """With dropout off and one window per epoch, 2 x 48 accumulated == one batch of 96."""
    X, Y = toy_data
    no_dropout = dict(
        dropout=0.0, encoder__hidden_dropout_prob=0.0, encoder__attention_probs_dropout_prob=0.0
    )
    common = dict(fast_params, **no_dropout, max_epochs=1, lr_schedule="constant", warmup_ratio=0.0)
    big = BertMultiLabelClassifier(**dict(common, batch_size=96)).fit(X, Y)
    accumulated = BertMultiLabelClassifier(**dict(common, batch_size=48, accumulate_batches=2)).fit(X, Y)
    np.testing.assert_allclose(accumulated.predict_proba(X), big.predict_proba(X), atol=2e-3)


@pytest.mark.parametrize("freeze", [False, True])
def test_short_last_window_steps_on_the_mean_of_its_batches(freeze, fast_params, toy_data):
    """An epoch of one batch with accumulate_batches=4 takes the step of accumulate_batches=1.

    Plain SGD moves by the gradient itself, so a window summed to a quarter of its mean would
    take a quarter of the step.
    """
    X, Y = toy_data
    common = dict(
        fast_params,
        batch_size=96,
        max_epochs=2,
        optimizer=torch.optim.SGD,
        lr=0.5,
        lr_schedule="constant",
        warmup_ratio=0.0,
        max_grad_norm=None,
        dropout=0.0,
        encoder__hidden_dropout_prob=0.0,
        encoder__attention_probs_dropout_prob=0.0,
        freeze_encoder=freeze,
    )
    one = BertMultiLabelClassifier(**common).fit(X, Y)
    four = BertMultiLabelClassifier(**dict(common, accumulate_batches=4)).fit(X, Y)
    np.testing.assert_allclose(four.decision_function(X), one.decision_function(X), atol=1e-5)


def test_layer_decay_groups(tiny_model_dir):
    from transformers import AutoModel

    from sklearn_bert_multilabel._model import MultiLabelTextModule

    module = MultiLabelTextModule(AutoModel.from_pretrained(tiny_model_dir), 3)
    groups = param_groups(module, 1.0, 0.01, layer_decay=0.5)
    lr_of = {}
    for group in groups:
        for p in group["params"]:
            lr_of[id(p)] = group["lr"]
    named = dict(module.named_parameters())
    assert lr_of[id(named["head.1.weight"])] == 1.0
    assert lr_of[id(named["encoder.encoder.layer.1.attention.self.query.weight"])] == 0.5
    assert lr_of[id(named["encoder.encoder.layer.0.attention.self.query.weight"])] == 0.25
    assert lr_of[id(named["encoder.embeddings.word_embeddings.weight"])] == 0.125
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(named["head.1.bias"]) in no_decay and id(named["head.1.weight"]) not in no_decay
    assert id(named["encoder.embeddings.LayerNorm.weight"]) in no_decay
    trainable = {k for k, p in named.items() if p.requires_grad}
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    assert trainable == {
        k for k in named if not k.startswith("encoder.pooler.")
    }  # mean pooling: pooler unused


def test_param_groups_options_replace_lr_and_keep_the_decay_rules(tiny_model_dir):
    """skorch's optimizer__param_groups: the first matching pattern's options, with layer decay
    scaling its lr and biases and norms still without weight decay."""
    from transformers import AutoModel

    from sklearn_bert_multilabel._model import MultiLabelTextModule

    module = MultiLabelTextModule(AutoModel.from_pretrained(tiny_model_dir), 3)
    overrides = [
        ("encoder.encoder.*", {"lr": 0.1, "betas": (0.8, 0.9)}),
        ("encoder.*", {"weight_decay": 0.5}),
    ]
    groups = param_groups(module, 1.0, 0.01, layer_decay=0.5, overrides=overrides)
    of = {id(p): g for g in groups for p in g["params"]}
    named = dict(module.named_parameters())
    layer1 = of[id(named["encoder.encoder.layer.1.attention.self.query.weight"])]
    assert layer1["lr"] == 0.1 * 0.5 and layer1["betas"] == (0.8, 0.9) and layer1["weight_decay"] == 0.01
    embeddings = of[id(named["encoder.embeddings.word_embeddings.weight"])]
    assert embeddings["lr"] == 0.125 and embeddings["weight_decay"] == 0.5 and "betas" not in embeddings
    assert of[id(named["encoder.embeddings.LayerNorm.weight"])]["weight_decay"] == 0.0
    head = of[id(named["head.1.weight"])]
    assert (
        head["lr"] == 1.0 and head["weight_decay"] == 0.01 and set(head) == {"params", "lr", "weight_decay"}
    )
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in named.values())
    assert overrides[0][1] == {"lr": 0.1, "betas": (0.8, 0.9)}  # the user's options are not consumed


def test_param_groups_train_the_encoder_at_its_own_rate(fast_params, toy_data):
    def fit(frozen_pattern):
        params = dict(fast_params, optimizer__param_groups=[(frozen_pattern, {"lr": 0.0})])
        return BertMultiLabelClassifier(**params).fit(*toy_data).module_.state_dict()

    start, trained = fit("*"), fit("encoder.*")  # nothing trained; all but the encoder
    encoder = [name for name in start if name.startswith("encoder.")]
    assert all(torch.equal(start[name], trained[name]) for name in encoder)
    assert not torch.allclose(start["head.1.weight"], trained["head.1.weight"], atol=1e-4)


def test_param_groups_none_means_none_as_in_a_grid(fast_params, toy_data, tmp_path):
    X, Y = toy_data
    plain = BertMultiLabelClassifier(**fast_params).fit(X, Y)
    none = BertMultiLabelClassifier(**fast_params, optimizer__param_groups=None).fit(X, Y)
    np.testing.assert_array_equal(none.predict_proba(X), plain.predict_proba(X))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # None is saved as itself, not dropped with a warning
        none.save(tmp_path / "m")
    assert BertMultiLabelClassifier.load(tmp_path / "m").get_params()["optimizer__param_groups"] is None


def test_param_groups_pattern_matching_nothing_is_refused(fast_params, toy_data):
    clf = BertMultiLabelClassifier(**fast_params, optimizer__param_groups=[("encodr.*", {"lr": 0.0})])
    with pytest.raises(
        ValueError, match=r"pattern\(s\) 'encodr\.\*' match no parameter.*encoder\.\*, head\.\*"
    ):
        clf.fit(*toy_data)
    frozen = clf.set_params(freeze_encoder=True, optimizer__param_groups=[("encoder.*", {"lr": 0.0})])
    assert frozen.fit(*toy_data).n_labels_ == 3  # the frozen encoder's names still count


def test_validation_macro_f1_recorded_each_epoch(fast_params, toy_data):
    clf = BertMultiLabelClassifier(**dict(fast_params, train_split=0.25, max_epochs=3)).fit(*toy_data)
    scores = clf.history_[:, "valid_f1_macro"]
    assert len(scores) == 3 and all(0 <= s <= 1 for s in scores)


def test_early_stopping_stops_and_restores_best(fast_params):
    X, Y = make_texts(96, seed=30)
    Xv, Yv = make_texts(48, seed=31)
    # A learning rate far too high: validation scores collapse after the first epochs.
    clf = BertMultiLabelClassifier(
        **dict(
            fast_params,
            lr=0.5,
            max_epochs=15,
            early_stopping=True,
            n_iter_no_change=2,
            lr_schedule="constant",
            warmup_ratio=0.0,
        )
    )
    clf.fit(X, Y, validation_data=(Xv, Yv))
    history = clf.history_
    assert len(history) < 15
    scores = history[:, "valid_f1_macro"]
    best = int(np.argmax(scores))
    assert len(history) == best + 1 + 2  # stopped after 2 epochs without improvement
    # The weights are those of the best epoch: its validation loss is reproduced. (The
    # loss, not the F1: a diverged model's probabilities tie to a few ulps, so its tuned
    # F1 can flip on rounding noise.)
    logits = torch.as_tensor(clf.decision_function(Xv))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.as_tensor(Yv, dtype=torch.float32)
    )
    assert loss.item() == pytest.approx(history[best, "valid_loss"], rel=1e-4)
    assert loss.item() != pytest.approx(history[-1, "valid_loss"], rel=1e-3)  # not the last epoch's


def test_early_stopping_lets_every_callback_see_the_last_epoch(fast_params, capsys):
    """skorch's EarlyStopping stops from its on_epoch_end, before the callbacks after it (and the
    epoch table's row) see the last epoch; here they all do, and verbose says why it stopped."""
    X, Y = make_texts(96, seed=30)
    Xv, Yv = make_texts(48, seed=31)
    seen = []

    class SeeEpochs(Callback):
        def on_epoch_end(self, net, **kwargs):
            seen.append(net.history[-1, "epoch"])

    params = dict(fast_params, lr=0.5, max_epochs=15, early_stopping=True, n_iter_no_change=2)
    params.update(lr_schedule="constant", warmup_ratio=0.0, verbose=1, callbacks=[SeeEpochs])
    clf = BertMultiLabelClassifier(**params).fit(X, Y, validation_data=(Xv, Yv))
    epochs = len(clf.history_)
    assert epochs < 15
    assert seen == list(range(1, epochs + 1))
    out = capsys.readouterr().out
    rows = [int(m.group(1)) for line in re.split(r"[\r\n]", out) if (m := re.match(r"\s+(\d+)\s", line))]
    assert rows == list(range(1, epochs + 1))
    best = int(np.argmax(clf.history_[:, "valid_f1_macro"])) + 1
    assert "Stopping since valid_f1_macro has not improved in the last 2 epochs." in out
    assert f"Restoring best model from epoch {best}." in out


@pytest.mark.parametrize("load_best", [False, True])
def test_a_users_skorch_early_stopping_is_a_stop_not_an_interruption(fast_params, tmp_path, load_best):
    """skorch's own EarlyStopping among the callbacks: no 'interrupted' warning, the weights it
    leaves (the last epoch's, or with load_best its best by its own monitor), and a cached fit."""
    X, Y = make_texts(96, seed=30)
    Xv, Yv = make_texts(48, seed=31)
    stopper = EarlyStopping(monitor="valid_loss", patience=2, load_best=load_best)
    params = dict(fast_params, lr=0.5, max_epochs=15, lr_schedule="constant", warmup_ratio=0.0)
    clf = BertMultiLabelClassifier(**params, callbacks=[stopper], memory=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.fit(X, Y, validation_data=(Xv, Yv))
    losses = clf.history_[:, "valid_loss"]
    best = int(np.argmin(losses))
    assert len(losses) == best + 1 + 2 < 15
    assert clf.cache_key_ is not None  # a complete fit
    logits = torch.as_tensor(clf.decision_function(Xv))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.as_tensor(Yv, dtype=torch.float32)
    )
    assert loss.item() == pytest.approx(losses[best if load_best else -1], rel=1e-4)


def test_an_interrupt_from_another_callbacks_epoch_end_is_still_an_interruption(fast_params, toy_data):
    class CtrlC(Callback):
        def on_epoch_end(self, net, **kwargs):
            if len(net.history) == 2:
                raise KeyboardInterrupt

    clf = BertMultiLabelClassifier(**dict(fast_params, max_epochs=4, callbacks=[CtrlC]))
    with pytest.warns(UserWarning, match="interrupted during epoch 2"):
        clf.fit(*toy_data)
    assert len(clf.history_) == 2


def test_early_stopping_on_loss(fast_params, toy_data):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(
        **dict(fast_params, train_split=0.25, early_stopping=True, early_stopping_metric="loss", max_epochs=3)
    ).fit(X, Y)
    assert len(clf.history_) <= 3


def test_early_stopping_needs_validation(fast_params, toy_data):
    with pytest.raises(ValueError, match="early_stopping=True needs validation data"):
        BertMultiLabelClassifier(**dict(fast_params, early_stopping=True)).fit(*toy_data)


def test_frozen_head_training_uses_schedule_and_is_deterministic(fast_params, toy_data):
    X, Y = toy_data
    params = dict(fast_params, freeze_encoder=True, max_epochs=3, train_split=0.25, dropout=0.3)
    a = BertMultiLabelClassifier(**params).fit(X, Y)
    b = BertMultiLabelClassifier(**params).fit(X, Y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert "valid_f1_macro" in a.history_[-1]
    assert torch.is_tensor(a.module_.head[-1].weight)


class RecordOptimizer(Callback):
    def on_train_begin(self, net, **kwargs):
        self.defaults = dict(net.optimizer_.defaults)
        self.kind = type(net.optimizer_)


def test_fused_adamw_by_default_unless_chosen(fast_params, toy_data):
    record = RecordOptimizer()
    BertMultiLabelClassifier(**dict(fast_params, callbacks=[record])).fit(*toy_data)
    assert record.kind is torch.optim.AdamW and record.defaults["fused"] is True
    BertMultiLabelClassifier(**dict(fast_params, callbacks=[record], optimizer__foreach=True)).fit(*toy_data)
    assert not record.defaults["fused"] and record.defaults["foreach"] is True
    rmsprop = dict(fast_params, callbacks=[record], optimizer=torch.optim.RMSprop)
    BertMultiLabelClassifier(**rmsprop).fit(*toy_data)
    assert record.kind is torch.optim.RMSprop


def test_every_submodule_trains_from_the_first_batch(fast_params, toy_data):
    """A pretrained encoder is loaded in eval mode; its dropout must be on from epoch 1."""
    from skorch.callbacks import Callback

    class Modes(Callback):
        def initialize(self):
            self.seen = []
            return self

        def on_batch_begin(self, net, training=False, **kwargs):
            self.seen.append((training, {m.training for m in net.module_.modules()}))

    modes = Modes()
    BertMultiLabelClassifier(callbacks=[("modes", modes)], **{**fast_params, "train_split": 0.25}).fit(
        *toy_data
    )
    assert modes.seen[0] == (True, {True})
    assert {frozenset(s) for t, s in modes.seen if not t} == {frozenset({False})}


@pytest.mark.parametrize("scale", [1e-3, 1e3])  # gradients below and above max_grad_norm
def test_gradient_clipping_matches_clip_grad_norm_bit_for_bit(scale):
    import copy

    from sklearn_bert_multilabel._net import MultiLabelNet

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    reference = copy.deepcopy(module)
    net = MultiLabelNet(
        module, criterion=torch.nn.BCEWithLogitsLoss, optimizer=torch.optim.AdamW, max_grad_norm=1.0
    ).initialize()
    for p, q in zip(net.module_.parameters(), reference.parameters(), strict=True):
        p.grad = torch.randn_like(p) * scale
        q.grad = p.grad.clone()
    norm = net._clip_gradients()
    expected_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    assert norm == expected_norm.item()
    assert (expected_norm > 1.0) == (scale > 1)  # both cases are exercised
    for p, q in zip(net.module_.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in net.module_.parameters()]))
    assert total <= 1.0 + 1e-5 if scale > 1 else total.item() == pytest.approx(norm)  # untouched when small


def test_replayed_early_stopping_state_follows_strict_improvement():
    from sklearn_bert_multilabel._checkpoint import replay_best

    scores = [0.5, 0.7, 0.7, 0.6]
    history = [{"epoch": i + 1, "valid_f1_macro": s} for i, s in enumerate(scores)]
    assert replay_best(history, "valid_f1_macro", lower_is_better=False) == (2, 2)  # a tie is a miss
    assert replay_best(history, "valid_f1_macro", lower_is_better=True) == (1, 3)
    nan_first = [{"epoch": 1, "valid_loss": float("nan")}, {"epoch": 2, "valid_loss": 0.3}]
    assert replay_best(nan_first, "valid_loss", lower_is_better=True) == (2, 0)
    assert replay_best([], "valid_loss", lower_is_better=True) == (0, 0)


def test_frozen_feature_batches_say_which_iterator_options_they_ignore(fast_params, toy_data):
    X, Y = toy_data
    params = {**fast_params, "freeze_encoder": True, "max_epochs": 1}
    with pytest.warns(UserWarning, match="iterator_train__num_workers ignored: with freeze_encoder=True"):
        BertMultiLabelClassifier(**params, iterator_train__num_workers=2).fit(X, Y)
    clf = BertMultiLabelClassifier(**params, iterator_train__drop_last=True).fit(X[:40], Y[:40])
    assert len(clf.history_[-1, "batches"]) == 2  # 40 texts, batches of 16, the last 8 dropped


def test_dataloader_options_with_valid_values_train(fast_params, toy_data):
    X, Y = toy_data
    params = {**fast_params, "max_epochs": 1, "train_split": 0.25}
    clf = BertMultiLabelClassifier(
        **params,
        iterator_train__batch_size=-1,  # skorch's "all rows in one batch"
        iterator_train__shuffle=False,
        iterator_train__timeout=0,
        iterator_valid__num_workers=0,
        iterator_valid__prefetch_factor=None,
    ).fit(X, Y)
    assert clf.history_[-1, "train_batch_count"] == 1
    assert np.isfinite(clf.history_[-1, "valid_loss"])


@pytest.mark.parametrize("kind", ["bert", "distilbert", "deberta-v2", "albert", "mpnet"])
def test_layer_decay_depths_across_architectures(kind):
    """Numbered layers get depths L..1 from the bottom, embeddings L + 1, and weights outside the
    numbered layers (poolers, weights every layer shares) 0, as the README says."""
    import transformers

    from sklearn_bert_multilabel._model import MultiLabelTextModule
    from sklearn_bert_multilabel._net import _depth

    small = dict(vocab_size=100, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37)
    small["hidden_size"] = 32
    config = {
        "bert": lambda: transformers.BertConfig(**small),
        "distilbert": lambda: transformers.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=3, n_heads=2, hidden_dim=37
        ),
        "deberta-v2": lambda: transformers.DebertaV2Config(
            relative_attention=True, position_buckets=8, **small
        ),
        "albert": lambda: transformers.AlbertConfig(embedding_size=16, **small),
        "mpnet": lambda: transformers.MPNetConfig(**small),
    }[kind]()
    module = MultiLabelTextModule(transformers.AutoModel.from_config(config), 3)
    depths = {name: _depth(name, 3) for name, _ in module.named_parameters()}
    assert {d for name, d in depths.items() if not name.startswith("encoder.")} == {0}
    layered = {d for name, d in depths.items() if re.search(r"\.layer\.\d+\.", name)}
    embeddings = {d for name, d in depths.items() if "embeddings." in name}
    top = {name for name, d in depths.items() if name.startswith("encoder.") and d == 0}
    if kind == "albert":  # one layer, shared by every depth
        assert not layered and any("albert_layer_groups.0." in name for name in top)
    else:
        assert layered == {1, 2, 3}
    assert embeddings == {4}
    if kind == "deberta-v2":
        assert depths["encoder.encoder.rel_embeddings.weight"] == 4
    if kind == "mpnet":
        assert "encoder.encoder.relative_attention_bias.weight" in top
