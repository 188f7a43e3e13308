"""Saving a fitted estimator as plain files, and loading it back without pickle.

A saved model is a folder::

    estimator.json        parameters, fitted state, versions, SHA-256 of every other file
    model.safetensors     encoder, pooling and head weights
    encoder/config.json   the encoder's Hugging Face configuration
    tokenizer/...         the tokenizer's files (``save_pretrained``)

Loading reads JSON and safetensors only: no pickle, no ``torch.load``, no
code from the folder. Every file is checked against its recorded digest
before anything is built, so a truncated or edited folder fails with a
clear error instead of giving a partial model.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._validation import (
    Problems,
    by_label,
    caller_stacklevel,
    check_device,
    device_here,
    is_number,
    is_param_group_pairs,
)
from ._version import __version__

logger = logging.getLogger(__name__)

#: Version of the folder layout. A reader accepts this version and older ones.
FORMAT_VERSION = 1
FORMAT_NAME = "sklearn-bert-multilabel"
MANIFEST = "estimator.json"
WEIGHTS = "model.safetensors"
ENCODER_DIR = "encoder"
TOKENIZER_DIR = "tokenizer"
#: Parameters stored as tuples, which JSON turns into lists.
TUPLE_PARAMS = ("hidden_layer_sizes",)
#: Parameters that may be given per label name (a dict or a labelled pandas Series).
PER_LABEL_PARAMS = ("threshold", "pos_weight")


class ModelFileError(ValueError):
    """A saved model folder is missing, damaged, edited or from an incompatible version."""


# ------------------------------------------------------------------ parameters
def _encode_value(value: Any) -> tuple[bool, Any]:
    """(ok, JSON value) for one parameter value; ok is False when JSON cannot hold it."""
    if value is None or isinstance(value, (bool, str)):
        return True, value
    if isinstance(value, np.bool_):
        return True, bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        number = value.item() if isinstance(value, np.generic) else value
        if isinstance(number, float) and not np.isfinite(number):
            return False, None
        return True, number
    if isinstance(value, os.PathLike):
        return True, os.fspath(value)
    if hasattr(value, "to_numpy") and getattr(value, "ndim", None) == 1:  # a Series by position
        value = value.to_numpy()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.ndim == 1:
        return True, {"ndarray": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, (list, tuple)):
        items = [_encode_value(v) for v in value]
        if all(ok for ok, _ in items) and not any(isinstance(v, dict) for _, v in items):
            return True, [v for _, v in items]
        return False, None
    if isinstance(value, type) and issubclass(value, torch.optim.Optimizer):
        if value.__module__.startswith("torch.optim"):
            return True, {"class": f"{value.__module__}:{value.__qualname__}"}
        return False, None
    location = getattr(value, "location", None)  # joblib.Memory
    if type(value).__name__ == "Memory" and isinstance(location, (str, os.PathLike)):
        return True, os.fspath(location)
    return False, None


def _decode_value(name: str, value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"by_label"} and isinstance(value["by_label"], dict):
            return dict(value["by_label"])
        if set(value) == {"param_groups"} and is_param_group_pairs(value["param_groups"]):
            # Lists back to tuples, as options such as betas are given.
            return [
                (pattern, {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
                for pattern, options in value["param_groups"]
            ]
        if set(value) == {"ndarray", "dtype"}:
            return np.asarray(value["ndarray"], dtype=np.dtype(value["dtype"]))
        if set(value) == {"class"}:
            module_name, _, qualname = str(value["class"]).partition(":")
            # Only optimizer classes of torch itself are ever imported.
            if not (module_name == "torch.optim" or module_name.startswith("torch.optim.")):
                raise ModelFileError(f"parameter {name!r} names {value['class']!r}, not a torch optimizer.")
            obj = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part, None)
            if not (isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)):
                raise ModelFileError(f"parameter {name!r} names {value['class']!r}, not a torch optimizer.")
            return obj
        raise ModelFileError(f"parameter {name!r} has an unreadable value {value!r}.")
    if name in TUPLE_PARAMS and isinstance(value, list):
        return tuple(value)
    return value


def _encode_by_label(named: dict[str, Any]) -> tuple[bool, Any]:
    """(ok, JSON value) for a per-label parameter given by label name."""
    items = {key: _encode_value(item) for key, item in named.items()}
    if all(ok and is_number(number) for ok, number in items.values()):
        return True, {"by_label": {key: number for key, (_, number) in items.items()}}
    return False, None


def _encode_param_groups(groups: Any) -> tuple[bool, Any]:
    """(ok, JSON value) for ``optimizer__param_groups``: (pattern, options) pairs whose options
    JSON can hold (numbers, booleans, strings and lists of them, such as ``betas``)."""
    if groups is None:
        return True, None
    if not is_param_group_pairs(groups):
        return False, None
    pairs = []
    for item in groups:
        if not all(isinstance(key, str) for key in item[1]):
            return False, None
        options = {key: _encode_value(value) for key, value in item[1].items()}
        if not all(ok and not isinstance(value, dict) for ok, value in options.values()):
            return False, None
        pairs.append([item[0], {key: value for key, (_, value) in options.items()}])
    return True, {"param_groups": pairs}


def _encode_params(params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    encoded, dropped = {}, []
    for name, value in params.items():
        named = by_label(value) if name in PER_LABEL_PARAMS else None
        if name == "optimizer__param_groups":
            ok, json_value = _encode_param_groups(value)
        else:
            ok, json_value = _encode_value(value) if named is None else _encode_by_label(named)
        if ok:
            encoded[name] = json_value
        else:
            dropped.append(name)
    return encoded, dropped


# --------------------------------------------------------------------- files
def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _optional_list(value) -> list | None:
    return None if value is None else np.asarray(value, dtype=np.float64).tolist()


def output_folder(path: str | os.PathLike, error: type[Exception] = ValueError) -> Path:
    """``path`` as the absolute folder that :func:`staged_folder` writes, links resolved.

    The folder is written beside its place and renamed into it, so ``path``
    can be neither empty nor the working directory or a folder above it
    (renaming those away would leave the process in a deleted folder).
    Raises ``error`` for those.
    """
    text = os.fspath(path)
    if not text:
        raise error("path='' is empty; give a folder path, such as 'model'.")
    target = Path(text).expanduser().resolve()
    cwd = Path.cwd()
    if target == cwd or target in cwd.parents:
        where = "the working directory" if target == cwd else "a folder above the working directory"
        raise error(
            f"path={text!r} is {where}, which cannot be written: the model's folder is written "
            f"whole and then moved into place. Give a folder inside it, such as "
            f"{os.path.join(text, 'model')!r}."
        )
    return target


@contextlib.contextmanager
def staged_folder(target: Path):
    """Yield a new temporary folder beside ``target``; on success it replaces ``target``.

    The folder is renamed into place only once complete and removed on any
    failure, so no reader ever sees a partly written model or checkpoint.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        _replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


