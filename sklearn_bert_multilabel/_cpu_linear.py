"""fp32 linear layers on x86 CPUs not made by Intel: oneDNN's products instead of MKL's.

PyTorch's x86 builds compute the fp32 matrix products of ``nn.Linear`` with
MKL, which on other vendors' CPUs (AMD's among them) runs a code path well
below the machine's rate: on a 2-core AMD EPYC with AVX-512, MKL reached
88 GFLOP/s on large products where oneDNN, in the same build, reached 190.
oneDNN chooses its kernels by instruction set alone. On such CPUs, fp32
training sends each ``F.linear`` call of the module's forward pass (and the
two products of its backward pass) to oneDNN through a per-thread torch
function mode, and so do prediction calls too short to pack the weights
(longer ones use oneDNN's packed products on every x86 CPU, see
:mod:`._inference`); everything else is unchanged. The results are fp32
products summed in another order, so they differ from MKL's in the last
bits, as results on two different CPUs do; on a given machine a seeded run
repeats.

Nothing changes on Intel CPUs, on other architectures, in builds without
oneDNN, under autocast (whose bf16 products already use oneDNN), or should
a self-check find oneDNN's product unavailable or out of agreement with
``F.linear``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import re

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)


def cpu_vendor() -> str:
    """The CPU vendor string (``"GenuineIntel"``, ``"AuthenticAMD"``...), or ``""`` if unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    # Windows: "AMD64 Family 25 Model 97 Stepping 2, AuthenticAMD"; macOS on x86: "i386".
    match = re.search(r"GenuineIntel|AuthenticAMD|HygonGenuine|CentaurHauls", platform.processor())
    return match.group(0) if match else ""


def on_x86() -> bool:
    """Whether this is an x86-64 machine."""
    return platform.machine().lower() in ("x86_64", "amd64")


def onednn_on_x86() -> bool:
    """Whether this is an x86 machine whose torch build has oneDNN (its products may be used)."""
    return on_x86() and torch.backends.mkldnn.is_available()


@functools.cache
def cpu_has_bf16() -> bool | None:
    """Whether this CPU has bf16 arithmetic (x86: AVX512-BF16 or AMX); None if unknown.

    Without it, oneDNN emulates bf16 products through fp32 conversions: on a
    2-core AMD EPYC with AVX2 only, a bf16 product ran at 14 GFLOP/s where
    the fp32 one ran at 93. Unknown (None) on other architectures, or should
    this torch build lack its private CPU feature checks.
    """
    if not on_x86():
        return None
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError) as exc:
        logger.debug("CPU bf16 support unknown (%s)", exc)
        return None


def onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` for a 2-D ``x``, by oneDNN; ``weight`` plain or packed for it."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDnnLinear(torch.autograd.Function):
    """``F.linear`` whose forward product and two backward products are oneDNN's."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        rows = x.reshape(-1, x.shape[-1])
        return onednn_product(rows, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = onednn_product(rows, weight.t(), None).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = onednn_product(rows.t(), x.reshape(-1, x.shape[-1]).t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b


def _routable(x, weight, bias) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and isinstance(weight, torch.Tensor)
        and x.dim() >= 2
        and weight.dim() == 2
        and x.shape[-1] == weight.shape[1]
        and x.numel() > 0
        and x.dtype == weight.dtype == torch.float32
        and x.device.type == weight.device.type == "cpu"
        and x.layout == weight.layout == torch.strided  # not sparse, not oneDNN's own layout
        and (bias is None or (isinstance(bias, torch.Tensor) and bias.dtype == torch.float32))
        and (bias is None or bias.shape == (weight.shape[0],))
        and not torch.is_autocast_enabled("cpu")
    )


class OneDnnLinears(TorchFunctionMode):
    """Route fp32 CPU ``F.linear`` calls to :class:`OneDnnLinear` (per thread, while entered)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear and len(args) >= 2:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if _routable(x, weight, bias):
                return OneDnnLinear.apply(x, weight, bias)
        return func(*args, **kwargs)


@functools.cache
def onednn_products_agree() -> bool:
    """Whether :class:`OneDnnLinear` is available here and agrees with ``F.linear`` (checked once)."""
    if not onednn_on_x86():
        return False
    generator = torch.Generator().manual_seed(0)
    try:
        # The first caller may be a prediction under inference mode, or run under autocast.
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
            x = torch.randn(2, 5, 48, generator=generator, requires_grad=True)
            weight = torch.randn(24, 48, generator=generator, requires_grad=True)
            bias = torch.randn(24, generator=generator, requires_grad=True)
            grad = torch.randn(2, 5, 24, generator=generator)
            results = []
            for fn in (F.linear, OneDnnLinear.apply):
                out = fn(x, weight, bias)
                results.append((out.detach(), *torch.autograd.grad(out, (x, weight, bias), grad)))
    except (AttributeError, RuntimeError, NotImplementedError, TypeError) as exc:
        logger.debug("oneDNN linear products unavailable (%s)", exc)
        return False
    agree = all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(*results, strict=True))
    if not agree:
        logger.debug("oneDNN linear products disagree with F.linear; not used")
    return agree


@functools.cache
def use_onednn_products() -> bool:
    """Whether fp32 linear products on this CPU go to oneDNN (decided once)."""
    vendor = cpu_vendor()
    use = vendor not in ("GenuineIntel", "") and onednn_products_agree()
    backend = "oneDNN" if use else "the default BLAS"
    logger.debug("CPU vendor %r: fp32 linear products by %s", vendor, backend)
    return use


def linear_products(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The mode for a forward pass with plain weights: :class:`OneDnnLinears` where it applies."""
    if precision == "fp32" and torch.device(device).type == "cpu" and use_onednn_products():
        return OneDnnLinears()
    return contextlib.nullcontext()
