"""The skorch net that trains the module: batching, optimizer, precision, schedule."""

from __future__ import annotations

import contextlib
import math

import torch
from skorch import NeuralNet
from skorch.callbacks import Callback
from torch.utils.data import DataLoader

from ._text import FeatureDataset, LengthBucketBatchSampler, PadCollator, lengths_of

PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("linear", "cosine", "constant")
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def autocast_context(device: str, precision: str):
    """``torch.autocast`` for ``precision`` on ``device``, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)


def decay_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on weights, none on biases and norms."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(_NO_DECAY) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


class WarmupDecaySchedule(Callback):
    """Per-batch learning-rate schedule: linear warmup, then linear/cosine decay.

    The number of optimizer steps is known only once the training split is
    made, so the scheduler is built at the first epoch.
    """

    def __init__(self, schedule: str = "linear", warmup_ratio: float = 0.1):
        self.schedule = schedule
        self.warmup_ratio = warmup_ratio

    def initialize(self):
        self.scheduler_ = None
        return self

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.scheduler_ = None

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        if self.scheduler_ is not None:
            return
        steps_per_epoch = math.ceil(len(dataset_train) / net.batch_size)
        total = max(1, steps_per_epoch * net.max_epochs)
        warmup = int(total * self.warmup_ratio)
        schedule = self.schedule

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / (warmup + 1)
            if schedule == "constant":
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            if schedule == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * progress))
            return max(0.0, 1.0 - progress)

        self.scheduler_ = torch.optim.lr_scheduler.LambdaLR(net.optimizer_, factor)

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        if training and self.scheduler_ is not None:
            self.scheduler_.step()


class MultiLabelNet(NeuralNet):
    """A skorch ``NeuralNet`` for pre-tokenised texts and a 0/1 label matrix.

    Compared with ``NeuralNet`` it batches texts of similar length (each
    batch padded to its own longest text), builds AdamW groups without weight
    decay on biases and norms, runs the forward pass under autocast for
    ``bf16``/``fp16`` (fp32 master weights; a gradient scaler for fp16), and
    clips the gradient norm.
    """

    def __init__(
        self,
        *args,
        precision: str = "fp32",
        max_grad_norm: float | None = 1.0,
        weight_decay: float = 0.01,
        pad_id: int = 0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.precision = precision
        self.max_grad_norm = max_grad_norm
        self.weight_decay = weight_decay
        self.pad_id = pad_id
        self.seed = seed

    def initialize(self):
        super().initialize()
        enabled = self.precision == "fp16"
        self.grad_scaler_ = torch.amp.GradScaler(torch.device(self.device).type, enabled=enabled)
        self._iterator_seed = self.seed
        return self

    def initialize_optimizer(self, triggered_directly=None):
        kwargs = self.get_params_for("optimizer")
        kwargs.setdefault("lr", self.lr)
        weight_decay = kwargs.pop("weight_decay", self.weight_decay)
        self.optimizer_ = self.optimizer(decay_groups(self.module_, weight_decay), **kwargs)
        return self

    def get_iterator(self, dataset, training=False):
        prefix = "iterator_train" if training else "iterator_valid"
        kwargs = self.get_params_for(prefix)
        batch_size = kwargs.pop("batch_size", self.batch_size)
        if batch_size == -1:
            batch_size = len(dataset)
        shuffle = kwargs.pop("shuffle", training)
        seed = None
        if self.seed is not None:
            # A fresh but reproducible stream per iterator.
            self._iterator_seed = (self._iterator_seed or 0) + 1
            seed = self._iterator_seed
        if isinstance(dataset, FeatureDataset):  # fixed-size vectors: no padding involved
            generator = None if seed is None else torch.Generator().manual_seed(seed)
            return DataLoader(
                dataset,
                batch_size=batch_size,
                shuffle=shuffle,
                generator=generator,
                drop_last=kwargs.pop("drop_last", False),
                **kwargs,
            )
        sampler = LengthBucketBatchSampler(
            lengths_of(dataset),
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=kwargs.pop("drop_last", False),
        )
        kwargs.setdefault("collate_fn", PadCollator(self.pad_id))
        if torch.device(self.device).type == "cuda":
            kwargs.setdefault("pin_memory", True)
        return DataLoader(dataset, batch_sampler=sampler, **kwargs)

    def infer(self, x, **fit_params):
        x = {k: v.to(self.device, non_blocking=True) for k, v in x.items()}
        with autocast_context(self.device, self.precision):
            return self.module_(**x, **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        y_true = y_true.to(self.device, non_blocking=True)
        return self.criterion_(y_pred.float(), y_true)

    def train_step(self, batch, **fit_params):
        self._zero_grad_optimizer(set_to_none=True)
        self._set_training(True)
        Xi, yi = batch
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        self.grad_scaler_.scale(loss).backward()
        self.grad_scaler_.unscale_(self.optimizer_)
        self.notify(
            "on_grad_computed",
            named_parameters=list(self.get_all_learnable_params()),
            batch=batch,
            training=True,
        )
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.module_.parameters(), self.max_grad_norm)
        self.grad_scaler_.step(self.optimizer_)
        self.grad_scaler_.update()
        return {"loss": loss.detach(), "y_pred": y_pred.detach()}