_jitter = random.Random()  # its own generator: the caller's random state is not touched


def _replace_folder(staging: Path, target: Path, attempts: int = 50) -> None:
    """Rename ``staging`` to ``target``, replacing the folder there.

    A folder already at ``target`` is first renamed away whole, then removed,
    so a reader sees the old folder or the new one, never one half deleted.
    Another process may write the same folder at the same moment (identical
    fits of a parallel search write the same checkpoint): when its folder
    takes the place first, that one is moved away in turn and the rename
    retried, so the last writer wins instead of failing.
    """
    for attempt in range(attempts):
        try:
            os.replace(staging, target)  # succeeds when nothing (or an empty folder) is there
            return
        except OSError as exc:  # a folder with files is there (Windows: any folder)
            if attempt == attempts - 1 or exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EACCES):
                raise
        if attempt:  # another writer filled the place again: get out of step with it
            time.sleep(_jitter.uniform(0, 0.001 * attempt))
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        try:
            os.replace(target, old)
        except FileNotFoundError:  # another writer moved it first
            pass
        else:
            shutil.rmtree(old, ignore_errors=True)


def save_estimator(estimator, path: str | os.PathLike) -> Path:
    """Write a fitted ``estimator`` to the folder ``path`` (see the module docstring)."""
    from safetensors.torch import save_model

    target = output_folder(path, ModelFileError)
    if target.exists() and not target.is_dir():
        raise ModelFileError(f"path={os.fspath(path)!r} exists and is not a folder; choose a folder path.")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).is_file():
        raise ModelFileError(
            f"path={os.fspath(path)!r} is a folder with other files in it; save into a new or empty "
            "folder (a folder holding a saved model is replaced)."
        )
    # The cache folder belongs to this machine and to model selection; a loaded model that
    # kept it would write the logits and features of every prediction call into it.
    params, dropped = _encode_params(dict(estimator.get_params(deep=False), memory=None))
    if "threshold" in dropped:  # an array-like JSON cannot hold: the thresholds it gives
        params["threshold"] = _encode_value(estimator.thresholds_)[1]
        dropped.remove("threshold")
    if dropped:
        warnings.warn(
            f"these parameters cannot be written as JSON and are saved as their defaults: "
            f"{', '.join(sorted(dropped))}. Predictions are unaffected; set them again before "
            "refitting the loaded model.",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
    from ._model import head_layout

    module = estimator.module_
    hidden_layer_sizes, dropout = head_layout(module.head)
    with staged_folder(target) as staging:
        cpu_module = module if _on_cpu(module) else _cpu_copy(module)
        save_model(cpu_module, str(staging / WEIGHTS), metadata={"format": FORMAT_NAME})
        module.encoder.config.save_pretrained(str(staging / ENCODER_DIR))
        estimator.tokenizer_.save_pretrained(str(staging / TOKENIZER_DIR))
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "torch_version": torch.__version__,
            "transformers_version": _transformers_version(),
            "params": params,
            "fitted": {
                "n_labels": int(estimator.n_labels_),
                "label_names": [str(n) for n in estimator.label_names_],
                "tuned_thresholds": _optional_list(estimator.tuned_thresholds_),
                "pos_weight": _optional_list(estimator.pos_weight_),
                "device": str(estimator.device_),
                "cache_key": estimator.cache_key_,
                "feature_source": getattr(estimator, "_feature_source", None),
                "history": _history_json(estimator.history_),
            },
            "module": {
                "pooling": module.pooling,
                # The fitted head's, which set_params after fit does not change.
                "hidden_layer_sizes": list(hidden_layer_sizes),
                "dropout": dropout,
                "freeze_encoder": bool(module.freeze_encoder),
                "chunk_aggregation": module.chunk_aggregation,
            },
            "files": {p.relative_to(staging).as_posix(): _digest(p) for p in files},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    logger.info("saved model to %s", target)
    return target


def _on_cpu(module: torch.nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in list(module.parameters()) + list(module.buffers()))


def _cpu_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).to("cpu")


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _history_json(history) -> list:
    from ._estimator import _jsonable

    return _jsonable(history) if history is not None else []


