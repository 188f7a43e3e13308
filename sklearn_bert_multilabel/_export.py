"""Exporting a fitted model to the wider ecosystem: Hugging Face folders and ONNX."""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import types
from pathlib import Path

import torch
from torch import nn

from ._model import head_layout, head_linears

logger = logging.getLogger(__name__)

#: Encoders whose ``*ForSequenceClassification`` computes
#: ``classifier(dropout(pooler_output))``.
POOLER_LINEAR_TYPES = frozenset({"bert", "albert", "ernie", "megatron-bert"})
#: Encoders whose ``*ForSequenceClassification`` computes
#: ``classifier(dropout(relu(pre_classifier(first token state))))``.
CLS_MLP_TYPES = frozenset({"distilbert"})
#: What ``predict`` applies, as the estimator's ``_check_export_params`` returns it: the
#: thresholds (None for ``threshold="auto"`` with nothing tuned), ``min_labels``, ``max_labels``.
DecisionRule = tuple[list[float] | None, int, int | None]
#: Text used to check that an exported model computes what the estimator does.
PROBE_TEXTS = ("a short probe text", "a second, slightly longer probe text for the check")


def _unsupported(estimator, model_type: str) -> ValueError:
    return ValueError(
        f"export_pretrained cannot express this model as a standard Hugging Face "
        f"AutoModelForSequenceClassification: encoder type {model_type!r}, "
        f"pooling={estimator.module_.pooling!r}, "
        f"hidden_layer_sizes={head_layout(estimator.module_.head)[0]!r}. "
        "The standard classes compute a BERT-style encoder's pooler output followed by one linear "
        f"layer (encoder types {sorted(POOLER_LINEAR_TYPES)}: fit with pooling='pooler' and "
        "hidden_layer_sizes=()), or DistilBERT's first-token state through one hidden layer of its "
        "own width (pooling='cls', hidden_layer_sizes=(dim,)). Any model can be saved with "
        "clf.save(path) or exported with clf.export_onnx(path)."
    )


def _new_folder(path: str | os.PathLike) -> Path:
    from ._persistence import output_folder

    target = output_folder(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"path={os.fspath(path)!r} exists and is not an empty folder; choose a new folder.")
    return target


def build_pretrained(estimator):
    """The estimator's model as a ``*ForSequenceClassification`` instance, on the CPU."""
    from transformers import AutoModelForSequenceClassification

    module = estimator.module_
    if module.chunk_aggregation is not None:
        raise ValueError(
            "export_pretrained cannot express long_text='chunk': the standard sequence-classification "
            "classes read one window per text. Use clf.save(path) for this model."
        )
    config = copy.deepcopy(module.encoder.config)
    model_type = getattr(config, "model_type", "")
    linears = head_linears(module.head)
    hidden = head_layout(module.head)[0]  # as fitted: set_params after fit does not change it
    if model_type in POOLER_LINEAR_TYPES and module.pooling == "pooler" and len(linears) == 1:
        classifier_layers = {"classifier": linears[0]}
    elif (
        model_type in CLS_MLP_TYPES
        and module.pooling == "cls"
        and len(linears) == 2
        and hidden == (config.hidden_size,)
    ):
        classifier_layers = {"pre_classifier": linears[0], "classifier": linears[1]}
    else:
        raise _unsupported(estimator, model_type)

    names = [str(n) for n in estimator.label_names_]
    config.num_labels = estimator.n_labels_
    config.problem_type = "multi_label_classification"
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    config.architectures = None
    model = AutoModelForSequenceClassification.from_config(config)
    base = getattr(model, model.base_model_prefix)
    base.load_state_dict({k: v.detach().cpu() for k, v in module.encoder.state_dict().items()})
    for name, layer in classifier_layers.items():
        getattr(model, name).load_state_dict({k: v.detach().cpu() for k, v in layer.state_dict().items()})
    model.config.architectures = [type(model).__name__]
    model.eval()
    _check_same_logits(estimator, lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits)
    return model


def _check_same_logits(estimator, forward) -> None:
    """Raise when ``forward`` does not compute the estimator's logits on probe texts."""
    module = estimator.module_
    was_training = module.training
    module.eval()
    try:
        for inputs in _example_batches(estimator):
            device = next(module.parameters()).device
            with torch.inference_mode():
                ours = module(**{k: v.to(device) for k, v in inputs.items()}).float().cpu()
                theirs = forward(inputs["input_ids"], inputs["attention_mask"]).float()
            if not torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4):
                raise RuntimeError(
                    "the exported model's logits differ from the estimator's (largest difference "
                    f"{(ours - theirs).abs().max().item():.2e}); please report this as a bug."
                )
    finally:
        module.train(was_training)


