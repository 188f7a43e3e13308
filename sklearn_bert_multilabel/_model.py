"""The PyTorch module: a pretrained encoder, a pooling step and a head.

The module returns one raw logit per label. It knows nothing about
scikit-learn: the estimator in :mod:`._estimator` builds it and trains it.
"""

from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("cls", "pooler", "mean", "attention")
CHUNK_AGGREGATIONS = ("max", "mean", "attention")


#: Resolution of :class:`FastDropout`'s drop probability: masks are 16-bit draws.
MASK_LEVELS = 1 << 16


def keep_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """Which elements of ``x`` dropout keeps (a bool tensor), and the scale of the kept ones.

    The random numbers come from the default generator 64 bits at a time and
    are split into four 16-bit draws, which costs a quarter of the generator
    calls that ``bernoulli_`` makes. ``p`` is rounded to the nearest multiple
    of 1/65536 (at most 7.6e-6 away) and the scale uses the rounded value, so
    the expected output equals the input exactly.
    """
    n = x.numel()
    lowest, scale = mask_cut(p)
    draws = draw_words(mask_words(n), x.device).view(torch.int16)[:n].view(x.shape)
    return draws >= lowest, scale


def mask_cut(p: float) -> tuple[int, float]:
    """The smallest signed 16-bit draw that :func:`keep_mask` keeps, and the kept elements' scale."""
    cut = round(p * MASK_LEVELS)
    # Signed draws are uniform on [-32768, 32767]: keeping those >= cut - 32768 drops cut / 65536.
    return cut - MASK_LEVELS // 2, MASK_LEVELS / (MASK_LEVELS - cut)


def mask_words(n: int) -> int:
    """How many 64-bit words :func:`keep_mask` draws for a mask of ``n`` elements."""
    return (n + 3) // 4


def draw_words(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` random 64-bit words from the default generator, as :func:`keep_mask` draws them.

    On the CPU the words come one after the other from the generator, so one
    call for ``a + b`` words gives the words of a call for ``a`` followed by a
    call for ``b``: masks can be drawn for many batches at once.
    """
    return torch.empty(n, dtype=torch.int64, device=device).random_(-(1 << 63), None)


def dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A dropout mask for ``x``: 0 with probability ``p``, else ``1 / (1 - p)``.

    Drawn by :func:`keep_mask`, so ``p`` is rounded to a multiple of 1/65536
    and ``E[mask] == 1`` exactly.
    """
    keep, scale = keep_mask(x, p)
    return keep.to(x.dtype).mul_(scale)


class FastDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` with cheaper masks on the CPU (see :func:`dropout_mask`).

    On a CPU, drawing a ``bernoulli_`` mask costs several times the rest of
    dropout; this draws a quarter as many numbers from the same generator, so
    seeding with ``torch.manual_seed`` reproduces a run. Other devices,
    ``inplace=True`` and ``p`` of 0 or 1 use :class:`torch.nn.Dropout` itself.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.inplace or self.p == 1 or x.device.type != "cpu":
            return super().forward(x)
        return x * dropout_mask(x, self.p)


def use_fast_dropout(module: nn.Module) -> None:
    """Replace every plain :class:`torch.nn.Dropout` in ``module`` by a :class:`FastDropout`."""
    plain = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Dropout
    ]
    for parent, name, child in plain:
        fast = FastDropout(child.p, child.inplace)
        fast.train(child.training)
        setattr(parent, name, fast)


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
    layers: list[nn.Module] = [FastDropout(dropout)]
    width = in_features
    for size in hidden_layer_sizes:
        layers += [nn.Linear(width, size), nn.ReLU(), FastDropout(dropout)]
        width = size
    layers.append(nn.Linear(width, n_labels))
    return nn.Sequential(*layers)


def head_linears(head: nn.Sequential) -> list[nn.Linear]:
    """The linear layers of a head that :func:`build_head` built, in order."""
    return [layer for layer in head if isinstance(layer, nn.Linear)]


