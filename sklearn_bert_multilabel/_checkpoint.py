"""Surviving interruptions: best-weights restore on Ctrl-C, and resumable epoch checkpoints.

``TrainingGuard`` keeps a copy of the weights of the best completed epoch
(by the validation metric, or the latest epoch without validation data;
with early stopping, that callback's own copy serves).
skorch stops training quietly on ``KeyboardInterrupt``; the guard then puts
those weights back and says so, so an interrupted ``fit`` returns a usable
model.

``EpochCheckpoint`` writes, after every completed epoch, everything needed to
continue exactly where training stopped::

    <checkpoint_dir>/<fit key>/epoch-0003/weights.safetensors   trainable weights
    <checkpoint_dir>/<fit key>/epoch-0003/training.pt           optimizer, schedule, scaler, RNG
    <checkpoint_dir>/<fit key>/epoch-0003/progress.json         epochs done, history
    <checkpoint_dir>/<fit key>/epoch-0003/best.safetensors      with early stopping: the
                                                                best epoch's weights

In a distributed fit the main process writes the checkpoint, with the
random-number state of every process, so that each one resumes its own
stream of dropout masks.

``training.pt`` holds only tensors and plain values and is read with
``torch.load(weights_only=True)``. Each epoch is written to a temporary
folder and renamed into place, so a crash mid-write leaves the previous
epoch's checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import warnings
from pathlib import Path

import torch
from skorch.callbacks import Callback, EarlyStopping

from ._distributed import process_seed
from ._validation import caller_stacklevel

logger = logging.getLogger(__name__)

PREFIX = "epoch-"


def _snapshot(
    module: torch.nn.Module, into: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """A copy of the weights in host memory, so a GPU model does not need twice its size there.

    ``into``, an earlier snapshot of the same module, is overwritten in place when
    its tensors have the state's names, shapes and dtypes, and returned.
    """
    state = module.state_dict()
    if (
        into is not None
        and into.keys() == state.keys()
        and all(into[k].shape == v.shape and into[k].dtype == v.dtype for k, v in state.items())
    ):
        for k, v in state.items():
            into[k].copy_(v.detach())
        return into
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def replay_best(history, monitor: str, lower_is_better: bool) -> tuple[int, int]:
    """``(best epoch, epochs since it)`` over the completed epochs of ``history``.

    The same rule as early stopping with ``threshold=0``: only a strict
    improvement counts. Epoch numbers are 1-based; ``(0, n)`` when no epoch
    has a score.
    """
    best_epoch, misses = 0, 0
    best = math.inf if lower_is_better else -math.inf  # a NaN score never improves on it
    for row in history:
        score = row.get(monitor)
        if score is not None and (score < best if lower_is_better else score > best):
            best_epoch, best, misses = row["epoch"], score, 0
        else:
            misses += 1
    return best_epoch, misses


class ResumableEarlyStopping(EarlyStopping):
    """skorch's ``EarlyStopping`` that carries its state across a resumed fit.

    A fit resumed from a checkpoint starts with the checkpoint's history: the
    epochs since the best one, the best score and (from the checkpoint) the
    best epoch's weights are taken from it, so patience runs out and the best
    weights come back exactly as in an uninterrupted run. A run whose patience
    had already run out is not resumed at all (the estimator sees that first).
    """

    def on_train_begin(self, net, **kwargs):
        super().on_train_begin(net, **kwargs)
        if len(net.history) == 0 or self.threshold != 0:
            return
        self.best_epoch_, self.misses_ = replay_best(net.history, self.monitor, self.lower_is_better)
        if self.best_epoch_:
            self.dynamic_threshold_ = net.history[self.best_epoch_ - 1, self.monitor]
            self.best_model_weights_ = getattr(net, "resumed_best_weights_", None)


class TrainingGuard(Callback):
    """Track completed epochs and the best weights; restore them if training is interrupted.

    From the second copy on, the weights are copied into the tensors of the copy before the
    current one, which then takes its place: no model-sized allocation per epoch, and an
    interruption during a copy still finds the previous one whole.

    Parameters
    ----------
    monitor : str or None
        History key of the validation score (None: no validation data, the
        latest completed epoch counts as the best).
    lower_is_better : bool
        Direction of ``monitor``.
    epochs : int
        Epochs this call of ``fit`` should run.
    early_stopping : skorch.callbacks.EarlyStopping or None
        This fit's own early stopping, which keeps its own copy of the best
        weights. No early stopping's stop (``net.stopped_early_``, see
        :meth:`MultiLabelNet.notify`) is an interruption.
    """

    def __init__(self, monitor=None, lower_is_better=False, epochs=1, early_stopping=None):
        self.monitor = monitor
        self.lower_is_better = lower_is_better
        self.epochs = epochs
        self.early_stopping = early_stopping

    def initialize(self):
        self.completed_ = 0
        self.best_score_ = None
        self.best_epoch_ = None
        self.best_weights_ = None
        self.spare_weights_ = None  # the copy before best_weights_, refreshed in place next time
        self.interrupted_ = False
        return self

    def on_epoch_end(self, net, **kwargs):
        self.completed_ += 1
        score = net.history[-1].get(self.monitor) if self.monitor else None
        improved = (
            score is None
            or self.best_score_ is None
            or (score < self.best_score_ if self.lower_is_better else score > self.best_score_)
        )
        if improved:
            if self.early_stopping is None and self.completed_ < self.epochs:
                # EarlyStopping(load_best=True) keeps its own copy; after the last epoch there
                # is nothing left to interrupt, and on_train_end would drop the copy unused.
                # The weights go into the spare copy, which then changes places with the best:
                # an interruption during the copy leaves the last complete copy, and its epoch.
                fresh = _snapshot(net.module_, into=self.spare_weights_)
                self.spare_weights_, self.best_weights_ = self.best_weights_, fresh
            self.best_score_ = score
            self.best_epoch_ = net.history[-1, "epoch"]

    def on_train_end(self, net, **kwargs):
        if self.completed_ >= self.epochs or getattr(net, "stopped_early_", False):
            self.best_weights_ = self.spare_weights_ = None  # free the copies
            return
        self.interrupted_ = True
        epoch = len(net.history)
        if self.best_weights_ is not None or (self.early_stopping is not None and self.best_epoch_):
            if self.best_weights_ is not None:
                net.module_.load_state_dict(self.best_weights_)
            # else EarlyStopping's on_train_end restores its best epoch, which is this one.
            by = f" by {self.monitor}" if self.monitor else ""
            kept = f"the weights of epoch {self.best_epoch_}, the best{by} of the {self.completed_} completed"
        else:
            kept = "the weights after the last finished batch (no epoch had completed)"
        warnings.warn(
            f"fit was interrupted during epoch {epoch}; the model keeps {kept}. With checkpoint_dir "
            "set, fit again with warm_start=True to continue from the last completed epoch.",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
        self.best_weights_ = self.spare_weights_ = None


class EpochCheckpoint(Callback):
    """Write a resumable checkpoint of ``net`` into ``folder`` after every epoch.

    With ``monitor`` set (early stopping), each checkpoint also holds the
    weights of the best epoch so far by that history key.
    """

    def __init__(self, folder, trainable_state, write=True, monitor=None, lower_is_better=False):
        self.folder = folder
        self.trainable_state = trainable_state  # module -> dict of the tensors worth saving
        self.write = write  # False on all but the main process of a distributed fit
        self.monitor = monitor
        self.lower_is_better = lower_is_better

    def on_epoch_end(self, net, **kwargs):
        accelerator = net.accelerator
        process_rng = None
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            process_rng = gather_object([_own_rng_state(accelerator.device)])  # one collective, all join
        if self.write:
            module = net.module_
            module = getattr(module, "module", module)  # unwrap DistributedDataParallel
            best_epoch = None
            if self.monitor is not None:
                best_epoch, _ = replay_best(net.history, self.monitor, self.lower_is_better)
            save_checkpoint(Path(self.folder), net, self.trainable_state(module), best_epoch, process_rng)
        if net.accelerator is not None:
            net.accelerator.wait_for_everyone()


def _own_rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """This process's CPU generator state, and that of its own GPU if it trains on one."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def save_checkpoint(
    folder: Path,
    net,
    weights: dict[str, torch.Tensor],
    best_epoch: int | None = None,
    process_rng: list[dict] | None = None,
) -> None:
    from safetensors.torch import save_file

    from ._estimator import _jsonable
    from ._persistence import staged_folder

    epoch = len(net.history)
    final = folder / f"{PREFIX}{epoch:04d}"
    with staged_folder(final) as staging:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in weights.items()}, staging / "weights.safetensors"
        )
        if best_epoch == epoch:
            shutil.copyfile(staging / "weights.safetensors", staging / "best.safetensors")
        elif best_epoch:  # an earlier epoch: carried over from the previous checkpoint
            previous = folder / f"{PREFIX}{epoch - 1:04d}" / "best.safetensors"
            if previous.is_file():
                shutil.copyfile(previous, staging / "best.safetensors")
        training = {
            "optimizer": net.optimizer_.state_dict(),
            "scheduler": None if net.lr_scheduler_ is None else net.lr_scheduler_.state_dict(),
            "scaler": net.grad_scaler_.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rng_processes": process_rng,  # distributed: each process's own state, by process index
        }
        torch.save(training, staging / "training.pt")
        progress = {"epochs": epoch, "history": _jsonable(net.history)}
        (staging / "progress.json").write_text(json.dumps(progress), encoding="utf-8")
    for old in folder.glob(f"{PREFIX}*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint of epoch %d written to %s", epoch, final)