def export_pretrained(estimator, path: str | os.PathLike, rule: DecisionRule) -> Path:
    """Write ``estimator`` as a standard Hugging Face sequence-classification folder, with
    ``rule`` (the estimator's checked thresholds and bounds) in ``labels.json``."""
    from ._persistence import staged_folder
    from ._pretrained import _progress_bars

    target = _new_folder(path)
    model = build_pretrained(estimator)
    with staged_folder(target) as staging:
        with _progress_bars(False):
            model.save_pretrained(str(staging))
        # A BERT tokenizer beside a DistilBERT model would give token_type_ids, which a
        # pipeline passes on and the model refuses.
        _save_tokenizer(estimator, staging, inputs=inspect.signature(model.forward).parameters)
        # The pipeline gives probabilities; the thresholds and bounds that predict applies to them.
        _write_label_meta(estimator, staging, *rule)
    logger.info("exported %s to %s", type(model).__name__, target)
    return target


def _save_tokenizer(estimator, folder: Path, *, inputs) -> None:
    """Save the estimator's tokenizer to ``folder`` as the exported model reads text.

    ``truncation=True`` then cuts at the estimator's ``max_length``, and the
    tokenizer gives only those of its inputs that are in ``inputs``. A copy
    is saved: the fitted tokenizer, which predictions may be using in other
    threads, is left as it is.
    """
    tokenizer = copy.deepcopy(estimator.tokenizer_)
    tokenizer.model_max_length = estimator.max_length
    names = [name for name in tokenizer.model_input_names if name in inputs]
    # A forward whose signature does not name input_ids (only *args, **kwargs) says nothing.
    if "input_ids" in names and names != list(tokenizer.model_input_names):
        # transformers writes one or the other, depending on its version.
        tokenizer.model_input_names = names
        tokenizer.init_kwargs["model_input_names"] = names
    tokenizer.save_pretrained(str(folder))


def decide_labels(
    proba: torch.Tensor, thresholds: torch.Tensor, min_labels: int = 0, max_labels: int | None = None
) -> torch.Tensor:
    """:meth:`~.BertMultiLabelClassifier.predict`'s decision in torch operations that ONNX records.

    ``proba >= thresholds`` (compared in float64, as ``predict`` compares its
    float32 probabilities with float64 thresholds), then each row's number of
    labels brought within ``[min_labels, max_labels]`` as
    :func:`~._thresholds.bound_labels` does: the same order, ties to the first
    column. A label's place in that order is counted, not sorted for (how
    many labels come before it), so the result does not depend on how an
    ONNX runtime breaks ties in a sort. That takes ``n_labels**2`` comparisons
    per text, and is done only when a bound can act. Returns int64 0/1.
    """
    above = proba.double() >= thresholds
    n_labels = proba.shape[-1]
    if max_labels is not None and max_labels >= n_labels:
        max_labels = None  # no text can have more
    if min_labels <= 0 and max_labels is None:
        return above.long()
    index = torch.arange(n_labels, device=proba.device)
    earlier = index.unsqueeze(1) < index.unsqueeze(0)  # [i, j]: column i is before column j
    counts = above.sum(dim=1, keepdim=True)

    def first(key: torch.Tensor, k: int) -> torch.Tensor:
        """The ``k`` columns of each row that come first by ascending ``key``, ties by column."""
        before = (key.unsqueeze(2) < key.unsqueeze(1)) | ((key.unsqueeze(2) == key.unsqueeze(1)) & earlier)
        return before.sum(dim=1) < k

    # Logical operations rather than a Where of booleans, which onnxruntime does not implement.
    infinity = torch.full_like(proba, float("inf"))
    labels = above
    if max_labels is not None:
        # The predicted labels from the most probable, then the others.
        long = counts > max_labels
        kept = first(torch.where(above, -proba, infinity), max_labels)
        labels = (labels & ~long) | (kept & long)
    if min_labels > 0:
        # A predicted label first, then the others from the most probable.
        short = counts < min_labels
        added = first(torch.where(above, -infinity, -proba), min_labels)
        labels = (labels & ~short) | (added & short)
    return labels.long()


class _OnnxGraph(nn.Module):
    """(input_ids, attention_mask) -> (logits, probabilities[, labels]): what ONNX records.

    With ``thresholds``, the graph also gives ``labels``, :meth:`predict`'s
    decision (see :func:`decide_labels`).
    """

    def __init__(
        self,
        module: nn.Module,
        thresholds: list[float] | None = None,
        min_labels: int = 0,
        max_labels: int | None = None,
    ):
        super().__init__()
        self.module = module
        self.decides = thresholds is not None
        if self.decides:
            self.register_buffer("thresholds", torch.tensor(thresholds, dtype=torch.float64))
        self.min_labels = min_labels
        self.max_labels = max_labels

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        logits = self.module(input_ids=input_ids, attention_mask=attention_mask).float()
        proba = torch.sigmoid(logits)
        if not self.decides:
            return logits, proba
        return logits, proba, decide_labels(proba, self.thresholds, self.min_labels, self.max_labels)


