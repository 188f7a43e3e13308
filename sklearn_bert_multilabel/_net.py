"""The skorch net that trains the module: batching, optimizer, precision, schedule."""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import inspect
import logging
import math
import re
import warnings

import numpy as np
import torch
from scipy.special import expit
from sklearn.metrics import f1_score
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping, LRScheduler
from skorch.utils import TeeGenerator, to_device
from torch.utils.data import DataLoader

from ._cpu_linear import cpu_has_bf16, linear_products
from ._distributed import process_seed
from ._head import HeadStep, without_grad
from ._model import HeadOnly
from ._text import (
    FeatureBatches,
    FeatureDataset,
    LengthBucketBatchSampler,
    PadCollator,
    TokenDataset,
    WindowBudgetBatchSampler,
    WindowCollator,
    WindowDataset,
)
from ._thresholds import tune_thresholds
from ._validation import caller_stacklevel

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
LR_SCHEDULES = ("linear", "cosine", "constant")
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
_LAYER_INDEX = re.compile(r"\.(?:layer|layers|block|blocks)\.(\d+)\.")


def resolve_precision(precision: str, device_type: str) -> str:
    """The precision that ``precision`` means on a device of this type: ``"auto"`` made concrete.

    ``"auto"`` is ``"bf16"`` on a CUDA device that supports it and on an x86
    CPU with bf16 arithmetic (see :func:`~._cpu_linear.cpu_has_bf16`), and
    ``"fp32"`` everywhere else. Other values are returned as they are.
    """
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device_type == "cpu" and cpu_has_bf16():
        return "bf16"
    return "fp32"


class PrecisionWarning(UserWarning):
    """``precision="bf16"`` on a CPU without bf16 arithmetic, where it runs several times slower."""


def warn_if_emulated_bf16(precision: str, device: str | torch.device) -> None:
    """Warn when bf16 autocast would run on an x86 CPU known to lack bf16 arithmetic."""
    if precision == "bf16" and torch.device(device).type == "cpu" and cpu_has_bf16() is False:
        warnings.warn(
            "precision='bf16' on a CPU without bf16 arithmetic (AVX512-BF16 or AMX): its bf16 "
            "products are emulated and can run several times slower than fp32. Use "
            "precision='fp32', or precision='auto' to use bf16 only where the hardware has it.",
            PrecisionWarning,
            stacklevel=caller_stacklevel(),
        )


def autocast_context(device: str, precision: str):
    """``torch.autocast`` for ``precision`` on ``device``, or a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):  # "auto" must be resolved first (resolve_precision)
        raise ValueError(f"no autocast for precision {precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)


def _depth(name: str, n_layers: int) -> int:
    """How far below the head a parameter sits: 0 for the head, n_layers + 1 for embeddings."""
    if not name.startswith("encoder."):
        return 0
    match = _LAYER_INDEX.search(name)
    if match:
        return n_layers - int(match.group(1))
    if "embed" in name:
        return n_layers + 1
    return 0  # the encoder's pooler and final norms sit above the last layer


def param_groups(
    module: torch.nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    overrides: list | tuple = (),
) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; optional layer-wise lr decay.

    With ``layer_decay=d``, encoder layer ``i`` of ``L`` gets ``lr * d ** (L - i)``
    and the embeddings ``lr * d ** (L + 1)``; pooling and head get ``lr``.

    ``overrides`` are skorch's ``optimizer__param_groups``: ``(pattern, options)``
    pairs, where the first pattern (``fnmatch``) that matches a parameter's name
    gives it ``options``. An ``lr`` or ``weight_decay`` there replaces ``lr`` or
    ``weight_decay`` for those parameters, and the rules above still apply
    (layer decay scales that ``lr``; biases and norms keep no weight decay).
    A pattern that matches no parameter is ignored here, as in skorch; see
    :func:`check_param_group_patterns`.
    """
    n_layers = 0
    encoder = getattr(module, "encoder", None)
    if encoder is not None:
        config = encoder.config
        n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", 0)
    patterns = [pattern for pattern, _ in overrides]
    groups: dict[tuple[int, int, bool], list] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        match = _first_match(name, patterns)
        depth = _depth(name, n_layers) if layer_decay else 0
        groups.setdefault((match, depth, name.endswith(_NO_DECAY)), []).append(param)
    out = []
    for (match, depth, no_decay), params in sorted(groups.items()):
        options = dict(overrides[match][1]) if match < len(patterns) else {}
        group_lr = options.pop("lr", lr)
        group_decay = options.pop("weight_decay", weight_decay)
        options.update(
            params=params,
            weight_decay=0.0 if no_decay else group_decay,
            lr=group_lr * (layer_decay**depth if layer_decay else 1.0),
        )
        out.append(options)
    return out


def _first_match(name: str, patterns: list[str]) -> int:
    """The index of the first pattern matching ``name``, or ``len(patterns)``."""
    return next((i for i, pattern in enumerate(patterns) if fnmatch.fnmatch(name, pattern)), len(patterns))