# ---------------------------------------------------------------------- load
def _read_manifest(folder: Path) -> dict:
    if not folder.is_dir():
        raise ModelFileError(f"no saved model at {os.fspath(folder)!r}: no such folder.")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ModelFileError(
            f"{os.fspath(folder)!r} is not a saved model: it has no {MANIFEST}. Save one with "
            "clf.save(path); a Hugging Face folder is loaded with "
            "BertMultiLabelClassifier(model_name=path) instead."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            f"{MANIFEST} in {os.fspath(folder)!r} is damaged ({exc}); save the model again."
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{MANIFEST} in {os.fspath(folder)!r} is not a {FORMAT_NAME} model description.")
    version = manifest.get("format_version")
    saved_with = manifest.get("library_version", "unknown")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"this model was saved by {FORMAT_NAME} {saved_with} in format version {version!r}, which "
            f"{FORMAT_NAME} {__version__} cannot read (it reads format versions up to {FORMAT_VERSION}). "
            f"Upgrade: pip install -U 'sklearn-bert-multilabel>={saved_with}'."
        )
    if saved_with != __version__:
        warnings.warn(
            f"this model was saved by {FORMAT_NAME} {saved_with} and is loaded by {__version__}; the "
            "format is compatible, but results may differ slightly. To silence this, save it again "
            f"with this version, or install sklearn-bert-multilabel=={saved_with}.",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
    for key, kind in (("params", dict), ("fitted", dict), ("module", dict), ("files", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ModelFileError(f"{MANIFEST} in {os.fspath(folder)!r} lacks a valid {key!r} section.")
    return manifest


def _check_files(folder: Path, files: dict[str, str]) -> None:
    problems = []
    for required in (WEIGHTS, f"{ENCODER_DIR}/config.json"):
        if required not in files:
            problems.append(f"{required} is not listed in {MANIFEST}")
    for name, expected in files.items():
        path = (folder / name).resolve()
        if folder.resolve() not in path.parents:
            problems.append(f"{name!r} points outside the folder")
        elif not path.is_file():
            problems.append(f"{name} is missing")
        elif _digest(path) != expected:
            problems.append(f"{name} does not match its recorded SHA-256 (truncated or edited)")
    if problems:
        raise ModelFileError(
            f"the saved model in {os.fspath(folder)!r} is damaged: " + "; ".join(problems) + ". "
            "Nothing was loaded; save the model again from the fitted estimator."
        )


def _fitted_value(fitted: dict, key: str, n_labels: int) -> np.ndarray | None:
    value = fitted.get(key)
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (n_labels,) or not np.all(np.isfinite(array)):
        raise ModelFileError(f"{MANIFEST}: fitted {key!r} must hold {n_labels} finite numbers.")
    return array


def load_estimator(cls, path: str | os.PathLike, *, device: str | None = None):
    """Build a fitted ``cls`` from a folder written by :func:`save_estimator`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model
    from skorch.history import History
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from ._model import MultiLabelTextModule

    if device is not None:
        problems = Problems()
        device = check_device(device, problems)
        problems.raise_if_any()
    folder = Path(path).expanduser()
    manifest = _read_manifest(folder)
    _check_files(folder, manifest["files"])

    known = set(cls().get_params(deep=False))
    params = {}
    for name, value in manifest["params"].items():
        if name not in known and "__" not in name:
            raise ModelFileError(f"{MANIFEST} has an unknown parameter {name!r}.")
        params[name] = _decode_value(name, value)
    fitted, spec = manifest["fitted"], manifest["module"]
    n_labels = fitted.get("n_labels")
    names = fitted.get("label_names")
    if not isinstance(n_labels, int) or n_labels < 1:
        raise ModelFileError(f"{MANIFEST}: fitted 'n_labels' must be a positive integer.")
    if not (isinstance(names, list) and len(names) == n_labels and all(isinstance(n, str) for n in names)):
        raise ModelFileError(f"{MANIFEST}: fitted 'label_names' must be {n_labels} strings.")

    try:
        config = AutoConfig.from_pretrained(str(folder / ENCODER_DIR))
        encoder = AutoModel.from_config(config)
        tokenizer = AutoTokenizer.from_pretrained(str(folder / TOKENIZER_DIR))
        module = MultiLabelTextModule(
            encoder,
            n_labels,
            pooling=spec["pooling"],
            hidden_layer_sizes=tuple(spec["hidden_layer_sizes"]),
            dropout=float(spec["dropout"]),
            freeze_encoder=bool(spec["freeze_encoder"]),
            chunk_aggregation=spec.get("chunk_aggregation"),
        )
        load_model(module, str(folder / WEIGHTS), strict=True, device="cpu")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise ModelFileError(
            f"could not rebuild the model saved in {os.fspath(folder)!r} ({type(exc).__name__}: {exc})."
        ) from exc

    estimator = cls(**params)
    if device is None:
        saved_device = str(fitted.get("device", "cpu"))
        device = device_here(saved_device)
        if device != saved_device:
            logger.info("model saved on %s loaded on %s", saved_device, device)
    estimator._set_model(module.eval(), tokenizer, device, names)
    estimator.tuned_thresholds_ = _fitted_value(fitted, "tuned_thresholds", n_labels)
    estimator.pos_weight_ = _fitted_value(fitted, "pos_weight", n_labels)
    estimator.cache_key_ = fitted.get("cache_key") if isinstance(fitted.get("cache_key"), str) else None
    source = fitted.get("feature_source")
    estimator._feature_source = source if isinstance(source, str) and spec.get("freeze_encoder") else None
    estimator.history_ = History(fitted.get("history") or [])
    return estimator
