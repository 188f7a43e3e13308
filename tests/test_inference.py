"""Prediction over a stream of batches: worker threads on CPU, order, errors, thread counts."""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np
import pytest
import torch
from conftest import make_texts
from torch import nn

from sklearn_bert_multilabel import _inference
from sklearn_bert_multilabel._inference import PackedLinears, pack_linear_weights, run_batches

CPU = torch.device("cpu")
MODULE = nn.Linear(3, 3)  # what the streams below are too short to pack


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _batches(n_batches: int, size: int = 4):
    for b in range(n_batches):
        rows = np.arange(b * size, (b + 1) * size)
        yield rows, {"x": torch.as_tensor(rows, dtype=torch.float32)[:, None].repeat(1, 3)}


def _gather(outputs, n: int, width: int) -> np.ndarray:
    out = np.full((n, width), np.nan, dtype=np.float32)
    for rows, values in outputs:
        out[rows] = values
    return out


def test_workers_cover_every_batch_once_in_their_own_threads(two_threads):
    seen = []

    def forward(x):
        seen.append(
            (
                threading.current_thread().name,
                torch.get_num_threads(),
                torch.is_inference_mode_enabled(),
                torch.is_autocast_enabled("cpu"),
            )
        )
        time.sleep(0.02)  # long enough that both workers take batches
        return x * 2

    out = _gather(run_batches(_batches(10), forward, MODULE, CPU, "bf16"), 40, 3)
    np.testing.assert_array_equal(out, 2 * np.arange(40, dtype=np.float32)[:, None].repeat(3, 1))
    names = {name for name, *_ in seen}
    assert len(seen) == 10
    assert len(names) == 2 and threading.current_thread().name not in names
    # one thread each, and each worker entered inference mode and autocast itself
    assert {tuple(rest) for _, *rest in seen} == {(1, True, True)}
    assert torch.get_num_threads() == 2


def test_one_batch_or_one_thread_runs_in_the_calling_thread(two_threads):
    names = []

    def forward(x):
        names.append((threading.current_thread().name, torch.is_autocast_enabled("cpu")))
        return x

    run_batches(_batches(1), forward, MODULE, CPU, "fp32")
    torch.set_num_threads(1)
    run_batches(_batches(3), forward, MODULE, CPU, "fp32")
    assert names == [(threading.current_thread().name, False)] * 4


def test_the_thread_count_is_restored_for_threads_started_later(two_threads):
    run_batches(_batches(6), lambda x: x, MODULE, CPU, "fp32")
    counts = []
    t = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert torch.get_num_threads() == 2
    assert counts == [2]


def test_an_error_in_a_worker_or_in_the_stream_reaches_the_caller(two_threads):
    def forward(x):
        if x[0, 0] >= 8:
            raise ValueError("bad batch")
        return x

    with pytest.raises(ValueError, match="bad batch"):
        run_batches(_batches(6), forward, MODULE, CPU, "fp32")

    def broken_stream():
        yield from _batches(3)
        raise RuntimeError("tokenizer failed")

    with pytest.raises(RuntimeError, match="tokenizer failed"):
        run_batches(broken_stream(), lambda x: x, MODULE, CPU, "fp32")
    assert torch.get_num_threads() == 2


class BadBatch(ValueError):
    """Unlike ValueError itself, can be referenced weakly."""


def test_an_error_from_a_worker_is_freed_once_the_caller_drops_it(two_threads, collector_off):
    def forward(x):
        raise BadBatch("bad batch")

    try:
        run_batches(_batches(6), forward, MODULE, CPU, "fp32")
    except BadBatch as exc:
        error = weakref.ref(exc)
    assert error() is None


def test_estimator_predictions_do_not_depend_on_the_worker_threads(one_epoch_model):
    X, _ = make_texts(300, seed=41)
    names = []
    hook = one_epoch_model.module_.register_forward_hook(
        lambda *_: names.append(threading.current_thread().name)
    )
    before = torch.get_num_threads()
    one_epoch_model.set_params(predict_batch_size=16)
    try:
        torch.set_num_threads(1)
        one = one_epoch_model.predict_proba(X)
        sequential, names[:] = set(names), []
        torch.set_num_threads(2)
        two = one_epoch_model.predict_proba(X)
    finally:
        hook.remove()
        torch.set_num_threads(before)
        one_epoch_model.set_params(predict_batch_size=128)
    assert sequential == {threading.current_thread().name}
    assert len(names) == 19  # 300 texts in batches of 16
    assert all(name.startswith("sklearn-bert-multilabel-predict-") for name in names)  # in workers
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-6)