def check_param_group_patterns(module: torch.nn.Module, overrides: list | tuple) -> None:
    """Raise ValueError for an ``optimizer__param_groups`` pattern that takes no parameter of
    ``module`` (frozen ones count), which skorch would ignore without a word."""
    if not overrides:
        return  # nothing to check, and no need to walk every parameter of the encoder
    patterns = [pattern for pattern, _ in overrides]
    names = [name for name, _ in module.named_parameters()]
    used = {_first_match(name, patterns) for name in names}
    unused = [pattern for i, pattern in enumerate(patterns) if i not in used]
    if unused:
        tops = sorted({name.split(".")[0] + ".*" for name in names})
        raise ValueError(
            f"optimizer__param_groups: the pattern(s) {', '.join(map(repr, unused))} match no parameter "
            f"(or only parameters an earlier pattern took). The model's parameters are named "
            f"{', '.join(tops)}, such as {names[0]!r} and {names[-1]!r}."
        )


def lr_factor(schedule: str, warmup: int, total: int):
    """Multiplier of the peak learning rate at each optimizer step."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return factor


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss (or gradient norm) and was stopped.

    The offending batch's update is never applied, so the model keeps the
    weights of the last good step.

    Parameters
    ----------
    what : str
        What became non-finite: ``"loss"`` or ``"gradient norm"``.
    value : float
        Its value (NaN or infinite).
    epoch, batch : int
        Where it happened, both 1-based; kept as attributes with ``value``.
    precision : str
        The training precision, which the message's advice depends on.
    """

    def __init__(self, what: str, value: float, epoch: int, batch: int, precision: str):
        self.epoch, self.batch, self.value = epoch, batch, value
        hints = ["a lower lr", "max_grad_norm=1.0"]
        if precision != "fp32":
            hints.insert(0, "precision='fp32'")
        super().__init__(
            f"the training {what} became {value} in epoch {epoch}, batch {batch}; training stopped and "
            "that batch's update was not applied, so the model keeps the weights of the last good step. "
            f"Try {', '.join(hints)}."
        )


class ValidationScores(Callback):
    """Record ``valid_f1_macro`` each epoch: macro-F1 on the validation data with
    one threshold per label tuned on it, from the validation pass's own outputs
    (weighted by the texts' sample weights, when the fit has them)."""

    def initialize(self):
        self._logits, self._labels, self._weights = [], [], []
        return self

    def on_epoch_begin(self, net, **kwargs):
        self._logits, self._labels, self._weights = [], [], []

    def on_batch_end(self, net, batch=None, training=False, y_pred=None, **kwargs):
        if not training and y_pred is not None:
            self._logits.append(y_pred.float().cpu().numpy())
            self._labels.append(batch[1].numpy())
            weight = _batch_weight(batch[0])
            if weight is not None:
                self._weights.append(weight.numpy())

    def on_epoch_end(self, net, dataset_valid=None, **kwargs):
        if not self._logits:
            return
        proba = expit(np.concatenate(self._logits))
        Y = np.concatenate(self._labels) > 0.5
        weight = np.concatenate(self._weights) if self._weights else None
        predicted = proba >= tune_thresholds(proba, Y, "f1", sample_weight=weight)
        score = f1_score(Y, predicted, average="macro", zero_division=0, sample_weight=weight)
        net.history.record("valid_f1_macro", float(score))


_BATCH_HOOKS = ("on_batch_begin", "on_batch_end", "on_grad_computed")

#: Lean head epochs whose training steps take fewer floating-point operations
#: than this (about 6 x batch x weights) run on one intra-op thread.
SMALL_STEP_FLOPS = 50_000_000


