"""The hand-written training step of a plain head on cached frozen-encoder features."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import weights_after_each_training_batch
from torch import nn

import sklearn_bert_multilabel._net as net_module
from sklearn_bert_multilabel import BertMultiLabelClassifier
from sklearn_bert_multilabel._head import HeadStep
from sklearn_bert_multilabel._model import FastDropout, build_head


def autograd_step(head, x, y, pos_weight, loss_scale):
    logits = head(x)
    loss = nn.BCEWithLogitsLoss(pos_weight=pos_weight)(logits, y)
    (loss * loss_scale).backward()
    return loss, logits


@pytest.mark.parametrize("sizes", [(), (16,), (16, 8)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_loss_and_gradients_match_autograd(sizes, weighted, p):
    torch.manual_seed(0)
    head = build_head(12, 3, sizes, p).train()
    twin = copy.deepcopy(head)
    x, y = torch.randn(9, 12), (torch.rand(9, 3) < 0.4).float()
    pos_weight = torch.tensor([1.0, 4.0, 0.5]) if weighted else None
    x_before = x.clone()

    for loss_scale in (0.5, 1.0):  # two steps: gradients accumulate as with backward()
        torch.manual_seed(7 + int(loss_scale * 2))
        loss, logits = autograd_step(head, x, y, pos_weight, loss_scale)
        torch.manual_seed(7 + int(loss_scale * 2))  # the same dropout masks
        step = HeadStep.for_head(twin)
        assert step is not None
        loss2, logits2 = step.forward(x, y, pos_weight)
        step.backward(loss_scale)
        assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
        torch.testing.assert_close(logits2, logits.detach(), rtol=1e-5, atol=1e-6)

    assert torch.equal(x, x_before)  # the batch is read, never written
    for (name, a), b in zip(head.named_parameters(), twin.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)
        assert b.grad.abs().sum() > 0, name


def test_eval_mode_dropouts_draw_no_mask():
    head = build_head(6, 2, (4,), 0.5).eval()
    x, y = torch.randn(5, 6), torch.ones(5, 2)
    step = HeadStep.for_head(head)
    state = torch.get_rng_state()
    loss, logits = step.forward(x, y)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(logits, head(x).detach())


@pytest.mark.parametrize(
    "head",
    [
        nn.Sequential(nn.Dropout(0.1), nn.Linear(4, 2)),  # not FastDropout
        nn.Sequential(FastDropout(0.1, inplace=True), nn.Linear(4, 2)),
        nn.Sequential(FastDropout(1.0), nn.Linear(4, 2)),
        nn.Sequential(FastDropout(0.1), nn.Linear(4, 2, bias=False)),
        nn.Sequential(FastDropout(0.1), nn.Linear(4, 3), nn.GELU(), FastDropout(0.1), nn.Linear(3, 2)),
        nn.Sequential(FastDropout(0.1), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)),
        nn.Linear(4, 2),
    ],
)
def test_other_heads_are_left_to_autograd(head):
    assert HeadStep.for_head(head) is None


def test_backward_needs_a_forward():
    with pytest.raises(RuntimeError, match="forward"):
        HeadStep.for_head(build_head(4, 2, (), 0.1)).backward()


@pytest.fixture
def count_head_steps(monkeypatch):
    calls = []
    original = HeadStep.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HeadStep, "forward", counting)
    return calls


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"pos_weight": "balanced", "accumulate_batches": 4, "dropout": 0.3},  # 6 batches: 4 + a partial 2
        {"hidden_layer_sizes": (8, 4), "max_grad_norm": 1e-3},  # every step clipped
    ],
)
def test_frozen_fit_matches_the_autograd_path(fast_params, toy_data, extra, count_head_steps, monkeypatch):
    X, Y = toy_data
    params = {
        **fast_params,
        "freeze_encoder": True,
        "max_epochs": 3,
        "lr": 1e-2,
        "hidden_layer_sizes": (8,),
        **extra,
    }
    fast = BertMultiLabelClassifier(**params).fit(X, Y)
    assert len(count_head_steps) == 3 * len(X) // fast_params["batch_size"]

    monkeypatch.setattr(net_module.MultiLabelNet, "_fixed_feature_step", lambda self: None)
    slow = BertMultiLabelClassifier(**params).fit(X, Y)
    np.testing.assert_allclose(fast.predict_proba(X), slow.predict_proba(X), atol=2e-5)
    assert not np.allclose(
        fast.predict_proba(X), BertMultiLabelClassifier(**params).fit(X, Y[:, ::-1]).predict_proba(X)
    )
    np.testing.assert_allclose(fast.history_[:, "train_loss"], slow.history_[:, "train_loss"], rtol=1e-5)


@pytest.mark.parametrize("params", [{"precision": "bf16"}, {"freeze_encoder": False}])
def test_hand_written_step_only_for_fp32_cached_features(fast_params, toy_data, params, count_head_steps):
    X, Y = toy_data
    BertMultiLabelClassifier(**{**fast_params, "freeze_encoder": True, **params}).fit(X, Y)
    assert count_head_steps == []


def test_a_non_finite_loss_stops_before_the_hand_written_update(fast_params, toy_data, monkeypatch):
    from sklearn_bert_multilabel import NonFiniteLossError

    X, Y = toy_data
    real_forward = HeadStep.forward
    calls = []

    def forward(self, x, y, pos_weight=None):
        calls.append(1)
        loss, logits = real_forward(self, x, y, pos_weight)
        return (loss * float("nan") if len(calls) == 3 else loss), logits

    snapshot = weights_after_each_training_batch()
    monkeypatch.setattr(HeadStep, "forward", forward)
    clf = BertMultiLabelClassifier(
        **{**fast_params, "freeze_encoder": True, "callbacks": [("snapshot", snapshot)]}
    )
    with pytest.raises(NonFiniteLossError, match=r"became nan in epoch 1, batch 3") as info:
        clf.fit(X, Y)
    assert (info.value.epoch, info.value.batch) == (1, 3)
    head = {k: v for k, v in clf.module_.state_dict().items() if k.startswith("head.")}
    assert head.keys() == snapshot.state.keys()
    for key, value in head.items():  # the weights after batch 2, untouched since
        torch.testing.assert_close(value, snapshot.state[key], rtol=0, atol=0)
    assert all(p.grad is None for p in clf.module_.head.parameters())
