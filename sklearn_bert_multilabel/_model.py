"""The PyTorch module: a pretrained encoder, a pooling step and a head.

The module returns one raw logit per label. It knows nothing about
scikit-learn: the estimator in :mod:`._estimator` builds it and trains it.
"""

from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("cls", "pooler", "mean", "attention")


def has_pooler(encoder: nn.Module) -> bool:
    """Return True when ``encoder`` computes a ``pooler_output``."""
    return getattr(encoder, "pooler", None) is not None


def build_head(
    in_features: int,
    n_labels: int,
    hidden_layer_sizes: tuple[int, ...],
    dropout: float,
) -> nn.Sequential:
    """Dropout, then ``[Linear, ReLU, Dropout]`` per hidden size, then a Linear.

    ``hidden_layer_sizes=()`` gives dropout followed by one linear layer to
    the logits, as Hugging Face's sequence-classification heads do.
    """
    layers: list[nn.Module] = [nn.Dropout(dropout)]
    width = in_features
    for size in hidden_layer_sizes:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, n_labels))
    return nn.Sequential(*layers)


class AttentionPooling(nn.Module):
    """Learned attention weights over tokens; padding gets exactly zero weight."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(hidden).squeeze(-1).float()
        scores = scores.masked_fill(attention_mask == 0, float("-inf"))
        weights = torch.softmax(scores, dim=1).to(hidden.dtype)
        return torch.einsum("bt,bth->bh", weights, hidden)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of the real (non-padding) tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1.0)
    return summed / counts


class MultiLabelTextModule(nn.Module):
    """Encoder + pooling + head, returning raw logits of shape (batch, n_labels).

    Parameters
    ----------
    encoder : torch.nn.Module
        A Hugging Face encoder (``AutoModel``) whose output has a
        ``last_hidden_state`` (and a ``pooler_output`` for ``pooling="pooler"``).
    n_labels : int
        Number of independent labels, one logit each.
    pooling : {"cls", "pooler", "mean", "attention"}
        How token states become one vector per text.
    hidden_layer_sizes : tuple of int
        Sizes of the hidden layers of the head; ``()`` is a linear head.
    dropout : float
        Dropout probability in the head.
    freeze_encoder : bool
        If True, the encoder's parameters get no gradient and the encoder
        always runs in evaluation mode.
    """

    def __init__(
        self,
        encoder: nn.Module,
        n_labels: int,
        *,
        pooling: str = "mean",
        hidden_layer_sizes: tuple[int, ...] = (),
        dropout: float = 0.1,
        freeze_encoder: bool = False,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        if pooling == "pooler" and not has_pooler(encoder):
            raise ValueError(
                f"pooling='pooler' needs an encoder with a pooler layer; "
                f"{type(encoder).__name__} has none. Use pooling='cls' or 'mean'."
            )
        self.encoder = encoder
        self.pooling = pooling
        self.freeze_encoder = freeze_encoder
        hidden_size = encoder.config.hidden_size
        self.attention = AttentionPooling(hidden_size) if pooling == "attention" else None
        self.head = build_head(hidden_size, n_labels, tuple(hidden_layer_sizes), dropout)
        if freeze_encoder:
            for param in self.encoder.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> MultiLabelTextModule:
        super().train(mode)
        if self.freeze_encoder:
            # A frozen encoder is a fixed feature extractor: no dropout in it.
            self.encoder.eval()
        return self

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Return the pooled text vectors, shape (batch, hidden_size)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "mean":
            return mean_pool(hidden, attention_mask)
        return self.attention(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: object) -> torch.Tensor:
        return self.head(self.pool(input_ids, attention_mask))


class HeadOnly(nn.Module):
    """The head alone, fed pooled features: trains a frozen-encoder model cheaply.

    It shares its parameters with the full module's ``head``.
    """

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor, **_: object) -> torch.Tensor:
        return self.head(features)