@contextlib.contextmanager
def intra_op_threads(n: int | None):
    """Run the block with ``n`` intra-op threads (None: as they are), then restore the count."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def flushes_denormals() -> bool:
    """Whether this thread treats subnormal floats as zero (x86 FTZ/DAZ, ``torch.set_flush_denormal``)."""
    return (torch.tensor([1e-30]) * 1e-10).item() == 0.0


@contextlib.contextmanager
def flushed_denormals():
    """Run the block with subnormal floats flushed to zero on this thread, then restore the setting.

    Sentence encoders such as all-MiniLM-L6-v2 pool a few dimensions to
    about 1e-32 for every text. Training a head on such features squares
    and multiplies them into the subnormal range, where x86 CPUs fall back
    to microcode many times slower than normal arithmetic: a (256,) head's
    steps took 15% longer. Flushing changes only values below 1.2e-38,
    which cannot move a logit. It applies to the calling thread: threads
    started by OpenMP before the block keep their own setting.
    """
    if flushes_denormals() or not torch.set_flush_denormal(True):  # already on, or not supported
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _acts_on_training_batches(callback: Callback) -> bool:
    """Whether ``callback`` may do something for a training batch or its gradients."""
    if type(callback) is ValidationScores:  # reads validation batches only
        return False
    return any(getattr(type(callback), hook, None) is not getattr(Callback, hook) for hook in _BATCH_HOOKS)


class HeadEpoch:
    """The gradients, optimizer step and clipping of :meth:`MultiLabelNet._head_epoch`.

    The head's gradients live in one flat buffer (see
    :meth:`HeadStep.gradient_buffers`), attached as the parameters' ``.grad``
    for each epoch: each step's backward pass overwrites them, so nothing is
    allocated or reset per step, and the total norm and the clipping are one
    operation each. One object serves all the epochs of a fit (see
    :meth:`renew`).

    ``torch.optim``'s ``step`` costs 50-100 µs per call in Python on a
    typical CPU (profiling hooks, grouping tensors by device and dtype,
    state checks), as much as the update of a small head. For a fused,
    plain ``torch.optim.AdamW`` on CPU fp32 tensors, :meth:`step` calls the
    same kernel with the same arguments as ``AdamW.step`` does, so the
    weights are the same. A fit's first step, and every step of any other
    optimizer, is ``optimizer.step()`` itself: it creates the state, and
    learning-rate schedulers see that the optimizer stepped. Later epochs
    gather the kernel's arguments from that state without it.

    ``small`` epochs run on one intra-op thread. Their matrix products gain
    little from a second thread (1.14x for a (256, 128) head on batches of
    32, 25 MFLOP a step, on 2 cores), and the second thread's waiting
    between products competes with the first for the machine: where two
    busy threads slow each other down (as virtual CPUs on one physical core
    do), such a head's steps took twice as long on two threads.
    """

    def __init__(
        self, head_step: HeadStep, optimizer: torch.optim.Optimizer, params: list, *, small: bool = False
    ):
        self.head_step = head_step
        self.optimizer = optimizer
        self.params = params
        self.small = small
        self.flat, self.grads = head_step.gradient_buffers()
        self._grad_of = {
            id(param): grad
            for lin, pair in zip(head_step.linears, self.grads, strict=True)
            for param, grad in zip((lin.weight, lin.bias), pair, strict=True)
        }
        self._direct: list[dict] | None = None
        self._kernel_calls: tuple | None = None
        self.renew()

    def renew(self) -> None:
        """Prepare for another epoch of the same fit: the gradient buffers are kept, while
        whether the kernel may be called directly is decided again (hooks may have been added)."""
        self._direct = _direct_adamw_groups(self.optimizer)
        self._kernel_calls = None

    def attach_gradients(self) -> None:
        """Make the gradient buffers the parameters' ``.grad`` (their values are not reset).

        Where the optimizer already has state, the arguments :meth:`step` passes to its kernel are
        gathered from it here.
        """
        for param in self.params:
            param.grad = self._grad_of[id(param)]
        if self._direct is not None:  # from a fit's second epoch on: AdamW.step need not create it
            self._kernel_calls = _fused_adamw_calls(self.optimizer, self._direct)

    def finish(self) -> None:
        """End the epoch: ``optimizer.zero_grad(set_to_none=True)`` for the head's parameters,
        and the step count of :meth:`step`'s shared counter written into the optimizer's state."""
        for param in self.params:
            param.grad = None
        if self._kernel_calls is not None:
            _sync_step_counts(self._kernel_calls)

    def gradient_norm(self) -> torch.Tensor:
        """The total 2-norm of the head's gradients (``torch.nn.utils.get_total_norm``'s)."""
        return torch.linalg.vector_norm(self.flat)

    def clip(self, max_norm: float, norm: torch.Tensor) -> None:
        """``torch.nn.utils.clip_grads_with_norm_`` for the head's gradients."""
        self.flat.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))

    def step(self) -> None:
        if self._kernel_calls is None:
            self.optimizer.step()
            if self._direct is not None:
                self._kernel_calls = _fused_adamw_calls(self.optimizer, self._direct)
        else:
            _fused_adamw_step(self._kernel_calls)


def _direct_adamw_groups(optimizer: torch.optim.Optimizer) -> list[dict] | None:
    """The param groups :meth:`HeadEpoch.step` may update itself, or None when it must call ``step``."""
    import torch.optim.optimizer as optim_module

    if (
        type(optimizer) is not torch.optim.AdamW
        or optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or getattr(optim_module, "_global_optimizer_pre_hooks", None)
        or getattr(optim_module, "_global_optimizer_post_hooks", None)
    ):
        return None
    for group in optimizer.param_groups:
        numbers = (group["lr"], *group["betas"], group["weight_decay"], group["eps"])
        plain = (
            group.get("fused") is True
            and group.get("decoupled_weight_decay", True) is True
            and not any(group.get(flag) for flag in ("amsgrad", "maximize", "capturable", "differentiable"))
            and all(isinstance(n, float | int) for n in numbers)
            and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in group["params"])
        )
        if not plain:
            return None
    return optimizer.param_groups if _fused_adamw_kernel_works() else None


