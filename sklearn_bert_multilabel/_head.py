"""Training a plain head on fixed features with hand-written gradients.

With a frozen encoder, each text's pooled features are computed once and a
fit only trains the head: a few small matrix products per batch. At that
size autograd's bookkeeping (graph nodes, saved tensors, one call per layer
and per dropout mask) costs more than the arithmetic, so for the heads that
:func:`~sklearn_bert_multilabel._model.build_head` makes, :class:`HeadStep`
computes the binary cross-entropy and the gradients of every weight
directly. It draws the same dropout masks from the same generator in the
same order as the module's own forward pass, so both give the same model up
to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._model import FastDropout, keep_mask


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

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean BCE-with-logits loss and logits of a batch; keeps what :meth:`backward` needs."""
        with torch.no_grad():
            inputs = []  # (h, s): each linear layer reads s * h
            h, scale = x, 1.0
            last = len(self.linears) - 1
            for i, (drop, lin) in enumerate(zip(self.dropouts, self.linears, strict=True)):
                if drop.training and drop.p > 0:
                    keep, scale = keep_mask(h, drop.p)
                    # The first input is the caller's tensor: never write into it.
                    h = h * keep if i == 0 else h.mul_(keep)
                else:
                    scale = 1.0
                inputs.append((h, scale))
                z = torch.addmm(lin.bias, h, lin.weight.t(), alpha=scale)
                h = z.relu_() if i < last else z
            loss = F.binary_cross_entropy_with_logits(z, y, pos_weight=pos_weight)
        self._saved = (inputs, z, y, pos_weight)
        return loss, z

    def backward(self, loss_scale: float = 1.0) -> None:
        """Add the gradients of ``loss_scale`` times the last loss to the parameters' ``.grad``."""
        if self._saved is None:
            raise RuntimeError("HeadStep.backward needs a forward first")
        inputs, z, y, pos_weight = self._saved
        self._saved = None
        with torch.no_grad():
            # d/dz of the mean loss: (sigmoid(z) * (1 + (w - 1) * y) - w * y) / z.numel()
            dz = torch.sigmoid(z)
            if pos_weight is None:
                dz.sub_(y)
            else:
                wy = y * pos_weight
                dz.mul_(wy - y + 1).sub_(wy)
            dz.mul_(loss_scale / z.numel())
            for i in range(len(self.linears) - 1, -1, -1):
                lin = self.linears[i]
                h, scale = inputs[i]
                grad_w = torch.addmm(lin.weight, dz.t(), h, beta=0, alpha=scale)
                grad_b = dz.sum(0)
                if i > 0:
                    # h = relu(a) * keep, so h > 0 exactly where a gradient reaches a.
                    dz = torch.addmm(h, dz, lin.weight, beta=0, alpha=scale).mul_(h > 0)
                _accumulate(lin.weight, grad_w)
                _accumulate(lin.bias, grad_b)


def _accumulate(param: nn.Parameter, grad: torch.Tensor) -> None:
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)