#: The inputs of the exported ONNX graph, which its tokenizer gives.
ONNX_INPUTS = ("input_ids", "attention_mask")


def export_onnx(
    estimator, path: str | os.PathLike, rule: DecisionRule, *, opset_version: int | None = None
) -> Path:
    """Write ``model.onnx``, the tokenizer and ``labels.json`` to the folder ``path``; ``rule``
    (the estimator's checked thresholds and bounds) is applied in the graph."""
    missing = [name for name in ("onnx", "onnxscript") if _missing(name)]
    if missing:
        raise ImportError(
            f"export_onnx needs {' and '.join(missing)}: pip install 'sklearn-bert-multilabel[onnx]'."
        )
    import warnings

    from ._persistence import staged_folder

    if estimator.module_.chunk_aggregation is not None:
        raise ValueError(
            "export_onnx exports the graph of one window per text; with long_text='chunk' the windows "
            "are combined outside that graph, which the export does not cover. Use clf.save(path)."
        )
    thresholds, min_labels, max_labels = rule
    target = _new_folder(path)
    module = copy.deepcopy(estimator.module_).to("cpu").float()
    graph = _OnnxGraph(module, thresholds, min_labels, max_labels).eval()
    outputs = ["logits", "probabilities"] + (["labels"] if thresholds is not None else [])
    example = next(_example_batches(estimator))
    with staged_folder(target) as staging:
        axes = _dynamic_axes()
        exporter_log = logging.getLogger("torch.onnx")
        level = exporter_log.level
        exporter_log.setLevel(logging.ERROR)  # the exporter's notes on optional operators
        try:
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore", FutureWarning)
                warnings.filterwarnings("ignore", message=".*axis name.*", category=UserWarning)
                program = torch.onnx.export(
                    graph,
                    (example["input_ids"], example["attention_mask"]),
                    input_names=list(ONNX_INPUTS),
                    output_names=outputs,
                    dynamic_shapes=(axes, axes),
                    opset_version=opset_version,
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                )
        except (ImportError, AttributeError) as exc:
            if isinstance(exc, AttributeError) and not isinstance(
                getattr(exc, "obj", None), types.ModuleType
            ):
                raise
            # A module without a name the exporter uses: the ONNX packages are older than this
            # torch needs (say onnxscript without the module of this torch's release).
            raise ImportError(
                f"torch {torch.__version__}'s ONNX exporter cannot use the installed ONNX packages "
                f"({_installed('onnx', 'onnxscript', 'onnx-ir', 'ml-dtypes')}): {type(exc).__name__}: "
                f"{exc}. Upgrade them: pip install -U onnx onnxscript onnx-ir ml-dtypes."
            ) from exc
        finally:
            exporter_log.setLevel(level)
        program.save(str(staging / "model.onnx"))
        _save_tokenizer(estimator, staging / "tokenizer", inputs=ONNX_INPUTS)
        _write_label_meta(
            estimator, staging, thresholds, min_labels, max_labels, inputs=list(ONNX_INPUTS), outputs=outputs
        )
    logger.info("exported ONNX model to %s", target)
    return target


def _dynamic_axes() -> dict:
    """The dynamic axes of both graph inputs: any batch size and any text length.

    Both are left to the exporter to bound (``Dim.DYNAMIC``) rather than given a
    range, which torch 2.6 and 2.7 refuse for BERT-style encoders: slicing their
    position buffers adds a guard (length not equal to the buffer's) that no
    declared range satisfies, although the exported slice computes the same
    for every length. Names given as strings (torch 2.7 and later) are dynamic
    and also name the graph's axes "batch" and "tokens"; torch 2.6 takes only
    ``Dim.DYNAMIC``, and its graph's axes get generated names.
    """
    from ._pretrained import major_minor

    if major_minor(torch.__version__) >= (2, 7):
        return {0: "batch", 1: "tokens"}
    return {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}


def _example_batches(estimator):
    """The probe texts, tokenised as the estimator reads them, in batches of 8."""
    from ._text import iter_text_batches

    for _, inputs in iter_text_batches(
        estimator.tokenizer_, list(PROBE_TEXTS), estimator.max_length, 8, estimator._pad_id
    ):
        yield inputs


def _write_label_meta(
    estimator, folder: Path, thresholds: list[float] | None, min_labels: int, max_labels: int | None, **more
) -> None:
    """Write ``labels.json``: label names, a :data:`DecisionRule`'s values, ``max_length``, ``more``."""
    meta = {
        "label_names": [str(n) for n in estimator.label_names_],
        "thresholds": thresholds,
        "min_labels": min_labels,
        "max_labels": max_labels,
        "max_length": int(estimator.max_length),
        **more,
    }
    (folder / "labels.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _installed(*names: str) -> str:
    """``"name version"`` of each distribution, or ``"name not installed"``."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def _missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None