def _fused_adamw_calls(optimizer: torch.optim.Optimizer, groups: list[dict]) -> tuple | None:
    """The arguments ``AdamW.step`` passes to its fused CPU kernel for ``groups``, gathered once.

    The lists hold the gradient and state tensors themselves, so they stay
    valid while those are updated in place. Every parameter's step count
    goes up by one at each step, so where they are all equal the kernel
    reads one shared counter in their place (on a CPU, ``AdamW.step`` adds 1
    to each count in turn, as costly as the update of a small head's
    biases); :func:`_sync_step_counts` writes it back into the state.

    None when a parameter with a gradient has no state yet (``AdamW.step``
    creates it) or when the step counts differ.
    """
    state = optimizer.state
    calls, counts = [], []
    for group in groups:
        params = [p for p in group["params"] if p.grad is not None]
        states = [state.get(p) for p in params]
        if not all(states):
            return None
        counts += [s["step"] for s in states]
        tensors = [[s[key] for s in states] for key in ("exp_avg", "exp_avg_sq")]
        calls.append((group, params, [p.grad for p in params], *tensors))
    if not counts or not all(torch.equal(counts[0], count) for count in counts):
        return None
    counter = counts[0].clone()
    return counter, counts, [(*call, [counter] * len(call[1])) for call in calls]


def _sync_step_counts(kernel_calls: tuple) -> None:
    """Write the shared step counter of :func:`_fused_adamw_calls` into each parameter's state."""
    counter, counts, _ = kernel_calls
    for count in counts:
        count.copy_(counter)


@without_grad  # as AdamW.step runs
def _fused_adamw_step(kernel_calls: tuple) -> None:
    """What ``AdamW.step`` does with ``fused=True`` on a CPU, for :func:`_fused_adamw_calls`' lists."""
    counter, _, calls = kernel_calls
    counter.add_(1)
    for group, params, grads, exp_avgs, exp_avg_sqs, group_steps in calls:
        beta1, beta2 = group["betas"]
        torch._fused_adamw_(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            group_steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )


@functools.cache
def _fused_adamw_kernel_works() -> bool:
    """Whether :func:`_fused_adamw_step` gives ``AdamW.step``'s weights in this torch (checked once).

    ``torch._fused_adamw_`` is the kernel ``AdamW(fused=True)`` calls, but
    not a public API: should a torch release drop it or change its
    arguments, training falls back to ``optimizer.step()``.
    """
    if getattr(torch, "_fused_adamw_", None) is None:
        return False
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(2, 5, generator=generator)
    grads = [torch.randn(2, 5, generator=generator) for _ in range(3)]
    weights, steps = [], []
    for direct in (False, True):
        params = [torch.nn.Parameter(row.clone()) for row in start]  # two: one shared step counter
        optimizer = torch.optim.AdamW(params, lr=0.01, betas=(0.8, 0.9), weight_decay=0.1, fused=True)
        for param in params:
            param.grad = torch.empty_like(param)  # the kernel's lists hold these very tensors
        calls = None
        for grad in grads:
            for param, row in zip(params, grad, strict=True):
                param.grad.copy_(row)
            try:
                if calls is None:
                    optimizer.step()
                    calls = _fused_adamw_calls(optimizer, optimizer.param_groups) if direct else None
                else:
                    _fused_adamw_step(calls)
            except (TypeError, RuntimeError) as exc:
                logger.debug("fused AdamW kernel not usable directly (%s)", exc)
                return False
        if calls is not None:
            _sync_step_counts(calls)
        weights.append(torch.stack([param.detach() for param in params]))
        steps.append(torch.stack([optimizer.state[param]["step"] for param in params]))
    return torch.equal(*weights) and torch.equal(*steps)


def _batch_weight(X) -> torch.Tensor | None:
    """The sample weights of a batch's inputs, if it has any."""
    return X.get("sample_weight") if isinstance(X, dict) else None


def _out_of_patience(callback: Callback) -> bool:
    """Whether ``callback`` is a skorch ``EarlyStopping`` whose patience has run out."""
    return isinstance(callback, EarlyStopping) and getattr(callback, "misses_", 0) >= callback.patience


