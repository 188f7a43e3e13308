"""GoEmotions (Demszky et al., ACL 2020): 28 emotion labels on Reddit comments."""

from __future__ import annotations

import csv
import gzip
import io
from importlib import resources

import numpy as np

SPLITS = ("train", "dev", "test")


def _data_file(name: str):
    return resources.files(__package__) / "data" / name


def load_goemotions(split: str = "train") -> tuple[list[str], np.ndarray, list[str]]:
    """Load one official split of GoEmotions, shipped with the package.

    GoEmotions has 58k English Reddit comments, each labelled with one or
    more of 28 classes (27 emotions and neutral). License: Apache-2.0.
    Cite: Demszky et al., "GoEmotions: A Dataset of Fine-Grained Emotions",
    ACL 2020. The texts include offensive language.

    Parameters
    ----------
    split : {"train", "dev", "test"}, default="train"
        Which official split (43,410 / 5,426 / 5,427 texts).

    Returns
    -------
    texts : list of str
        The comments.
    Y : ndarray of shape (n_texts, 28), dtype uint8
        Binary label matrix.
    label_names : list of str
        The 28 label names, column j of ``Y`` is ``label_names[j]``.

    Examples
    --------
    >>> from sklearn_bert_multilabel import load_goemotions
    >>> texts, Y, names = load_goemotions("dev")
    >>> len(texts), Y.shape, names[:3]
    (5426, (5426, 28), ['admiration', 'amusement', 'anger'])
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}.")
    names = _data_file("goemotions_labels.txt").read_text(encoding="utf-8").split()
    raw = gzip.decompress(_data_file(f"goemotions_{split}.tsv.gz").read_bytes())
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8")), delimiter="\t"))
    texts = [row[0] for row in rows]
    Y = np.zeros((len(rows), len(names)), dtype=np.uint8)
    for i, row in enumerate(rows):
        Y[i, [int(j) for j in row[1].split(",")]] = 1
    return texts, Y, names
