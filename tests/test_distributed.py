"""Scale-out: data-parallel training in two processes (gloo), and a search on a dask cluster."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV

from sklearn_bert_multilabel import BertMultiLabelClassifier

HERE = os.path.dirname(__file__)


def _torchrun(model_dir: str, out_dir, port: int, *mode: str, timeout: int = 420) -> None:
    """Run ``distributed_fit.py`` (in ``mode``) in two processes; it writes its reports to ``out_dir``."""
    pytest.importorskip("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
        os.path.join(HERE, "distributed_fit.py"), model_dir, str(out_dir), *mode,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_process_training_equals_one_process_with_the_same_batches(tiny_model_dir, tmp_path):
    """2 processes x batch 16 average the gradients of the batches that one process
    accumulates two at a time (accumulate_batches=2): the same updates, the same model."""
    sys.path.insert(0, HERE)
    from conftest import make_texts
    from distributed_fit import params, sample_weights

    _torchrun(tiny_model_dir, tmp_path, 29571)
    reports = [json.loads((tmp_path / f"report-{r}.json").read_text()) for r in (0, 1)]
    probas = [np.load(tmp_path / f"proba-{r}.npy") for r in (0, 1)]

    assert all(r["world_size"] == 2 for r in reports)
    assert [r["batches"] for r in reports] == [[3, 3], [3, 3]]  # each process: half of the 6 batches
    np.testing.assert_array_equal(probas[0], probas[1])  # one model everywhere
    assert reports[0]["thresholds"] == reports[1]["thresholds"]
    assert all(2 * r["threads"] <= max(2, os.cpu_count()) for r in reports)

    X, Y = make_texts(96, seed=0)
    single = BertMultiLabelClassifier(**{**params(tiny_model_dir), "accumulate_batches": 2}).fit(X, Y)
    assert [row["train_batches"] for row in single.history_] == [6, 6]
    np.testing.assert_allclose(probas[0], single.predict_proba(X), atol=1e-5)

    # Sample weights: each process weighs its own batches' losses the same way.
    weighted = [np.load(tmp_path / f"weighted-{r}.npy") for r in (0, 1)]
    np.testing.assert_array_equal(weighted[0], weighted[1])
    single_weighted = BertMultiLabelClassifier(**{**params(tiny_model_dir), "accumulate_batches": 2})
    single_weighted.fit(X, Y, sample_weight=sample_weights(len(X)))
    np.testing.assert_allclose(weighted[0], single_weighted.predict_proba(X), atol=1e-5)
    assert np.abs(weighted[0] - probas[0]).max() > 1e-4


def test_a_non_finite_loss_on_one_process_stops_every_process(tiny_model_dir, tmp_path):
    _torchrun(tiny_model_dir, tmp_path, 29573, "nan", timeout=300)
    outcomes = [(tmp_path / f"nan-{r}.txt").read_text() for r in (0, 1)]
    assert outcomes[0].startswith("1 3 the training loss on process 1 became nan in epoch 1, batch 3")
    assert outcomes[1].startswith("1 3 the training loss became nan in epoch 1, batch 3")


def test_each_process_draws_its_own_dropout_masks_and_resumes_its_own_stream(tiny_model_dir, tmp_path):
    sys.path.insert(0, HERE)
    from conftest import make_texts
    from distributed_fit import rng_params, traced_fit

    _torchrun(tiny_model_dir, tmp_path, 29575, "rng")
    reports = [json.loads((tmp_path / f"rng-{r}.json").read_text()) for r in (0, 1)]

    full = [r["full"] for r in reports]
    assert [len(f) for f in full] == [6, 6]  # 2 epochs x 3 batches on each process
    assert all(a != b for a, b in zip(*full, strict=True))  # never the same masks on both
    assert len(set(full[0] + full[1])) == 12
    for report in reports:
        # Stopped at the start of epoch 2, resumed from the checkpoint of epoch 1: each
        # process goes on with its own stream exactly where it was.
        assert report["stopped"] == report["full"][:3]
        assert report["resumed"] == report["full"][3:]
        assert report["max_difference"] <= 1e-6

    # The main process draws what a fit in one process draws.
    X, Y = make_texts(96, seed=0)
    single = traced_fit(BertMultiLabelClassifier(**rng_params(tiny_model_dir)), X, Y)
    assert single[0] == full[0][0]


@pytest.mark.parametrize("fails", [False, True])
def test_a_fit_leaves_nothing_in_its_accelerator(tiny_model_dir, monkeypatch, fails):
    """Accelerate keeps the wrapped model, optimizer and loaders while the Accelerator lives;
    a fit drops them, finished or failed, so that no process-group wrapper outlives it."""
    pytest.importorskip("accelerate")
    from conftest import make_texts

    from sklearn_bert_multilabel import NonFiniteLossError, _estimator
    from sklearn_bert_multilabel._net import MultiLabelNet

    made, make_accelerator = [], _estimator.make_accelerator

    def recorded(*args):
        made.append(make_accelerator(*args))
        return made[-1]

    monkeypatch.setattr(_estimator, "make_accelerator", recorded)
    if fails:
        get_loss = MultiLabelNet.get_loss
        monkeypatch.setattr(MultiLabelNet, "get_loss", lambda *a, **k: get_loss(*a, **k) * float("nan"))
    X, Y = make_texts(32, seed=0)
    clf = BertMultiLabelClassifier(
        model_name=tiny_model_dir, max_epochs=1, batch_size=16, train_split=None, distributed=True
    )
    with pytest.raises(NonFiniteLossError) if fails else contextlib.nullcontext():
        clf.fit(X, Y)
    (accelerator,) = made
    assert (accelerator._models, accelerator._optimizers, accelerator._dataloaders) == ([], [], [])


def test_distributed_parameter_is_checked(tiny_model_dir):
    from sklearn_bert_multilabel import InvalidInputError

    with pytest.raises(InvalidInputError, match="distributed must be True, False or 'auto'"):
        BertMultiLabelClassifier(model_name=tiny_model_dir, distributed="yes").fit(["a"], [[1]])


def _check_search_shares_the_cache(params, toy_data, tmp_path, backend, n_jobs) -> None:
    """A 3-threshold search with ``memory`` under ``backend``: its 6 candidate fits train 2
    models (one per fold) and score as a serial search does, which trains nothing more."""
    X, Y = toy_data
    cache = tmp_path / "cache"
    fits = cache / "sklearn_bert_multilabel" / "fits"
    estimator = BertMultiLabelClassifier(**{**params, "max_epochs": 1, "memory": str(cache)})

    def search(**kwargs):
        grid = {"threshold": [0.3, 0.5, 0.7]}
        return GridSearchCV(estimator, grid, cv=2, scoring="f1_macro", refit=False, **kwargs).fit(X, Y)

    with backend:
        parallel = search(n_jobs=n_jobs)
    assert len(list(fits.iterdir())) == 2  # thresholds share the weights of their fold
    serial = search()
    assert len(list(fits.iterdir())) == 2  # the workers' cache entries serve this process too
    np.testing.assert_allclose(parallel.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"])


def test_grid_search_on_a_dask_cluster_shares_the_cache(fast_params, toy_data, tmp_path):
    distributed = pytest.importorskip("distributed")
    from joblib import parallel_backend

    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
    )
    with cluster, distributed.Client(cluster) as client:
        threads = client.run(lambda: __import__("torch").get_num_threads())
        _check_search_shares_the_cache(fast_params, toy_data, tmp_path, parallel_backend("dask"), -1)
    assert len(threads) == 2 and all(2 * t <= max(2, os.cpu_count()) for t in threads.values()), threads


def test_grid_search_on_ray_shares_the_cache(fast_params, toy_data, tmp_path):
    """Ray's joblib backend, where Ray is installed (it is not among the test dependencies)."""
    ray = pytest.importorskip("ray")
    from joblib import parallel_backend
    from ray.util.joblib import register_ray

    register_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        _check_search_shares_the_cache(fast_params, toy_data, tmp_path, parallel_backend("ray"), 2)
    finally:
        ray.shutdown()
