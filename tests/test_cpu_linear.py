"""oneDNN products for fp32 training and short predictions on x86 CPUs not made by Intel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_texts
from torch import nn

from sklearn_bert_multilabel import BertMultiLabelClassifier, _cpu_linear, _inference
from sklearn_bert_multilabel._cpu_linear import (
    OneDnnLinear,
    OneDnnLinears,
    linear_products,
    onednn_products_agree,
)


@pytest.fixture
def onednn():
    if not onednn_products_agree():
        pytest.skip("oneDNN linear products are not available on this machine")


def _products(monkeypatch) -> list[tuple[int, ...]]:
    """Record the shape of the first operand of every product OneDnnLinear computes."""
    calls = []
    product = _cpu_linear.onednn_product

    def recording(x, weight, bias):
        calls.append(tuple(x.shape))
        return product(x, weight, bias)

    monkeypatch.setattr(_cpu_linear, "onednn_product", recording)
    return calls


@pytest.mark.parametrize("shape", [(7, 12), (2, 5, 12)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_matches_f_linear_forward_and_backward(onednn, shape, with_bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    weight = torch.randn(9, 12, generator=gen, requires_grad=True)
    bias = torch.randn(9, generator=gen, requires_grad=True) if with_bias else None
    grad = torch.randn(*shape[:-1], 9, generator=gen)
    inputs = (x, weight) + ((bias,) if with_bias else ())
    expected = F.linear(x, weight, bias)
    expected_grads = torch.autograd.grad(expected, inputs, grad)
    out = OneDnnLinear.apply(x, weight, bias)
    grads = torch.autograd.grad(out, inputs, grad)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_onednn_linear_handles_strided_inputs_and_broadcast_gradients(onednn):
    """A transposed input and a gradient expanded from one row (stride 0), as ``.sum()`` and
    broadcasting give them, reach the products as they are: the results must not change."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, 12, generator=gen).transpose(0, 1).requires_grad_(True)
    weight = torch.randn(9, 12, generator=gen, requires_grad=True)
    bias = torch.randn(9, generator=gen, requires_grad=True)
    grad = torch.randn(1, 1, 9, generator=gen).expand(2, 5, 9)
    assert not x.is_contiguous() and grad.stride()[:2] == (0, 0)
    expected = F.linear(x, weight, bias)
    out = OneDnnLinear.apply(x, weight, bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    wanted = torch.autograd.grad(expected, (x, weight, bias), grad)
    for got, want in zip(torch.autograd.grad(out, (x, weight, bias), grad), wanted, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_onednn_linear_computes_only_the_gradients_needed(onednn, monkeypatch):
    calls = _products(monkeypatch)
    x = torch.randn(4, 6)  # no gradient wanted for the input: a first layer
    weight = torch.randn(3, 6, requires_grad=True)
    OneDnnLinear.apply(x, weight, None).sum().backward()
    assert calls == [(4, 6), (3, 4)]  # the forward product and the weight's gradient only
    assert weight.grad.shape == (3, 6)

    calls.clear()
    x.requires_grad_(True)
    weight.requires_grad_(False)
    OneDnnLinear.apply(x, weight, None).sum().backward()
    assert calls == [(4, 6), (4, 3)]  # the forward product and the input's gradient only


def test_mode_routes_fp32_cpu_linear_calls_only(onednn, monkeypatch):
    calls = _products(monkeypatch)
    layer = nn.Linear(6, 3)
    x = torch.randn(4, 6)
    with OneDnnLinears():
        out = layer(x)
        assert len(calls) == 1
        layer.double()(x.double())  # float64: the plain product
        layer.float()(x[0])  # a single row (1-D): the plain product
        layer(x.to_sparse())  # a sparse input: the plain product
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16  # autocast keeps its own products
        torch.matmul(x, layer.weight.t())  # other functions pass through unchanged
    assert len(calls) == 1
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    layer(x)  # outside the mode: nothing routed
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("vendor", "used"),
    [("AuthenticAMD", True), ("HygonGenuine", True), ("GenuineIntel", False), ("", False)],
)
def test_linear_products_by_vendor_precision_and_device(onednn, monkeypatch, vendor, used):
    monkeypatch.setattr(_cpu_linear, "cpu_vendor", lambda: vendor)
    _cpu_linear.use_onednn_products.cache_clear()
    try:
        assert isinstance(linear_products("cpu", "fp32"), OneDnnLinears) is used
        assert not isinstance(linear_products("cpu", "bf16"), OneDnnLinears)
        assert not isinstance(linear_products("meta", "fp32"), OneDnnLinears)
    finally:
        _cpu_linear.use_onednn_products.cache_clear()


@pytest.mark.parametrize(
    "context",
    [torch.inference_mode, torch.no_grad, lambda: torch.autocast("cpu", dtype=torch.bfloat16)],
    ids=["inference_mode", "no_grad", "autocast"],
)
def test_the_check_gives_the_same_answer_whatever_mode_its_first_caller_is_in(onednn, context):
    """The first call may come from a prediction under inference mode: the answer, kept for the
    whole process, must not depend on that."""
    onednn_products_agree.cache_clear()
    try:
        with context():
            assert onednn_products_agree()
    finally:
        onednn_products_agree.cache_clear()


def test_products_that_disagree_are_not_used(monkeypatch):
    """A build whose oneDNN product gave other numbers would train with the default one."""
    monkeypatch.setattr(_cpu_linear, "onednn_product", lambda x, w, b: F.linear(x, w, b) + 1e-2)
    onednn_products_agree.cache_clear()
    _cpu_linear.use_onednn_products.cache_clear()
    monkeypatch.setattr(_cpu_linear, "cpu_vendor", lambda: "AuthenticAMD")
    try:
        assert not onednn_products_agree()
        assert not isinstance(linear_products("cpu", "fp32"), OneDnnLinears)
    finally:
        onednn_products_agree.cache_clear()
        _cpu_linear.use_onednn_products.cache_clear()


def test_fine_tuning_with_onednn_products_matches_the_default_ones(onednn, tiny_model_dir, monkeypatch):
    """Same seed, same data: the two sets of products train the same model up to float rounding."""
    X, Y = make_texts(48, seed=3)
    calls = _products(monkeypatch)
    params = dict(model_name=tiny_model_dir, max_epochs=2, batch_size=16, lr=1e-3, random_state=0)
    probas = []
    for used in (False, True):
        monkeypatch.setattr(_cpu_linear, "use_onednn_products", lambda used=used: used)
        calls.clear()
        clf = BertMultiLabelClassifier(train_split=None, **params).fit(X, Y)
        assert bool(calls) is used  # the encoder's and the head's products, forward and backward
        probas.append(clf.predict_proba(X))
    np.testing.assert_allclose(probas[0], probas[1], atol=1e-4)
    assert np.abs(probas[0] - 0.5).max() > 0.01  # trained, not a constant output


def test_short_predictions_take_onednn_products_and_packed_ones_keep_theirs(
    onednn, one_epoch_model, monkeypatch
):
    """Calls too short to pack the weights use oneDNN's plain products where they are chosen;
    longer calls use the packed products, on every x86 CPU, and never both."""
    X, _ = make_texts(300, seed=5)
    calls = _products(monkeypatch)
    monkeypatch.setattr(_cpu_linear, "use_onednn_products", lambda: False)
    short_default = one_epoch_model.predict_proba(X[:20])
    assert calls == []
    monkeypatch.setattr(_cpu_linear, "use_onednn_products", lambda: True)
    short = one_epoch_model.predict_proba(X[:20])
    assert calls and {shape[1] for shape in calls} == {32, 64}  # the hidden and intermediate widths
    np.testing.assert_allclose(short, short_default, atol=1e-5)

    calls.clear()
    pack = _inference.pack_linear_weights
    packed = []

    def recording_pack(module):
        packed.append(pack(module))
        return packed[-1]

    monkeypatch.setattr(_inference, "pack_linear_weights", recording_pack)
    long = one_epoch_model.predict_proba(X)  # 300 rows: long enough to pack
    assert len(packed) == 1
    if packed[0]:
        assert calls == []
    np.testing.assert_allclose(long[:20], short, atol=1e-5)