class MultiLabelNet(NeuralNet):
    """A skorch ``NeuralNet`` for pre-tokenised texts and a 0/1 label matrix.

    Compared with ``NeuralNet`` it batches texts of similar length (each
    batch padded to its own longest text), builds AdamW groups without weight
    decay on biases and norms (with optional layer-wise lr decay), runs the
    forward pass under autocast for ``bf16``/``fp16`` (fp32 master weights, a
    gradient scaler for fp16) and in fp32 on x86 CPUs not made by Intel with
    oneDNN's linear products (see :mod:`._cpu_linear`), accumulates
    gradients over ``accumulate_batches`` batches, clips the gradient norm
    and steps a warmup + decay learning-rate schedule after each optimizer
    step.
    """

    def __init__(
        self,
        *args,
        precision: str = "fp32",
        max_grad_norm: float | None = 1.0,
        weight_decay: float = 0.01,
        layer_decay: float | None = None,
        lr_schedule: str = "linear",
        warmup_ratio: float = 0.1,
        accumulate_batches: int = 1,
        pad_id: int = 0,
        seed: int | None = None,
        accelerator=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.accelerator = accelerator
        self.precision = precision
        self.max_grad_norm = max_grad_norm
        self.weight_decay = weight_decay
        self.layer_decay = layer_decay
        self.lr_schedule = lr_schedule
        self.warmup_ratio = warmup_ratio
        self.accumulate_batches = accumulate_batches
        self.pad_id = pad_id
        self.seed = seed

    def initialize(self):
        super().initialize()
        if self.accelerator is not None:
            # Data-parallel: the module is wrapped (gradients averaged across
            # processes) and the optimizer handles Accelerate's loss scaling.
            self.module_ = self.accelerator.prepare_model(self.module_)
            self.optimizer_ = self.accelerator.prepare_optimizer(self.optimizer_)
            index = self.accelerator.process_index
            if index and self.seed is not None:
                # Same start everywhere (split, weights, batch order); from here on each
                # process draws its own dropout masks. Process 0 goes on with the fit's stream.
                torch.manual_seed(process_seed(self.seed, index))
        enabled = self.precision == "fp16" and self.accelerator is None
        self.grad_scaler_ = torch.amp.GradScaler(torch.device(self.device).type, enabled=enabled)
        self.lr_scheduler_ = None
        self._iterator_seed = self.seed
        self._pending = 0
        self.start_epoch_ = 0
        self._head_step: HeadStep | None = None
        self._head_step_known = False
        self._lean_epoch: HeadEpoch | None = None
        self.stopped_early_ = False
        return self

    def notify(self, method_name, **cb_kwargs):
        """skorch's ``notify``, except that early stopping waits for the other callbacks.

        skorch's ``EarlyStopping`` ends training by raising ``KeyboardInterrupt``
        from its ``on_epoch_end``, so the callbacks after it (the epoch table's
        row, a user's scoring or checkpoint) would never see the epoch it
        stops on. Here they all see it; then training ends, and
        ``stopped_early_`` tells :class:`~._checkpoint.TrainingGuard` that this
        is a stop, not an interruption. Any other ``KeyboardInterrupt`` (Ctrl-C)
        is passed on at once.
        """
        if method_name == "on_train_begin":
            self.stopped_early_ = False
        if method_name != "on_epoch_end":
            super().notify(method_name, **cb_kwargs)
            return
        self.on_epoch_end(self, **cb_kwargs)
        stop = False
        for _, cb in self.callbacks_:
            try:
                cb.on_epoch_end(self, **cb_kwargs)
            except KeyboardInterrupt:
                if not _out_of_patience(cb):
                    raise
                stop = True
        if stop:
            self.stopped_early_ = True
            raise KeyboardInterrupt  # skorch's fit loop ends training on it

    def initialize_optimizer(self, triggered_directly=None):
        kwargs = self.get_params_for("optimizer")
        lr = kwargs.pop("lr", self.lr)
        weight_decay = kwargs.pop("weight_decay", self.weight_decay)
        overrides = kwargs.pop("param_groups", None) or ()
        groups = param_groups(self.module_, lr, weight_decay, self.layer_decay, overrides)
        # The fused implementation (one kernel per step instead of a loop over
        # tensors) trains MiniLM about 25% faster on CPU; use it unless the
        # user chose an implementation.
        try_fused = (
            "fused" not in kwargs
            and "foreach" not in kwargs
            and "fused" in inspect.signature(self.optimizer).parameters
        )
        if try_fused:
            try:
                self.optimizer_ = self.optimizer(groups, lr=lr, fused=True, **kwargs)
                return self
            except (RuntimeError, TypeError, ValueError) as exc:
                logger.debug("fused %s unavailable (%s); using the default", self.optimizer.__name__, exc)
        self.optimizer_ = self.optimizer(groups, lr=lr, **kwargs)
        return self

    def _make_scheduler(self, n_batches: int) -> None:
        if any(isinstance(cb, LRScheduler) for _, cb in self.callbacks_):
            # A user's skorch LRScheduler sets the learning rate; a LambdaLR stepped after
            # every batch would overwrite what it sets, so lr_schedule and warmup_ratio give way.
            return
        steps_per_epoch = math.ceil(n_batches / self.accumulate_batches)
        total = max(1, steps_per_epoch * self.max_epochs)
        factor = lr_factor(self.lr_schedule, int(total * self.warmup_ratio), total)
        self.lr_scheduler_ = torch.optim.lr_scheduler.LambdaLR(self.optimizer_, factor)
        state = getattr(self, "_scheduler_state", None)
        if state is not None:  # resuming from a checkpoint: continue the schedule where it was
            self.lr_scheduler_.load_state_dict(state)
            for group, lr in zip(self.optimizer_.param_groups, self.lr_scheduler_.get_last_lr(), strict=True):
                group["lr"] = lr
            self._scheduler_state = None

    def get_iterator(self, dataset, training=False):
        prefix = "iterator_train" if training else "iterator_valid"
        kwargs = self.get_params_for(prefix)
        batch_size = kwargs.pop("batch_size", self.batch_size)
        if batch_size == -1:
            batch_size = len(dataset)
        shuffle = kwargs.pop("shuffle", training)
        drop_last = kwargs.pop("drop_last", False)
        seed = None
        if self.seed is not None:
            # A fresh but reproducible stream per iterator.
            self._iterator_seed = (self._iterator_seed or 0) + 1
            seed = self._iterator_seed
        if isinstance(dataset, FeatureDataset):
            # Fixed-size vectors: no padding involved, batches are tensor slices.
            if kwargs:
                names = ", ".join(f"{prefix}__{k}" for k in sorted(kwargs))
                warnings.warn(
                    f"{names} ignored: with freeze_encoder=True the cached text features are batched "
                    "by slicing, which uses only batch_size, shuffle and drop_last.",
                    UserWarning,
                    stacklevel=caller_stacklevel(),
                )
            loader = FeatureBatches(dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
            order = loader
        elif isinstance(dataset, WindowDataset):
            # Windows of long texts: a batch holds at most batch_size windows, whole texts only.
            sampler = WindowBudgetBatchSampler(
                dataset.n_windows, dataset.lengths, batch_size, shuffle=shuffle, seed=seed
            )
            order = sampler
            kwargs.setdefault("collate_fn", WindowCollator(self.pad_id))
            if torch.device(self.device).type == "cuda":
                kwargs.setdefault("pin_memory", True)
            loader = DataLoader(dataset, batch_sampler=sampler, **kwargs)
        else:
            sampler = LengthBucketBatchSampler(
                dataset.lengths, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
            )
            order = sampler
            kwargs.setdefault("collate_fn", PadCollator(self.pad_id))
            if torch.device(self.device).type == "cuda":
                kwargs.setdefault("pin_memory", True)
            loader = DataLoader(dataset, batch_sampler=sampler, **kwargs)
        if training and self.accelerator is not None:
            # Each process gets every num_processes-th batch of the same (seeded) order.
            loader = self.accelerator.prepare_data_loader(loader)
        if training:
            order.epoch = self.start_epoch_  # a resumed fit continues the epochs' shuffling
            if self.lr_scheduler_ is None:
                self._make_scheduler(len(loader))
        return loader

    def forward_iter(self, X, training=False, device="cpu"):
        """skorch's ``forward_iter``; without ``training``, with the outputs of texts in the
        dataset's order and without drawing from the CPU's random generator.

        Batches of texts group similar lengths, so the rows of a
        :class:`~._text.TokenDataset` or :class:`~._text.WindowDataset` come
        out of them in another order; they are put back (in one tensor) for
        whoever reads them against the dataset's labels, such as skorch's
        scoring callbacks without their cache. A ``DataLoader`` draws a seed
        from torch's generator each time it is iterated: a callback that
        predicts during training would otherwise change the dropout masks
        of the epochs after it.
        """
        if training:  # dropout on: the masks come from the generator, as they should
            yield from super().forward_iter(X, training=True, device=device)
            return
        state = torch.get_rng_state()
        try:
            dataset = self.get_dataset(X)
            if not isinstance(dataset, (TokenDataset, WindowDataset)):
                yield from super().forward_iter(dataset, training=False, device=device)
                return
            iterator = self.get_iterator(dataset, training=False)
            outputs = [to_device(self.evaluation_step(batch, training=False), device) for batch in iterator]
            if not outputs:
                return
            rows = torch.as_tensor([i for batch in iterator.batch_sampler.yielded for i in batch])
            out = torch.cat(outputs)
            restored = torch.empty_like(out)
            restored[rows.to(out.device)] = out
            yield restored
        finally:
            torch.set_rng_state(state)

    def predict(self, X):
        """0/1 per label at a threshold of 0.5, for skorch's scoring callbacks.

        ``NeuralNet.predict`` returns the probabilities, which scikit-learn's
        classification scorers (``EpochScoring("f1_macro")``...) refuse. The
        estimator's own ``predict`` applies the tuned thresholds instead.
        """
        return (self.predict_proba(X) >= 0.5).astype(np.int64)

    def infer(self, x, **fit_params):
        # The batch's sample weights are for the loss, not the module.
        x = {k: v.to(self.device, non_blocking=True) for k, v in x.items() if k != "sample_weight"}
        if self.accelerator is not None:
            context = self.accelerator.autocast()
        elif self.precision == "fp32" or self._fp32_head_on_features():
            context = linear_products(self.device, "fp32")
        else:
            context = autocast_context(self.device, self.precision)
        with context:
            return self.module_(**x, **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        y_true = y_true.to(self.device, non_blocking=True)
        weight = _batch_weight(X)
        if weight is None:
            return self.criterion_(y_pred.float(), y_true)
        # Each text's losses times its weight (the weights have mean 1 over the data set), then
        # the mean, as the criterion takes it: the loss of equal weights is the unweighted loss.
        criterion = self.criterion_
        return torch.nn.functional.binary_cross_entropy_with_logits(
            y_pred.float(),
            y_true,
            weight=weight.to(self.device, non_blocking=True).reshape(-1, 1),
            pos_weight=criterion.pos_weight,
            reduction=criterion.reduction,
        )

    def train_step(self, batch, **fit_params):
        if not self.module_.training:  # walking the module tree every step is not free
            self._set_training(True)
        Xi, yi = batch
        head_step = self._fixed_feature_step()
        if head_step is not None and isinstance(Xi, dict) and "features" in Xi:
            y_true = yi.to(self.device, non_blocking=True)
            loss, y_pred = head_step.forward(
                Xi["features"], y_true, self.criterion_.pos_weight, weight=_batch_weight(Xi)
            )
            self._check_loss(loss)
            head_step.backward(1.0 / self.accumulate_batches)
        else:
            y_pred = self.infer(Xi, **fit_params)
            loss = self.get_loss(y_pred, yi, X=Xi, training=True)
            self._check_loss(loss)
            if self.accumulate_batches > 1:
                loss_to_backprop = loss / self.accumulate_batches
            else:
                loss_to_backprop = loss
            if self.grad_scaler_.is_enabled():
                loss_to_backprop = self.grad_scaler_.scale(loss_to_backprop)
            if self.accelerator is not None:
                self.accelerator.backward(loss_to_backprop)
            else:
                loss_to_backprop.backward()
        self._pending += 1
        if self._pending >= self.accumulate_batches:
            self._optimizer_step(batch)
        return {"loss": loss.detach(), "y_pred": y_pred.detach()}

    def _fixed_feature_step(self) -> HeadStep | None:
        """The hand-written step for a plain head on cached features, when it applies.

        It applies to training on the CPU of a head alone on cached features
        (in fp32 there, see :meth:`_fp32_head_on_features`), one that
        :func:`~._model.build_head` built, with the loss this net builds
        (binary cross-entropy, mean, optional ``pos_weight``). Everything
        else, the optimizer and the callbacks included, is unchanged; only
        forward hooks on the head's layers are not called on that path.
        """
        if not self._head_step_known:
            criterion = self.criterion_
            self._head_step_known = True
            if (
                self._fp32_head_on_features()
                and type(criterion) is torch.nn.BCEWithLogitsLoss
                and criterion.weight is None
                and criterion.reduction == "mean"
            ):
                self._head_step = HeadStep.for_head(self.module_.head)
            logger.debug("hand-written head step: %s", self._head_step is not None)
        return self._head_step

    def _fp32_head_on_features(self) -> bool:
        """Whether this trains a head alone, on cached features, on the CPU: then in fp32.

        Whatever ``precision`` says. The head's products are too small for bf16
        to pay on a CPU (its per-operation autocast made a search over head
        sizes about 2.7x slower than fp32 on a CPU with AMX), and the
        estimator's predictions from cached features run the head in fp32.
        """
        return (
            isinstance(self.module_, HeadOnly)
            and self.accelerator is None
            and torch.device(self.device).type == "cpu"
        )

    def _check_loss(self, loss: torch.Tensor) -> float:
        """Stop on a non-finite loss: on every process at once when training is distributed.

        A process that stopped alone would leave the others waiting forever in
        the gradient all-reduce, so the processes compare their losses first.
        Returns this process's loss.
        """
        accelerator = self.accelerator
        if accelerator is not None and accelerator.num_processes > 1:
            losses = accelerator.gather(loss.detach().float().reshape(1)).cpu()
            bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
            if bad:
                own = accelerator.process_index in bad
                culprit = accelerator.process_index if own else bad[0]
                where = "" if own else f" on process {culprit}"
                self._stop_non_finite("loss" + where, losses[culprit].item())
            return losses[accelerator.process_index].item()
        value = loss.item()  # one read: skorch reads it for every batch anyway
        if not math.isfinite(value):
            self._stop_non_finite("loss", value)
        return value

    def _optimizer_step(self, batch=None, lean: HeadEpoch | None = None, partial: int = 0) -> None:
        """Clip, step the optimizer and the schedule, and drop the gradients.

        With ``lean`` (see :meth:`_head_epoch`), no callback is told of the
        gradients, since none listens, the optimizer step takes ``lean``'s
        cheaper route, and the gradients stay in place for the next batch to
        overwrite; the lean epoch keeps its own count of pending batches.

        ``partial`` is the number of batches in an epoch's last accumulation
        window when it is shorter than ``accumulate_batches``. Each batch
        added ``1 / accumulate_batches`` of its mean gradient, so the sum is
        scaled up to the mean over the window's own batches, as every full
        window's is.
        """
        scaler = self.grad_scaler_ if self.grad_scaler_.is_enabled() else None
        if scaler is not None:
            scaler.unscale_(self.optimizer_)
        if 0 < partial < self.accumulate_batches:
            factor = self.accumulate_batches / partial
            if lean is not None:
                lean.flat.mul_(factor)
            else:
                with torch.no_grad():
                    for param in self._trained_parameters():
                        if param.grad is not None:
                            param.grad.mul_(factor)
        if lean is None:
            self.notify(
                "on_grad_computed",
                named_parameters=TeeGenerator(self.get_all_learnable_params()),
                batch=batch,
                training=True,
            )
        if self.max_grad_norm:
            if self.accelerator is not None:
                # unscales fp16 gradients first
                norm = self.accelerator.clip_grad_norm_(self.module_.parameters(), self.max_grad_norm).item()
            else:
                norm = self._clip_gradients(lean)
            if scaler is None and not math.isfinite(norm):
                self._stop_non_finite("gradient norm", norm)
        if scaler is not None:
            scaler.step(self.optimizer_)
            scaler.update()
        elif lean is not None:
            lean.step()
        else:
            self.optimizer_.step()
        if lean is None:
            self.optimizer_.zero_grad(set_to_none=True)
            self._pending = 0
        if self.lr_scheduler_ is not None:
            self.lr_scheduler_.step()

    def _clip_gradients(self, lean: HeadEpoch | None = None) -> float:
        """``clip_grad_norm_``, without its multiplication by 1 when nothing is clipped.

        Returns the total norm before clipping. The gradients are rescaled
        (by ``clip_grad_norm_``'s own factor) only when that factor is below 1.
        """
        if lean is not None:
            norm = lean.gradient_norm()
        else:
            params = [p for p in self._trained_parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        value = norm.item()
        if self.max_grad_norm / (value + 1e-6) < 1.0:  # NaN compares False: the caller stops on it
            if lean is not None:
                lean.clip(self.max_grad_norm, norm)
            else:
                torch.nn.utils.clip_grads_with_norm_(params, self.max_grad_norm, norm)
        return value

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        """The module's parameters, listed once per module rather than walked every step."""
        cached = getattr(self, "_parameters_of", None)
        if cached is None or cached[0] is not self.module_:
            cached = (self.module_, list(self.module_.parameters()))
            self._parameters_of = cached
        return cached[1]

    def _stop_non_finite(self, what: str, value: float) -> None:
        self.optimizer_.zero_grad(set_to_none=True)
        self._pending = 0
        epoch = len(self.history)
        batch = len(self.history[-1, "batches"]) if epoch else 1  # the current batch has its row
        raise NonFiniteLossError(what, value, epoch, batch, self.precision)

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        if iterator is None:  # no validation data: nothing to run (skorch's own check)
            return
        # Set the mode of every submodule once per epoch: a pretrained encoder
        # arrives in eval mode while a new module says training=True, so the
        # top-level flag alone cannot tell.
        self._set_training(training)
        lean = None
        if training and not fit_params and step_fn == self.train_step:
            lean = self._head_epoch(iterator)
        if lean is None:
            super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)
            if training and self._pending:
                self._optimizer_step(partial=self._pending)  # the epoch's last, partial window
            return
        try:
            with intra_op_threads(1 if lean.small else None), flushed_denormals(), torch.no_grad():
                self._run_head_epoch(iterator, prefix, lean)
        finally:
            lean.finish()

    def _head_epoch(self, iterator) -> HeadEpoch | None:
        """The lean training epoch of a plain head on cached features, when it applies.

        On top of :meth:`_fixed_feature_step`'s conditions, it needs the
        slicing iterator of cached features and no callback that acts on
        training batches or gradients (skorch's defaults and this package's
        own do not; ``verbose``'s progress bar does). The epoch then runs
        without skorch's per-batch notifications, which cost more than a
        head's arithmetic; the history records the same rows.

        An epoch whose steps are small (under :data:`SMALL_STEP_FLOPS`) runs
        on one intra-op thread: see :class:`HeadEpoch`.
        """
        head_step = self._fixed_feature_step()
        if head_step is None or not isinstance(iterator, FeatureBatches):
            return None
        if any(_acts_on_training_batches(cb) for _, cb in self.callbacks_):
            return None
        small = head_step.step_flops(iterator.batch_size) < SMALL_STEP_FLOPS
        params = self._trained_parameters()
        lean = self._lean_epoch
        if (
            lean is None
            or lean.head_step is not head_step
            or lean.optimizer is not self.optimizer_
            or lean.params is not params
            or lean.small != small
        ):
            # Built once per fit: its gradient buffers serve every epoch.
            lean = self._lean_epoch = HeadEpoch(head_step, self.optimizer_, params, small=small)
        else:
            lean.renew()
        return lean

    def _run_head_epoch(self, batches: FeatureBatches, prefix: str, lean: HeadEpoch) -> None:
        """skorch's ``run_single_epoch`` for :meth:`_head_epoch`: same steps, same history."""
        history = self.history
        head_step, grads = lean.head_step, lean.grads
        pos_weight = self.criterion_.pos_weight
        window = self.accumulate_batches
        sizes = batches.batch_sizes()
        masks = head_step.batch_masks(sizes)
        rows = history[-1]["batches"]  # NeuralNet.on_batch_begin adds each batch's row here
        loss_key, size_key = prefix + "_loss", prefix + "_batch_size"
        lean.attach_gradients()
        pending = 0
        for (Xi, yi), batch_masks, size in zip(batches, masks, sizes, strict=True):
            row = {}
            rows.append(row)
            weight = Xi.get("sample_weight")
            loss, _ = head_step.forward(Xi["features"], yi, pos_weight, batch_masks, weight=weight)
            value = self._check_loss(loss)
            head_step.backward(1.0 / window, grads, add=pending > 0)
            pending += 1
            if pending == window:
                self._optimizer_step(lean=lean)
                pending = 0
            row[loss_key] = value
            row[size_key] = size
        history.record(prefix + "_batch_count", len(batches))
        if pending:
            self._optimizer_step(lean=lean, partial=pending)  # the epoch's last, partial window
