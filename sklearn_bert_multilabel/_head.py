"""Training a plain head on fixed features with hand-written gradients.

With a frozen encoder, each text's pooled features are computed once and a
fit only trains the head: a few small matrix products per batch. At that
size autograd's bookkeeping (graph nodes, saved tensors, one call per layer
and per dropout mask) costs more than the arithmetic, so for the heads that
:func:`~sklearn_bert_multilabel._model.build_head` makes, :class:`HeadStep`
computes the binary cross-entropy and the gradients of every weight
directly. It draws the same dropout masks from the same generator in the
same order as the module's own forward pass, so both give the same model up
to float rounding. :meth:`HeadStep.batch_masks` draws those masks for many
batches in one call to the generator: the same numbers, at a fraction of the
cost per batch.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._model import FastDropout, draw_words, dropout_mask, mask_cut, mask_words

#: A dropout mask (:func:`~._model.dropout_mask`'s values) and the scale of its kept elements.
Mask = tuple[torch.Tensor, float]

#: At most about this many mask elements are drawn at once by :meth:`HeadStep.batch_masks`.
MASK_BLOCK = 1 << 20


def without_grad(fn: Callable) -> Callable:
    """Run ``fn`` under ``torch.no_grad``, entering it only when grad mode is on.

    A lean head epoch already runs under ``no_grad``; entering it again in
    every step costs a few microseconds, as much as a small head's loss.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.is_grad_enabled():
            with torch.no_grad():
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


def _plain_dropout(layer: nn.Module) -> bool:
    return type(layer) is FastDropout and not layer.inplace and 0.0 <= layer.p < 1.0


