"""Applying a module to a stream of padded batches, for prediction.

On a CPU with several intra-op threads, one batch at a time spread over all
threads leaves much of the machine idle: the matrix products of a small
encoder on short texts are too small to scale well, and the rest of a layer
(attention, GELU, norms) scales worse still. Running as many single-threaded
workers as there are threads, each taking the next batch from the shared
stream, keeps every core busy on whole batches instead. The total number of
threads stays ``torch.get_num_threads()``.

In fp32 on x86 CPUs, the weights of every ``nn.Linear`` are also reordered
once per call into oneDNN's blocked layout, and the products use them
directly instead of re-packing each weight in every call of the matrix
product. The packed copies exist only for the duration of the call, so they
can never be stale; they cost one extra copy of the linear weights in memory
(models above ``PACK_MAX_BYTES`` are not packed) and about 20 ms for a
6-layer encoder, which is why short calls skip them. On x86 CPUs not made by
Intel, calls with plain weights still take oneDNN's products (see
:mod:`._cpu_linear`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ._cpu_linear import linear_products, onednn_on_x86, onednn_product
from ._net import autocast_context

logger = logging.getLogger(__name__)

Batch = tuple[np.ndarray, dict[str, torch.Tensor]]
Output = tuple[np.ndarray, np.ndarray]

#: Calls with fewer rows (texts, or windows of long texts) than this do not
#: pack weights: the packing would cost more than it saves.
PACK_MIN_ROWS = 256
#: Models whose linear weights take more bytes than this are not packed, so
#: the packed copy never adds more than this much memory to a call (a
#: BERT-base encoder has 340 MB of linear weights; a BERT-large one 1.2 GB).
PACK_MAX_BYTES = 512 * 2**20


def pack_linear_weights(module: nn.Module) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """``{id(weight): (weight, packed weight)}`` for the fp32 CPU ``nn.Linear`` layers of ``module``.

    Empty where oneDNN's packed linear is not available (non-x86 machines,
    builds without oneDNN) or where the weights exceed :data:`PACK_MAX_BYTES`,
    so callers fall back to the plain product.
    """
    if not onednn_on_x86():
        return {}
    weights = [
        layer.weight
        for layer in module.modules()
        if isinstance(layer, nn.Linear)
        and layer.weight.dtype == torch.float32
        and layer.weight.device.type == "cpu"
        and layer.weight.dim() == 2
    ]
    size = sum(w.numel() * w.element_size() for w in weights)
    if size > PACK_MAX_BYTES:
        logger.debug("linear weights of %d bytes are not packed (limit %d)", size, PACK_MAX_BYTES)
        return {}
    packed = {}
    try:
        with torch.inference_mode():
            for w in weights:
                packed[id(w)] = (w, torch.ops.mkldnn._reorder_linear_weight(w.detach(), None))
    except (AttributeError, RuntimeError, NotImplementedError) as exc:  # an older or partial build
        logger.debug("packed linear weights unavailable (%s); using plain products", exc)
        return {}
    return packed


class PackedLinears(TorchFunctionMode):
    """Route ``F.linear`` calls on the packed weights to oneDNN's packed product.

    A function mode is per thread and leaves the modules untouched, so other
    threads using the same model are not affected.
    """

    def __init__(self, packed: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.packed = packed

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and len(args) >= 2:
            x, weight = args[0], args[1]
            entry = self.packed.get(id(weight))
            plain_input = x.dtype == torch.float32 and x.device.type == "cpu"
            if entry is not None and entry[0] is weight and plain_input:
                bias = args[2] if len(args) > 2 else kwargs.get("bias")
                return onednn_product(x, entry[1], bias)
        return func(*args, **kwargs)


def _modes(device: torch.device, precision: str, packed: dict) -> contextlib.ExitStack:
    """inference_mode, autocast and packed or oneDNN products: all per thread, so entered in each worker."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    stack.enter_context(autocast_context(str(device), precision))
    if packed:
        stack.enter_context(PackedLinears(packed))
    else:  # oneDNN's products on CPUs where MKL's are slow
        stack.enter_context(linear_products(device, precision))
    return stack


def _apply(forward: Callable[..., torch.Tensor], batch: Batch, device: torch.device) -> Output:
    rows, inputs = batch
    inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
    return rows, forward(**inputs).float().cpu().numpy()


def prediction_workers(device: torch.device) -> int:
    """How many worker threads :func:`run_batches` shares a call's batches among."""
    # Per-thread team sizes are an OpenMP feature; other builds run batches in turn.
    return torch.get_num_threads() if device.type == "cpu" and torch._C.has_openmp else 1


def run_batches(
    batches: Iterable[Batch],
    forward: Callable[..., torch.Tensor],
    module: nn.Module,
    device: torch.device,
    precision: str,
) -> list[Output]:
    """``(rows, outputs)`` of ``forward`` for every batch, in no particular order.

    On CPU with ``torch.get_num_threads() = T > 1`` (OpenMP builds of torch,
    the usual ones) and at least two batches,
    ``min(T, number of batches)`` worker threads share the ``T`` threads
    equally; elsewhere the batches run one after another in the calling
    thread. Each worker reads the stream under a lock, so a generator that
    tokenises lazily is safe and its tokenising overlaps the other workers'
    arithmetic. With ``precision="fp32"`` on CPU and at least
    :data:`PACK_MIN_ROWS` rows, the linear layers of ``module`` use packed
    weights.
    """
    threads = prediction_workers(device)
    batches = iter(batches)
    first: list[Batch] = []
    rows = 0
    for batch in batches:  # look ahead far enough to choose workers and packing
        first.append(batch)
        rows += len(batch[0])
        if len(first) >= threads and rows >= PACK_MIN_ROWS:
            break
    packed = {}
    if device.type == "cpu" and precision == "fp32" and rows >= PACK_MIN_ROWS:
        packed = pack_linear_weights(module)
    source = itertools.chain(first, batches)
    if threads < 2 or len(first) < 2:
        with _modes(device, precision, packed):
            return [_apply(forward, batch, device) for batch in source]

    n_workers = min(threads, len(first))
    per_worker = threads // n_workers
    lock = threading.Lock()
    stop = threading.Event()
    results: list[Output] = []
    errors: list[BaseException] = []

    def work() -> None:
        # Sets this thread's OpenMP/MKL team size; the calling thread keeps its own.
        torch.set_num_threads(per_worker)
        try:
            with _modes(device, precision, packed):
                while not stop.is_set():
                    with lock:
                        batch = next(source, None)
                    if batch is None:
                        return
                    results.append(_apply(forward, batch, device))
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)
            stop.set()

    logger.debug(
        "predicting with %d workers of %d thread(s), %s weights",
        n_workers,
        per_worker,
        "packed" if packed else "plain",
    )
    workers = [
        threading.Thread(target=work, name=f"sklearn-bert-multilabel-predict-{i}", daemon=True)
        for i in range(n_workers)
    ]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        stop.set()
        # torch.set_num_threads also sets the default that threads started
        # later begin with; put back the caller's count.
        torch.set_num_threads(threads)
    if errors:
        error = errors[0]
        errors.clear()
        try:
            raise error
        finally:
            del error  # no cycle: error -> traceback -> this frame -> error
    return results