def head_layout(head: nn.Sequential) -> tuple[tuple[int, ...], float]:
    """The ``hidden_layer_sizes`` and ``dropout`` that :func:`build_head` built ``head`` with."""
    return tuple(layer.out_features for layer in head_linears(head)[:-1]), float(head[0].p)


class AttentionPooling(nn.Module):
    """Learned attention weights over tokens; padding gets exactly zero weight.

    A text without any token (an empty text, with a tokenizer that adds no
    special tokens) pools to zeros, as with the mean, rather than to the NaN
    of a softmax over nothing.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(hidden).squeeze(-1).float()
        padding = attention_mask == 0
        empty = padding.all(dim=1, keepdim=True)
        scores = scores.masked_fill(padding & ~empty, float("-inf"))
        weights = torch.softmax(scores, dim=1).masked_fill(empty, 0.0).to(hidden.dtype)
        return torch.einsum("bt,bth->bh", weights, hidden)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of the real (non-padding) tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1.0)
    return summed / counts


def aggregate_windows(
    mode: str,
    logits: torch.Tensor,
    doc_index: torch.Tensor,
    n_docs: int,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """Combine per-window logits (n_windows, n_labels) into per-document logits (n_docs, n_labels).

    ``doc_index[i]`` is the document of window ``i``. ``"max"``: a label is as
    present as in its strongest window; ``"mean"``: the average window;
    ``"attention"``: a softmax over each document's windows of ``scores``
    (one score per window and label) weighs the windows' logits.
    """
    index = doc_index.long().unsqueeze(1).expand_as(logits)
    if mode == "max":
        out = logits.new_full((n_docs, logits.shape[1]), float("-inf"))
        return out.scatter_reduce(0, index, logits, reduce="amax", include_self=True)
    if mode == "mean":
        total = logits.new_zeros((n_docs, logits.shape[1])).index_add(0, doc_index.long(), logits)
        counts = torch.bincount(doc_index.long(), minlength=n_docs).clamp(min=1).to(logits.dtype)
        return total / counts.unsqueeze(1)
    if scores is None:
        raise ValueError("chunk_aggregation='attention' needs window scores.")
    scores = scores.float()
    peak = scores.new_full((n_docs, scores.shape[1]), float("-inf"))
    peak = peak.scatter_reduce(0, index, scores, reduce="amax", include_self=True)
    weights = torch.exp(scores - peak.gather(0, index))
    norm = weights.new_zeros(peak.shape).index_add(0, doc_index.long(), weights)
    weights = weights / norm.gather(0, index)
    return logits.new_zeros(peak.shape).index_add(
        0, doc_index.long(), (weights * logits.float()).to(logits.dtype)
    )


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
    chunk_aggregation : {"max", "mean", "attention"} or None
        How the windows of a long text are combined (see
        :func:`aggregate_windows`); ``"attention"`` adds a learned scorer.
        Only used when ``forward`` gets a ``doc_index``.

    Examples
    --------
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> from sklearn_bert_multilabel import MultiLabelTextModule
    >>> config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
    ...                     num_attention_heads=2, intermediate_size=64)
    >>> module = MultiLabelTextModule(BertModel(config), n_labels=3, hidden_layer_sizes=(16,))
    >>> input_ids = torch.tensor([[2, 15, 27, 3], [2, 40, 3, 0]])
    >>> attention_mask = (input_ids != 0).long()
    >>> logits = module(input_ids=input_ids, attention_mask=attention_mask)
    >>> logits.shape  # one raw logit per label; torch.sigmoid(logits) gives probabilities
    torch.Size([2, 3])
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
        chunk_aggregation: str | None = None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        if pooling == "pooler" and not has_pooler(encoder):
            raise ValueError(
                f"pooling='pooler' needs an encoder with a pooler layer; "
                f"{type(encoder).__name__} has none. Use pooling='cls' or 'mean'."
            )
        if not freeze_encoder:
            use_fast_dropout(encoder)  # the encoder's own dropout layers, for its training
        self.encoder = encoder
        self.pooling = pooling
        self.freeze_encoder = freeze_encoder
        hidden_size = encoder.config.hidden_size
        self.attention = AttentionPooling(hidden_size) if pooling == "attention" else None
        self.head = build_head(hidden_size, n_labels, tuple(hidden_layer_sizes), dropout)
        if chunk_aggregation is not None and chunk_aggregation not in CHUNK_AGGREGATIONS:
            raise ValueError(
                f"chunk_aggregation must be one of {CHUNK_AGGREGATIONS} or None, got {chunk_aggregation!r}."
            )
        self.chunk_aggregation = chunk_aggregation
        self.window_scorer = nn.Linear(hidden_size, n_labels) if chunk_aggregation == "attention" else None
        if freeze_encoder:
            for param in self.encoder.parameters():
                if param.requires_grad:  # a shared frozen encoder has none left to turn off
                    param.requires_grad_(False)
        elif pooling != "pooler" and has_pooler(encoder):
            # The pooler's output is not used: no gradient, no optimizer state, and
            # no unused parameters for DistributedDataParallel to wait for.
            for param in encoder.pooler.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> MultiLabelTextModule:
        """Set training mode, as :meth:`torch.nn.Module.train`; a frozen encoder stays in eval mode.

        Parameters
        ----------
        mode : bool, default=True
            Training (True) or evaluation (False) mode.

        Returns
        -------
        self : MultiLabelTextModule
            This module.
        """
        if not self.freeze_encoder or not isinstance(mode, bool):
            return super().train(mode)  # which also rejects a mode that is not a bool
        # A frozen encoder is a fixed feature extractor: no dropout in it. Setting the flag of
        # each of its layers costs several times finding them all unset, as they usually are.
        self.training = mode
        for name, child in self.named_children():
            if name != "encoder":
                child.train(mode)
        if any(layer.training for layer in self.encoder.modules()):
            self.encoder.eval()
        return self

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled vector of each text.

        Parameters
        ----------
        input_ids, attention_mask : torch.Tensor of shape (batch, length)
            Token ids and the mask of real (1) and padding (0) tokens.

        Returns
        -------
        pooled : torch.Tensor of shape (batch, hidden_size)
            What ``pooling`` makes of each text's token states.
        """
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

    def window_outputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of each window and, for attention aggregation, its scores.

        Parameters
        ----------
        input_ids, attention_mask : torch.Tensor of shape (n_windows, length)
            The windows' token ids and masks.

        Returns
        -------
        logits : torch.Tensor of shape (n_windows, n_labels)
            The head's raw logits of each window.
        scores : torch.Tensor of shape (n_windows, n_labels) or None
            None unless ``chunk_aggregation="attention"``.
        """
        pooled = self.pool(input_ids, attention_mask)
        scores = self.window_scorer(pooled) if self.window_scorer is not None else None
        return self.head(pooled), scores

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        doc_index: torch.Tensor | None = None,
        **_: object,
    ) -> torch.Tensor:
        """Logits per row, or per document when rows are windows of documents.

        Parameters
        ----------
        input_ids, attention_mask : torch.Tensor of shape (n_rows, length)
            Token ids and the mask of real (1) and padding (0) tokens.
        doc_index : torch.Tensor of shape (n_rows,), optional
            The document of each row when rows are windows of longer texts;
            the windows of a document are combined by ``chunk_aggregation``.
        **_
            Other batch entries (such as ``token_type_ids``), ignored.

        Returns
        -------
        logits : torch.Tensor of shape (n_rows, n_labels) or (n_documents, n_labels)
            One raw logit per label; ``torch.sigmoid`` gives the probabilities.
        """
        if doc_index is None:
            return self.head(self.pool(input_ids, attention_mask))
        logits, scores = self.window_outputs(input_ids, attention_mask)
        n_docs = int(doc_index.max().item()) + 1 if len(doc_index) else 0
        return aggregate_windows(self.chunk_aggregation or "max", logits, doc_index, n_docs, scores)


class HeadOnly(nn.Module):
    """The head alone, fed pooled features: trains a frozen-encoder model cheaply.

    It shares its parameters with the full module's ``head``.
    """

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor, **_: object) -> torch.Tensor:
        return self.head(features)
