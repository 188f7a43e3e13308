"""Data-parallel training through Hugging Face Accelerate, when the process was launched for it.

A script that calls ``fit`` runs unchanged under ``accelerate launch`` or
``torchrun``: each process trains on its share of the batches, gradients
are averaged across processes, and every process ends with the same fitted
estimator (unwrapped, picklable, predicting on its own).

All processes share the fit's seed up to the start of training (the same
validation split, the same initial head, the same batch order); from there
each process draws its own random numbers (:func:`process_seed`), so that
their batches get different dropout masks, as one process's successive
batches do.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def launched_world_size() -> int:
    """Number of processes the launcher started (``WORLD_SIZE``), 1 when not launched."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def wants_accelerate(setting: bool | str) -> bool:
    """Whether ``distributed=setting`` means training through Accelerate in this process."""
    if setting == "auto":
        return launched_world_size() > 1
    return bool(setting)


def make_accelerator(precision: str, device: str):
    """An ``accelerate.Accelerator`` for this fit.

    ``precision`` becomes Accelerate's mixed precision (fp32: whatever the
    launch configuration says, else none); ``device="cpu"`` keeps training on
    the CPU.
    """
    try:
        from accelerate import Accelerator
    except ImportError as exc:
        raise ImportError(
            f"this process was launched for distributed training (WORLD_SIZE={launched_world_size()}), "
            "which needs Hugging Face Accelerate: pip install 'sklearn-bert-multilabel[distributed]', "
            "or set distributed=False to train each process on its own."
        ) from exc
    from accelerate.state import AcceleratorState

    # precision="fp32" leaves the choice to the launch configuration (accelerate launch
    # --mixed_precision bf16 sets ACCELERATE_MIXED_PRECISION).
    mixed = precision if precision != "fp32" else os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", mixed)) != mixed:
        # One Accelerate state per process: a fit with another precision resets it.
        AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision=mixed, cpu=device == "cpu")
    logger.info(
        "training with Accelerate: process %d of %d on %s, mixed precision %s",
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.device,
        accelerator.mixed_precision,
    )
    return accelerator


def release(accelerator) -> None:
    """Drop what ``accelerator`` holds of a finished (or failed) fit: wrapped model, optimizer, loaders.

    Accelerate keeps them as long as the Accelerator lives, and the wrapped
    model holds the process group. A wrapper that outlives the fit, for
    example in a reference cycle (a traceback caught during a first import
    links to the fit's frames) that the garbage collector reaches only while
    the interpreter shuts down, after ``destroy_process_group``, can abort the
    process. ``free_memory`` collects such cycles first. A failure here is
    logged, never raised: it must not replace the fit's result or its error.
    """
    if accelerator is None:
        return
    try:
        accelerator.free_memory()
    except Exception:  # noqa: BLE001 - clean-up only
        logger.debug("could not release the accelerator's references", exc_info=True)


def shared_seed(accelerator, seed: int | None) -> int | None:
    """The main process's seed on every process, so that all draw the same split and batch order."""
    if accelerator is None or accelerator.num_processes == 1:
        return seed
    import numpy as np
    from accelerate.utils import broadcast_object_list

    value = [seed if seed is not None else int(np.random.SeedSequence().entropy % 2**31)]
    broadcast_object_list(value, from_process=0)
    return value[0]


def process_seed(seed: int, index: int) -> int:
    """The seed of process ``index``'s random numbers during training (process 0 keeps ``seed``)."""
    if index == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]) >> 1
