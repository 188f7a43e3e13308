"""Run by test_distributed.py under ``torchrun --nproc_per_node 2``: fit, pickle, predict, report.

Usage: python -m torch.distributed.run --nproc_per_node 2 distributed_fit.py MODEL_DIR OUT_DIR
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys

import numpy as np
import torch
from skorch.callbacks import Callback

sys.path.insert(0, os.path.dirname(__file__))
from conftest import make_texts  # noqa: E402

from sklearn_bert_multilabel import BertMultiLabelClassifier  # noqa: E402


class CountBatches(Callback):
    def on_epoch_end(self, net, **kwargs):
        net.history.record("train_batches", len(net.history[-1, "batches"]))


def params(model_dir: str) -> dict:
    """No dropout, so that a run in two processes can be compared with one in one process."""
    return dict(
        model_name=model_dir,
        max_epochs=2,
        batch_size=16,
        lr=1e-3,
        random_state=0,
        train_split=None,
        dropout=0.0,
        encoder__hidden_dropout_prob=0.0,
        encoder__attention_probs_dropout_prob=0.0,
        callbacks=[("count", CountBatches())],
    )


def sample_weights(n: int) -> np.ndarray:
    return np.linspace(0.1, 3.0, n)


def nan_on_process_1(model_dir: str, out_dir: str, rank: int) -> None:
    """Process 1 alone gets a NaN loss on its third batch: both processes must stop."""
    from sklearn_bert_multilabel import NonFiniteLossError
    from sklearn_bert_multilabel._net import MultiLabelNet

    get_loss, calls = MultiLabelNet.get_loss, []

    def poisoned(self, *args, training=False, **kwargs):
        loss = get_loss(self, *args, training=training, **kwargs)
        calls.append(training)
        return loss * float("nan") if rank == 1 and training and len(calls) == 3 else loss

    MultiLabelNet.get_loss = poisoned
    X, Y = make_texts(96, seed=0)
    try:
        BertMultiLabelClassifier(**params(model_dir)).fit(X, Y)
        outcome = "finished"
    except NonFiniteLossError as exc:
        outcome = f"{exc.epoch} {exc.batch} {exc}"
    with open(os.path.join(out_dir, f"nan-{rank}.txt"), "w") as fh:
        fh.write(outcome)


def rng_params(model_dir: str) -> dict:
    """With dropout: each process must draw its own masks, and resume its own stream."""
    return {**params(model_dir), "dropout": 0.2, "callbacks": None}


def traced_fit(clf, X, Y, stop_at: int | None = None) -> list[str]:
    """Fit ``clf``; return a digest of the CPU generator's state at the start of each training
    batch. With ``stop_at``, training is interrupted (Ctrl-C) at that batch."""
    from sklearn_bert_multilabel._net import MultiLabelNet

    train_step, digests = MultiLabelNet.train_step, []

    def traced(self, batch, **fit_params):
        if len(digests) + 1 == stop_at:
            raise KeyboardInterrupt
        digests.append(hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest())
        return train_step(self, batch, **fit_params)

    MultiLabelNet.train_step = traced
    try:
        clf.fit(X, Y)
    finally:
        MultiLabelNet.train_step = train_step
    return digests


def random_streams(model_dir: str, out_dir: str, rank: int) -> None:
    """An uninterrupted fit, then the same fit stopped at the start of epoch 2 and resumed."""
    X, Y = make_texts(96, seed=0)
    full = BertMultiLabelClassifier(**rng_params(model_dir))
    report = {"full": traced_fit(full, X, Y)}
    folder = os.path.join(out_dir, "checkpoints")
    stopped = BertMultiLabelClassifier(**rng_params(model_dir), checkpoint_dir=folder)
    report["stopped"] = traced_fit(stopped, X, Y, stop_at=4)  # 3 batches an epoch: the first of epoch 2
    resumed = BertMultiLabelClassifier(**rng_params(model_dir), checkpoint_dir=folder, warm_start=True)
    report["resumed"] = traced_fit(resumed, X, Y)
    report["max_difference"] = float(np.abs(resumed.predict_proba(X) - full.predict_proba(X)).max())
    with open(os.path.join(out_dir, f"rng-{rank}.json"), "w") as fh:
        json.dump(report, fh)


def fit_and_report(model_dir: str, out_dir: str, rank: int) -> None:
    """Fit, pickle, predict; fit again with a validation split and tuned thresholds."""
    X, Y = make_texts(96, seed=0)
    clf = BertMultiLabelClassifier(**params(model_dir)).fit(X, Y)
    restored = pickle.loads(pickle.dumps(clf))  # unwrapped and picklable
    np.save(os.path.join(out_dir, f"proba-{rank}.npy"), restored.predict_proba(X))
    weighted = BertMultiLabelClassifier(**params(model_dir)).fit(X, Y, sample_weight=sample_weights(len(X)))
    np.save(os.path.join(out_dir, f"weighted-{rank}.npy"), weighted.predict_proba(X))
    with_valid = BertMultiLabelClassifier(
        **{**params(model_dir), "train_split": 0.25, "threshold": "auto", "callbacks": None}
    ).fit(X, Y)
    report = {
        "batches": [row["train_batches"] for row in clf.history_],
        "world_size": int(os.environ["WORLD_SIZE"]),
        "threads": torch.get_num_threads(),
        "device": clf.device_,
        "thresholds": with_valid.thresholds_.tolist(),
        "valid_f1": [row["valid_f1_macro"] for row in with_valid.history_],
    }
    with open(os.path.join(out_dir, f"report-{rank}.json"), "w") as fh:
        json.dump(report, fh)


def main() -> None:
    model_dir, out_dir = sys.argv[1:3]
    rank = int(os.environ["RANK"])
    if sys.argv[3:] == ["nan"]:
        nan_on_process_1(model_dir, out_dir, rank)
    elif sys.argv[3:] == ["rng"]:
        random_streams(model_dir, out_dir, rank)
    else:
        fit_and_report(model_dir, out_dir, rank)
    # The processes are in step: leave the process group together, so that neither
    # exits while the other's transport threads still talk to it.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