class HeadStep:
    """Loss and gradients of a ``Dropout, [Linear, ReLU, Dropout]*, Linear`` head.

    Use :meth:`for_head`, which returns None for a head of any other form.
    :meth:`forward` returns the mean binary cross-entropy (with ``pos_weight``
    as :class:`torch.nn.BCEWithLogitsLoss` applies it) and the logits;
    :meth:`backward` then adds the gradients to each parameter's ``.grad``,
    as ``loss.backward()`` would.
    """

    def __init__(self, dropouts: list[FastDropout], linears: list[nn.Linear]):
        self.dropouts = dropouts  # dropouts[i] comes before linears[i]
        self.linears = linears
        self._saved: tuple | None = None

    @classmethod
    def for_head(cls, head: nn.Module) -> HeadStep | None:
        """A step for ``head``, or None when its layers are not of the plain form."""
        if type(head) is not nn.Sequential or len(head) % 3 != 2:
            return None
        layers = list(head)  # 3k + 2 layers: k + 1 dropouts and linears, k ReLUs
        dropouts = layers[0::3]
        linears = layers[1::3]
        relus = layers[2::3]
        if not all(_plain_dropout(d) for d in dropouts):
            return None
        if not all(type(lin) is nn.Linear and lin.bias is not None for lin in linears):
            return None
        if not all(type(r) is nn.ReLU for r in relus):
            return None
        return cls(dropouts, linears)

    @without_grad
    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        pos_weight: torch.Tensor | None = None,
        masks: Sequence[Mask | None] | None = None,
        weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean BCE-with-logits loss and logits of a batch; keeps what :meth:`backward` needs.

        ``masks`` (one entry per dropout, None where it drops nothing), as
        :meth:`batch_masks` yields them, replaces the masks drawn here.
        ``weight`` (one per row) multiplies each row's losses before the mean.
        """
        inputs = []  # what each linear layer reads: its input times its dropout mask
        scales = []  # the scale of the kept elements of that mask (1 without one)
        h = x
        last = len(self.linears) - 1
        for i, (drop, lin) in enumerate(zip(self.dropouts, self.linears, strict=True)):
            if masks is not None:
                mask = masks[i]
            elif drop.training and drop.p > 0:
                mask = dropout_mask(h, drop.p), mask_cut(drop.p)[1]
            else:
                mask = None
            if mask is not None:
                values, scale = mask
                # The first input is the caller's tensor: never write into it.
                h = h * values if i == 0 else h.mul_(values)
            else:
                scale = 1.0
            inputs.append(h)
            scales.append(scale)
            z = F.linear(h, lin.weight, lin.bias)  # addmm(bias, h, weight.t()), transposed in C++
            h = z.relu_() if i < last else z
        # F.binary_cross_entropy_with_logits without its argument checks (same shapes by
        # construction); reduction 1 is the mean.
        if weight is not None:
            weight = weight.reshape(-1, 1)
        loss = torch.binary_cross_entropy_with_logits(z, y, weight, pos_weight, 1)
        self._saved = (inputs, scales, z, y, pos_weight, weight)
        return loss, z

    def step_flops(self, batch_size: int) -> int:
        """About how many floating-point operations a training step on ``batch_size`` rows takes.

        Forward and backward matrix products: 2 each for the forward pass, the
        weight gradient and the input gradient, per multiply-add.
        """
        return 6 * batch_size * sum(lin.in_features * lin.out_features for lin in self.linears)

    def batch_masks(self, batch_sizes: Sequence[int]) -> Iterator[list[Mask | None]]:
        """The masks :meth:`forward` would draw for batches of these sizes, batch after batch.

        The words for many batches come from one call to the default
        generator (see :func:`~._model.draw_words`), in the order in which
        per-batch calls would draw them, so feeding these to :meth:`forward`
        gives the same results as letting it draw. Nothing else may draw
        from the generator while the iterator is in use. CPU only.
        """
        active = [
            (i, lin.in_features, *mask_cut(drop.p))
            for i, (drop, lin) in enumerate(zip(self.dropouts, self.linears, strict=True))
            if drop.training and drop.p > 0
        ]
        none: list[Mask | None] = [None] * len(self.dropouts)
        row = sum(width for _, width, _, _ in active)
        sizes = list(batch_sizes)
        start = 0
        while start < len(sizes):
            if not active:
                yield none
                start += 1
                continue
            stop, elements = start + 1, sizes[start] * row
            while stop < len(sizes) and elements + sizes[stop] * row <= MASK_BLOCK:
                elements += sizes[stop] * row
                stop += 1
            block = sizes[start:stop]
            words = sum(mask_words(size * width) for size in block for _, width, _, _ in active)
            draws = draw_words(words).view(torch.int16)
            values = {}
            for _, _, lowest, scale in active:
                if lowest not in values:
                    # keep_mask keeps a draw d when d >= lowest, i.e. when d - lowest + 0.5 >= 0.5.
                    # d - lowest + 0.5 is exact in float32 (a half-integer below 2**17), and times
                    # 4 * scale it is >= 2 * scale (else <= -2 * scale), far beyond float32 rounding
                    # at these magnitudes, so clamping it to [0, scale] gives exactly dropout_mask's
                    # values. These in-place passes on a float copy take a quarter of the time of
                    # one out-of-place addition of the int16 draws to a float.
                    shifted = draws.float().sub_(lowest - 0.5)
                    values[lowest] = shifted.mul_(4 * scale).clamp_(0, scale)
            # The draws of one batch are its layers' masks one after the other (one keep_mask call
            # each), so a run of batches of one size puts a layer's masks at a fixed stride: one
            # strided view per layer and run, cut into the batches' masks by a single unbind.
            at = 0  # where the run starts in the block's draws
            for size, run in _runs(block):
                spans = [4 * mask_words(size * width) for _, width, _, _ in active]
                stride = sum(spans)
                layers = []
                offsets = itertools.accumulate(spans[:-1], initial=at)  # where each layer's masks start
                for (i, width, lowest, scale), offset in zip(active, offsets, strict=True):
                    view = values[lowest].as_strided((run, size, width), (stride, width, 1), offset)
                    layers.append((i, view.unbind(0), scale))
                for b in range(run):
                    masks = none.copy()
                    for i, views, scale in layers:
                        masks[i] = (views[b], scale)
                    yield masks
                at += run * stride
            start = stop

    def gradient_buffers(self) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """One flat tensor for every gradient of the head, and each linear layer's views of it.

        The views, a ``(weight, bias)`` pair per layer, are what
        :meth:`backward` writes into when given them; one norm or one
        multiplication of the flat tensor then covers every gradient.
        """
        shapes = [t.shape for lin in self.linears for t in (lin.weight, lin.bias)]
        sizes = [shape.numel() for shape in shapes]
        weight = self.linears[0].weight
        flat = torch.empty(sum(sizes), dtype=weight.dtype, device=weight.device)
        views = [part.view(shape) for part, shape in zip(flat.split(sizes), shapes, strict=True)]
        return flat, list(zip(views[0::2], views[1::2], strict=True))

    @without_grad
    def backward(
        self,
        loss_scale: float = 1.0,
        into: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
        *,
        add: bool = False,
    ) -> None:
        """Add the gradients of ``loss_scale`` times the last loss to the parameters' ``.grad``.

        With ``into`` (from :meth:`gradient_buffers`), they are written into
        those tensors instead, or added to them with ``add=True``.
        """
        if self._saved is None:
            raise RuntimeError("HeadStep.backward needs a forward first")
        inputs, scales, z, y, pos_weight, weight = self._saved
        self._saved = None
        # d/dz of the mean loss: (sigmoid(z) * (1 + (w - 1) * y) - w * y) / z.numel()
        dz = torch.sigmoid(z)
        if pos_weight is None:
            dz.sub_(y)
        else:
            wy = y * pos_weight
            dz.mul_(wy - y + 1).sub_(wy)
        if weight is not None:
            dz.mul_(weight)
        dz.mul_(loss_scale / z.numel())
        for i in range(len(self.linears) - 1, -1, -1):
            lin = self.linears[i]
            h = inputs[i]
            if into is not None and not add:
                grad_w, grad_b = into[i]
                torch.mm(dz.t(), h, out=grad_w)
                torch.sum(dz, 0, out=grad_b)
            else:
                grad_w, grad_b = torch.mm(dz.t(), h), dz.sum(0)
                if into is not None:
                    into[i][0].add_(grad_w)
                    into[i][1].add_(grad_b)
                else:
                    _accumulate(lin.weight, grad_w)
                    _accumulate(lin.bias, grad_b)
            if i > 0:
                # h = relu(a) * mask, so the gradient reaches a where h > 0, times the mask's scale.
                dz = _relu_backward(torch.addmm(h, dz, lin.weight, beta=0, alpha=scales[i]), h)


def _runs(sizes: Sequence[int]) -> Iterator[tuple[int, int]]:
    """``(size, count)`` for each run of equal consecutive values of ``sizes``."""
    for size, group in itertools.groupby(sizes):
        yield size, sum(1 for _ in group)


def _relu_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``grad`` where ``output > 0``, else 0: what autograd computes for a ReLU, in one kernel."""
    return torch.ops.aten.threshold_backward(grad, output, 0)


def _accumulate(param: nn.Parameter, grad: torch.Tensor) -> None:
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)
