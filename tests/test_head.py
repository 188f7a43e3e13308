"""The hand-written training step of a plain head on cached frozen-encoder features."""

from __future__ import annotations

import copy
import types

import numpy as np
import pytest
import torch
from conftest import weights_after_each_training_batch
from skorch.callbacks import Callback
from torch import nn

import sklearn_bert_multilabel._net as net_module
from sklearn_bert_multilabel import BertMultiLabelClassifier
from sklearn_bert_multilabel._head import HeadStep
from sklearn_bert_multilabel._model import FastDropout, build_head


def autograd_step(head, x, y, pos_weight, loss_scale, row_weight=None):
    logits = head(x)
    weight = None if row_weight is None else row_weight[:, None]
    loss = nn.BCEWithLogitsLoss(weight=weight, pos_weight=pos_weight)(logits, y)
    (loss * loss_scale).backward()
    return loss, logits


@pytest.mark.parametrize("sizes", [(), (16,), (16, 8)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("rows_weighted", [False, True])
def test_loss_and_gradients_match_autograd(sizes, weighted, p, rows_weighted):
    torch.manual_seed(0)
    head = build_head(12, 3, sizes, p).train()
    twin = copy.deepcopy(head)
    x, y = torch.randn(9, 12), (torch.rand(9, 3) < 0.4).float()
    pos_weight = torch.tensor([1.0, 4.0, 0.5]) if weighted else None
    row_weight = torch.tensor([0.2, 1.0, 3.0, 0.0, 1.5, 0.7, 1.0, 2.0, 0.5]) if rows_weighted else None
    x_before = x.clone()

    for loss_scale in (0.5, 1.0):  # two steps: gradients accumulate as with backward()
        torch.manual_seed(7 + int(loss_scale * 2))
        loss, logits = autograd_step(head, x, y, pos_weight, loss_scale, row_weight)
        torch.manual_seed(7 + int(loss_scale * 2))  # the same dropout masks
        step = HeadStep.for_head(twin)
        assert step is not None
        loss2, logits2 = step.forward(x, y, pos_weight, weight=row_weight)
        step.backward(loss_scale)
        assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
        torch.testing.assert_close(logits2, logits.detach(), rtol=1e-5, atol=1e-6)

    assert torch.equal(x, x_before)  # the batch is read, never written
    for (name, a), b in zip(head.named_parameters(), twin.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)
        assert b.grad.abs().sum() > 0, name


@pytest.mark.parametrize("sizes", [(), (16, 8)])
def test_gradient_buffers_receive_what_backward_adds_to_grad(sizes):
    torch.manual_seed(0)
    head = build_head(12, 3, sizes, 0.3).train()
    step = HeadStep.for_head(head)
    flat, grads = step.gradient_buffers()
    shapes = [(lin.weight.shape, lin.bias.shape) for lin in step.linears]
    assert [(w.shape, b.shape) for w, b in grads] == shapes
    assert flat.numel() == sum(p.numel() for p in head.parameters())
    flat.fill_(float("nan"))  # overwritten, never read
    x, y = torch.randn(9, 12), (torch.rand(9, 3) < 0.4).float()
    for k, loss_scale in enumerate((0.5, 1.0)):  # the second batch adds to the first
        torch.manual_seed(3 + k)
        step.forward(x, y)
        step.backward(loss_scale, grads, add=k > 0)
        torch.manual_seed(3 + k)  # the same masks, gradients into .grad
        step.forward(x, y)
        step.backward(loss_scale)
    for lin, (w, b) in zip(step.linears, grads, strict=True):
        assert torch.equal(w, lin.weight.grad) and torch.equal(b, lin.bias.grad)
    norm = torch.nn.utils.get_total_norm([p.grad for p in head.parameters()])
    torch.testing.assert_close(torch.linalg.vector_norm(flat), norm)


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


def test_hand_written_step_only_for_cached_features(fast_params, toy_data, count_head_steps):
    """A fine-tuned encoder trains through autograd (a bf16 head on features: see below)."""
    X, Y = toy_data
    BertMultiLabelClassifier(**{**fast_params, "freeze_encoder": False}).fit(X, Y)
    assert count_head_steps == []


def test_a_non_finite_loss_stops_before_the_hand_written_update(fast_params, toy_data, monkeypatch):
    from sklearn_bert_multilabel import NonFiniteLossError

    X, Y = toy_data
    real_forward = HeadStep.forward
    calls = []

    def forward(self, x, y, pos_weight=None, weight=None):
        calls.append(1)
        loss, logits = real_forward(self, x, y, pos_weight, weight=weight)
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


# ------------------------------------------------------------ the lean epoch
class CountTrainingBatches(Callback):
    """Acts on training batches, so the net takes skorch's per-batch loop."""

    def initialize(self):
        self.count = 0
        return self

    def on_batch_end(self, net, training=False, **kwargs):
        self.count += training


def record_lean_epochs(monkeypatch, probe):
    """Call ``probe()`` as each lean epoch starts; returns the list of its results."""
    seen = []
    original = net_module.MultiLabelNet._run_head_epoch

    def recording(self, *args, **kwargs):
        seen.append(probe())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(net_module.MultiLabelNet, "_run_head_epoch", recording)
    return seen


@pytest.fixture
def lean_epochs(monkeypatch):
    """How many epochs ran through the lean loop."""
    return record_lean_epochs(monkeypatch, lambda: 1)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"pos_weight": "balanced", "accumulate_batches": 4, "dropout": 0.3},  # 6 batches: 4 + a partial 2
        {"hidden_layer_sizes": (8, 4), "max_grad_norm": 1e-3, "lr_schedule": "cosine"},  # every step clipped
        # no masks, no clipping; a last batch of 16
        {"hidden_layer_sizes": (8,), "dropout": 0.0, "batch_size": 40, "max_grad_norm": None},
    ],
)
def test_lean_epoch_is_skorchs_loop_without_the_notifications(fast_params, toy_data, extra, lean_epochs):
    X, Y = toy_data
    params = {**fast_params, "freeze_encoder": True, "max_epochs": 3, "hidden_layer_sizes": (8,), **extra}
    lean = BertMultiLabelClassifier(**params).fit(X, Y)
    assert len(lean_epochs) == 3

    counter = CountTrainingBatches()
    skorch_loop = BertMultiLabelClassifier(**params, callbacks=[("count", counter)]).fit(X, Y)
    assert len(lean_epochs) == 3  # a callback on training batches: skorch's own loop
    assert counter.count == 3 * -(-len(X) // params["batch_size"])

    # The same batches, masks, updates and schedule: the same model and the same history rows.
    for (name, a), b in zip(
        lean.module_.head.state_dict().items(), skorch_loop.module_.head.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    for key in ("train_loss", "train_batch_count"):
        np.testing.assert_allclose(lean.history_[:, key], skorch_loop.history_[:, key], rtol=1e-6)
    assert (
        lean.history_[:, "batches", :, "train_batch_size"]
        == skorch_loop.history_[:, "batches", :, "train_batch_size"]
    )
    assert lean.history_[-1, "batches", -1].keys() == skorch_loop.history_[-1, "batches", -1].keys()
    assert all(p.grad is None for p in lean.module_.head.parameters())


@pytest.mark.filterwarnings("ignore::sklearn_bert_multilabel.PrecisionWarning")  # CPUs without bf16
def test_head_on_cached_features_trains_in_fp32_whatever_the_precision(fast_params, toy_data, lean_epochs):
    """bf16 autocast of a tiny head's products costs more than it saves: on the CPU it trains in fp32."""
    X, Y = toy_data
    params = {**fast_params, "freeze_encoder": True, "hidden_layer_sizes": (8,), "precision": "bf16"}
    lean = BertMultiLabelClassifier(**params).fit(X, Y)
    assert len(lean_epochs) == params["max_epochs"]  # the hand-written fp32 step
    skorch_loop = BertMultiLabelClassifier(**params, callbacks=[("count", CountTrainingBatches())]).fit(X, Y)
    assert len(lean_epochs) == params["max_epochs"]  # skorch's loop, through the module
    # Both in fp32: the same model up to float rounding, where bf16 products would differ by 1e-3.
    for (name, a), b in zip(
        lean.module_.head.state_dict().items(), skorch_loop.module_.head.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert lean.precision == "bf16" and lean.module_.head[1].weight.dtype == torch.float32


def test_lean_epoch_with_validation_and_early_stopping(fast_params, toy_data, lean_epochs):
    X, Y = toy_data
    params = {
        **fast_params,
        "freeze_encoder": True,
        "max_epochs": 4,
        "train_split": 0.25,
        "early_stopping": True,
        "threshold": "auto",
    }
    clf = BertMultiLabelClassifier(**params).fit(X, Y)
    assert len(lean_epochs) == len(clf.history_) > 0  # the validation scores do not need the batches
    assert "valid_f1_macro" in clf.history_[-1]
    slow = BertMultiLabelClassifier(**params, callbacks=[("count", CountTrainingBatches())]).fit(X, Y)
    np.testing.assert_allclose(clf.predict_proba(X), slow.predict_proba(X), atol=1e-6)


def test_a_non_finite_loss_stops_the_lean_epoch_before_the_update(
    fast_params, toy_data, monkeypatch, lean_epochs
):
    from sklearn_bert_multilabel import NonFiniteLossError

    X, Y = toy_data
    real_forward = HeadStep.forward
    calls, heads = [], []

    def forward(self, x, y, pos_weight=None, masks=None, weight=None):
        calls.append(1)
        if len(calls) == 3:
            heads.append({k: v.clone() for k, v in self.linears[0].state_dict().items()})
            return real_forward(self, x, y, pos_weight, masks, weight)[0] * float("inf"), None
        return real_forward(self, x, y, pos_weight, masks, weight)

    monkeypatch.setattr(HeadStep, "forward", forward)
    clf = BertMultiLabelClassifier(**{**fast_params, "freeze_encoder": True})
    with pytest.raises(NonFiniteLossError, match=r"became inf in epoch 1, batch 3") as info:
        clf.fit(X, Y)
    assert lean_epochs == [1]
    assert (info.value.epoch, info.value.batch) == (1, 3)
    for key, value in clf.module_.head[1].state_dict().items():  # the weights before batch 3
        torch.testing.assert_close(value, heads[0][key], rtol=0, atol=0)
    assert all(p.grad is None for p in clf.module_.head.parameters())


@pytest.mark.parametrize("callback", ["print_log", "batch", "grad", "valid"])
def test_which_callbacks_keep_the_lean_epoch(fast_params, toy_data, lean_epochs, callback):
    from skorch.callbacks import EpochScoring, GradientNormClipping, PrintLog

    X, Y = toy_data
    chosen = {
        "print_log": ("log", PrintLog(sink=lambda *_: None)),  # epoch ends only: stays lean
        "batch": ("count", CountTrainingBatches()),
        "grad": ("clip", GradientNormClipping(1.0)),  # on_grad_computed
        "valid": ("scores", EpochScoring("f1_macro", on_train=False)),  # overrides on_batch_end
    }[callback]
    validation = {"validation_data": (X[:16], Y[:16])} if callback == "valid" else {}
    BertMultiLabelClassifier(**{**fast_params, "freeze_encoder": True}, callbacks=[chosen]).fit(
        X, Y, **validation
    )
    assert len(lean_epochs) == (2 if callback == "print_log" else 0)


def test_no_lean_epoch_when_verbose(fast_params, toy_data, lean_epochs, capsys):
    X, Y = toy_data
    BertMultiLabelClassifier(**{**fast_params, "freeze_encoder": True, "verbose": 1}).fit(X, Y)
    assert lean_epochs == []  # the progress bar shows every batch


@pytest.mark.parametrize(
    "sizes, ps",
    [
        ((), (0.0,)),
        ((), (0.3,)),
        ((7,), (0.0, 0.0)),
        ((7,), (0.3, 0.3)),
        ((7, 5), (0.3, 0.3, 0.3)),
        ((7, 5), (0.1, 0.0, 0.5)),  # one layer without a mask, two different cuts
        ((7, 5), (0.5, 0.2, 0.5)),
    ],
)
@pytest.mark.parametrize(
    "block, batch_sizes",
    [
        (200, [4, 4, 9, 4, 3]),  # several blocks, one of a single batch
        # Runs of equal sizes in one block, with masks (3 x 11, 3 x 7, 3 x 5) whose elements are
        # no multiple of 4: each mask's draws are padded to whole 64-bit words.
        (1 << 20, [3, 3, 3, 4, 4, 9, 9, 2]),
    ],
)
def test_batch_masks_are_the_masks_forward_draws(monkeypatch, sizes, ps, block, batch_sizes):
    import sklearn_bert_multilabel._head as head_module
    from sklearn_bert_multilabel._model import dropout_mask

    monkeypatch.setattr(head_module, "MASK_BLOCK", block)
    layers, width = [], 11
    for size, p in zip(sizes, ps, strict=False):
        layers += [FastDropout(p), nn.Linear(width, size), nn.ReLU()]
        width = size
    head = nn.Sequential(*layers, FastDropout(ps[-1]), nn.Linear(width, 2)).train()
    step = HeadStep.for_head(head)
    torch.manual_seed(1)
    got = list(step.batch_masks(batch_sizes))
    after = torch.rand(3)

    torch.manual_seed(1)
    assert len(got) == len(batch_sizes)
    for size, masks in zip(batch_sizes, got, strict=True):
        assert len(masks) == len(sizes) + 1
        for mask, width, p in zip(masks, (11, *sizes), ps, strict=True):
            if p == 0:
                assert mask is None
                continue
            values, scale = mask
            expected = dropout_mask(torch.empty(size, width), p)
            assert torch.equal(values, expected)
            assert scale == pytest.approx(float(expected.max()))
    assert torch.equal(torch.rand(3), after)  # the generator is left where per-batch draws leave it


def test_direct_adamw_step_is_adamws_step():
    from sklearn_bert_multilabel._net import HeadEpoch, param_groups

    torch.manual_seed(0)
    head = build_head(12, 3, (16,), 0.0).train()
    twin = copy.deepcopy(head)
    x, y = torch.randn(20, 12), (torch.rand(20, 3) < 0.4).float()
    runs = []
    for module, direct in ((head, True), (twin, False)):
        optimizer = torch.optim.AdamW(param_groups(module, 1e-2, 0.05), lr=1e-2, fused=True)
        calls = []

        def counted(self, *args, calls=calls, **kwargs):
            calls.append(1)
            return type(self).step(self, *args, **kwargs)

        optimizer.step = types.MethodType(counted, optimizer)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
        step = HeadStep.for_head(module)
        lean = HeadEpoch(step, optimizer, list(module.parameters()))
        assert lean._direct is not None
        if direct:
            lean.attach_gradients()
        for _ in range(5):
            step.forward(x, y)
            if direct:
                step.backward(into=lean.grads)  # overwrites the attached buffers
                lean.step()
            else:
                step.backward()
                optimizer.step()
                lean.finish()
            schedule.step()
        if direct:
            # The lean steps counted on a shared counter; the epoch's end writes it into the state.
            assert all(state["step"].item() == 1 for state in optimizer.state.values())
            lean.finish()
            assert all(p.grad is None for p in module.parameters())
        assert all(state["step"].item() == 5 for state in optimizer.state.values())
        # The next epoch starts with AdamW.step itself, from the counts written back.
        step.forward(x, y)
        step.backward()
        optimizer.step()
        runs.append(optimizer)
        assert len(calls) == (2 if direct else 6)  # after the first, the lean steps bypass AdamW.step
    for a, b in zip(head.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(runs[0].state.values(), runs[1].state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))


@pytest.mark.parametrize(
    "make",
    [
        lambda params: torch.optim.Adam(params, fused=True),
        lambda params: torch.optim.AdamW(params),  # not fused
        lambda params: torch.optim.AdamW(params, fused=True, amsgrad=True),
        lambda params: torch.optim.AdamW(params, fused=True, maximize=True),
        lambda params: torch.optim.AdamW(params, lr=torch.tensor(1e-3), fused=True),
    ],
)
def test_other_optimizers_take_their_own_step(make):
    from sklearn_bert_multilabel._net import HeadEpoch

    head = build_head(4, 2, (), 0.0)
    assert (
        HeadEpoch(HeadStep.for_head(head), make(head.parameters()), list(head.parameters()))._direct is None
    )


def test_optimizer_hooks_are_honoured():
    from sklearn_bert_multilabel._net import HeadEpoch

    head = build_head(4, 2, (), 0.0)
    optimizer = torch.optim.AdamW(head.parameters(), fused=True)
    calls = []
    optimizer.register_step_post_hook(lambda *args: calls.append(1))
    lean = HeadEpoch(HeadStep.for_head(head), optimizer, list(head.parameters()))
    assert lean._direct is None
    for p in head.parameters():
        p.grad = torch.ones_like(p)
    lean.step()
    assert calls == [1]


def test_the_fused_kernel_is_checked_once_against_adamw(monkeypatch):
    import sklearn_bert_multilabel._net as net

    assert net._fused_adamw_kernel_works()  # this torch: the direct call gives AdamW.step's weights

    def changed(*args, **kwargs):  # a torch whose private kernel takes other arguments
        raise TypeError("_fused_adamw_() got an unexpected keyword argument 'grad_scale'")

    head = build_head(4, 2, (), 0.0)
    for kernel in (changed, None):  # or has none
        monkeypatch.setattr(torch, "_fused_adamw_", kernel, raising=False)
        net._fused_adamw_kernel_works.cache_clear()
        try:
            assert not net._fused_adamw_kernel_works()
            optimizer = torch.optim.AdamW(head.parameters(), fused=True)
            assert net.HeadEpoch(HeadStep.for_head(head), optimizer, list(head.parameters()))._direct is None
        finally:
            monkeypatch.undo()
            net._fused_adamw_kernel_works.cache_clear()
    assert net._fused_adamw_kernel_works()


@pytest.mark.parametrize("hidden, small", [((8,), True), ((8192,), False)])
def test_small_lean_epochs_run_on_one_thread(fast_params, toy_data, monkeypatch, hidden, small):
    X, Y = toy_data
    seen = record_lean_epochs(monkeypatch, torch.get_num_threads)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        params = {**fast_params, "freeze_encoder": True, "hidden_layer_sizes": hidden, "batch_size": 64}
        BertMultiLabelClassifier(**params).fit(X, Y)
        assert seen == ([1, 1] if small else [2, 2])
        assert torch.get_num_threads() == 2  # restored after every epoch
    finally:
        torch.set_num_threads(before)


def test_the_thread_count_is_restored_when_an_epoch_fails(fast_params, toy_data, monkeypatch):
    from sklearn_bert_multilabel import NonFiniteLossError

    X, Y = toy_data
    real_forward = HeadStep.forward

    def forward(self, x, y, pos_weight=None, masks=None, weight=None):
        loss, logits = real_forward(self, x, y, pos_weight, masks, weight)
        return loss * float("nan"), logits

    monkeypatch.setattr(HeadStep, "forward", forward)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(NonFiniteLossError):
            BertMultiLabelClassifier(**{**fast_params, "freeze_encoder": True}).fit(X, Y)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_adamw_step_runs_once_per_fit_in_lean_epochs(fast_params, toy_data, monkeypatch, lean_epochs):
    X, Y = toy_data
    assert net_module._fused_adamw_kernel_works()  # its once-per-process check steps AdamW itself
    optimizers = []
    real_step = torch.optim.AdamW.step

    def counted(self, *args, **kwargs):
        optimizers.append(self)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counted)
    params = {**fast_params, "freeze_encoder": True, "max_epochs": 3, "hidden_layer_sizes": (8,)}
    BertMultiLabelClassifier(**params).fit(X, Y)
    assert len(lean_epochs) == 3
    # The first step creates the state; later epochs step through the kernel from that state.
    assert len(optimizers) == 1
    steps = 3 * -(-len(X) // params["batch_size"])
    counts = [state["step"].item() for state in optimizers[0].state.values()]
    assert counts == [steps] * 4  # every parameter's count, written back at each epoch's end


@pytest.mark.parametrize("flushing", [False, True])
def test_lean_epochs_flush_denormals_and_restore_the_setting(fast_params, toy_data, monkeypatch, flushing):
    from sklearn_bert_multilabel import NonFiniteLossError

    X, Y = toy_data
    seen = record_lean_epochs(monkeypatch, net_module.flushes_denormals)
    if not torch.set_flush_denormal(flushing):
        pytest.skip("torch cannot flush subnormal floats on this CPU")
    try:
        assert net_module.flushes_denormals() is flushing
        BertMultiLabelClassifier(**{**fast_params, "freeze_encoder": True}).fit(X, Y)
        assert seen == [True, True]
        assert net_module.flushes_denormals() is flushing  # restored after every epoch

        real_forward = HeadStep.forward

        def failing(self, x, y, pos_weight=None, masks=None, weight=None):
            loss, logits = real_forward(self, x, y, pos_weight, masks, weight)
            return loss * float("nan"), logits

        monkeypatch.setattr(HeadStep, "forward", failing)
        with pytest.raises(NonFiniteLossError):
            BertMultiLabelClassifier(**{**fast_params, "freeze_encoder": True}).fit(X, Y)
        assert net_module.flushes_denormals() is flushing  # also when the epoch fails
    finally:
        torch.set_flush_denormal(False)


def test_step_flops():
    step = HeadStep.for_head(build_head(384, 6, (256, 128), 0.1))
    assert step.step_flops(32) == 6 * 32 * (384 * 256 + 256 * 128 + 128 * 6)


def test_lean_epochs_resume_from_a_checkpoint_as_if_never_interrupted(
    fast_params, toy_data, tmp_path, monkeypatch, lean_epochs
):
    X, Y = toy_data
    params = {**fast_params, "freeze_encoder": True, "max_epochs": 3, "train_split": 0.25, "dropout": 0.3}
    expected = BertMultiLabelClassifier(**params).fit(X, Y).predict_proba(X)
    assert len(lean_epochs) == 3

    real_backward, calls = HeadStep.backward, []

    def backward(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2 * 5 + 2:  # 72 training texts, batches of 16: during epoch 3
            raise KeyboardInterrupt
        return real_backward(self, *args, **kwargs)

    interrupted = BertMultiLabelClassifier(checkpoint_dir=tmp_path, **params)
    with monkeypatch.context() as patch:
        patch.setattr(HeadStep, "backward", backward)
        with pytest.warns(UserWarning, match="interrupted during epoch 3"):
            interrupted.fit(X, Y)
    # The gradient buffers of the interrupted epoch are not left on the parameters.
    assert all(p.grad is None for p in interrupted.module_.head.parameters())

    resumed = BertMultiLabelClassifier(checkpoint_dir=tmp_path, warm_start=True, **params).fit(X, Y)
    assert len(resumed.history_) == 3
    assert len(lean_epochs) == 3 + 3 + 1  # the interrupted run's three, the resumed run's one
    np.testing.assert_allclose(resumed.predict_proba(X), expected, rtol=0, atol=1e-6)


class AddStepHookAfterFirstEpoch(Callback):
    """Adds an optimizer post-step hook once the first epoch has ended."""

    def initialize(self):
        self.steps = 0
        return self

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == 1:
            net.optimizer_.register_step_post_hook(lambda *args: setattr(self, "steps", self.steps + 1))


def test_one_lean_epoch_object_a_fit_that_still_sees_new_optimizer_hooks(
    fast_params, toy_data, monkeypatch, lean_epochs
):
    from sklearn_bert_multilabel._net import HeadEpoch

    built = []
    original = HeadEpoch.__init__
    monkeypatch.setattr(
        HeadEpoch, "__init__", lambda self, *args, **kw: built.append(1) or original(self, *args, **kw)
    )
    X, Y = toy_data
    params = {**fast_params, "freeze_encoder": True, "max_epochs": 3, "hidden_layer_sizes": (8,)}
    reference = BertMultiLabelClassifier(**params).fit(X, Y)
    assert len(lean_epochs) == 3 and len(built) == 1  # its gradient buffers serve all three epochs

    # The hook is added after epoch 1: epochs 2 and 3 must step through optimizer.step() to call it.
    hook = AddStepHookAfterFirstEpoch()
    hooked = BertMultiLabelClassifier(**params, callbacks=[("hook", hook)]).fit(X, Y)
    assert len(lean_epochs) == 6
    assert hook.steps == 2 * -(-len(X) // params["batch_size"])
    for a, b in zip(reference.module_.head.parameters(), hooked.module_.head.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same updates either way