def latest_checkpoint(folder: Path) -> dict | None:
    """The newest readable checkpoint in ``folder``, or None."""
    from safetensors.torch import load_file

    if not folder.is_dir():
        return None
    for path in sorted(folder.glob(f"{PREFIX}*"), reverse=True):
        try:
            progress = json.loads((path / "progress.json").read_text(encoding="utf-8"))
            best = path / "best.safetensors"
            return {
                "path": path,
                "progress": progress,
                "weights": load_file(path / "weights.safetensors"),
                "best_weights": load_file(best) if best.is_file() else None,
                "training": torch.load(path / "training.pt", map_location="cpu", weights_only=True),
            }
        except Exception as exc:  # noqa: BLE001 - any damage: fall back to an older one, or none
            warnings.warn(
                f"ignoring the unreadable checkpoint {path} ({type(exc).__name__}: {exc}).",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )
    return None


def restore_training(net, checkpoint: dict, device: str) -> None:
    """Put a checkpoint's optimizer, schedule, scaler, RNG and history into an initialised net."""
    from skorch.history import History

    training, progress = checkpoint["training"], checkpoint["progress"]
    net.optimizer_.load_state_dict(training["optimizer"])
    net.grad_scaler_.load_state_dict(training["scaler"])
    net._scheduler_state = training["scheduler"]
    net.start_epoch_ = int(progress["epochs"])
    net.history_ = History(progress["history"])
    if checkpoint.get("best_weights") is not None:
        # The whole state of the net's module, with the best epoch's trainable tensors.
        state = {k: v.detach().clone() for k, v in net.module_.state_dict().items()}
        best = checkpoint["best_weights"]
        if set(best) <= set(state):
            state.update({k: v.to(state[k].device) for k, v in best.items()})
            net.resumed_best_weights_ = state
        else:  # not this module's tensors: early stopping keeps the weights it ends with
            logger.warning("the best weights in %s do not fit the model; not used", checkpoint["path"])
    accelerator = net.accelerator
    processes = training.get("rng_processes")
    if accelerator is not None and accelerator.num_processes > 1:
        index = accelerator.process_index
        if processes is not None and len(processes) == accelerator.num_processes:
            own = processes[index]
            torch.set_rng_state(own["cpu"])
            if own["cuda"] is not None and accelerator.device.type == "cuda":
                torch.cuda.set_rng_state(own["cuda"], accelerator.device)
            return
        if index:
            # Written with another number of processes: a stream of this process's own.
            if net.seed is not None:
                torch.manual_seed(process_seed(net.seed + net.start_epoch_, index))
            return
    torch.set_rng_state(training["rng_cpu"])
    if training["rng_cuda"] and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state_all(training["rng_cuda"])