# ------------------------------------------------------------- packed weights
def _packed_or_skip(module):
    packed = pack_linear_weights(module)
    if not packed:
        pytest.skip("oneDNN packed linear products are not available on this machine")
    return packed


def test_packed_products_match_plain_ones_and_are_really_used():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
    x = torch.randn(5, 7, 16)
    packed = _packed_or_skip(mlp)
    assert set(packed) == {id(mlp[0].weight), id(mlp[2].weight)}
    with torch.inference_mode():
        plain = mlp(x)
        with PackedLinears(packed):
            fast = mlp(x)
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
        # swap in the packing of a zero matrix: the output must follow it
        zero_packed = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(4, 32), None)
        with PackedLinears({**packed, id(mlp[2].weight): (mlp[2].weight, zero_packed)}):
            biased = mlp(x)
    torch.testing.assert_close(biased, mlp[2].bias.detach().expand_as(biased))


def test_models_above_the_size_limit_are_not_packed(monkeypatch):
    mlp = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 4))
    _packed_or_skip(mlp)
    monkeypatch.setattr(_inference, "PACK_MAX_BYTES", (16 * 32 + 32 * 4) * 4 - 1)
    assert pack_linear_weights(mlp) == {}
    monkeypatch.setattr(_inference, "PACK_MAX_BYTES", (16 * 32 + 32 * 4) * 4)
    assert len(pack_linear_weights(mlp)) == 2


def test_packed_products_stay_in_their_own_thread():
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    x = torch.randn(3, 8)
    packed = _packed_or_skip(layer)
    zero = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8), None)
    other = []
    with torch.inference_mode(), PackedLinears({id(layer.weight): (layer.weight, zero)}):
        inside = layer(x)
        t = threading.Thread(target=lambda: other.append(layer(x).detach()))
        t.start()
        t.join()
    assert packed
    torch.testing.assert_close(inside, layer.bias.detach().expand(3, 8))
    torch.testing.assert_close(other[0], torch.nn.functional.linear(x, layer.weight, layer.bias).detach())


def test_estimator_packs_long_fp32_calls_only_and_never_uses_stale_weights(one_epoch_model, monkeypatch):
    calls = []
    real = _inference.pack_linear_weights

    def spy(module):
        calls.append(module)
        return real(module)

    monkeypatch.setattr(_inference, "pack_linear_weights", spy)
    X, _ = make_texts(300, seed=43)
    packed = one_epoch_model.predict_proba(X)
    assert calls == [one_epoch_model.module_]
    one_epoch_model.predict_proba(X[:10])
    one_epoch_model.set_params(precision="bf16")
    try:
        one_epoch_model.predict_proba(X)
    finally:
        one_epoch_model.set_params(precision="fp32")
    assert len(calls) == 1  # neither the short call nor bf16 packs
    monkeypatch.setattr(_inference, "PACK_MIN_ROWS", 10**9)
    plain = one_epoch_model.predict_proba(X)
    np.testing.assert_allclose(packed, plain, rtol=0, atol=1e-5)

    # Weights changed in place after a packed call are seen by the next one.
    monkeypatch.setattr(_inference, "PACK_MIN_ROWS", 256)
    layer = [m for m in one_epoch_model.module_.encoder.modules() if isinstance(m, nn.Linear)][-2]
    saved = layer.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.weight.mul_(-5.0)
        changed = one_epoch_model.predict_proba(X)
        monkeypatch.setattr(_inference, "PACK_MIN_ROWS", 10**9)
        changed_plain = one_epoch_model.predict_proba(X)
    finally:
        with torch.no_grad():
            layer.weight.copy_(saved)
    assert np.abs(changed - packed).max() > 1e-3
    np.testing.assert_allclose(changed, changed_plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("frozen, memory", [(False, False), (True, False), (True, True)])
def test_prediction_runs_in_evaluation_mode_whatever_mode_the_module_was_left_in(
    fast_params, toy_data, tmp_path, frozen, memory
):
    from sklearn_bert_multilabel import BertMultiLabelClassifier

    X, Y = toy_data
    params = dict(fast_params, freeze_encoder=frozen, dropout=0.5, memory=str(tmp_path) if memory else None)
    clf = BertMultiLabelClassifier(**params).fit(X, Y)
    expected = clf.predict_proba(X[:8])
    if memory:  # the features of X[:8] are cached, the logits of X[:7] are not
        X, expected = X[:7], expected[:7]
    clf.module_.train()  # dropout on: predictions would differ from call to call
    assert clf.module_.head[0].training
    np.testing.assert_array_equal(clf.predict_proba(X[:8]), expected)
    assert not any(module.training for module in clf.module_.modules())
