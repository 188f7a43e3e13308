"""The shipped GoEmotions loader."""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources

import numpy as np
import pytest

from sklearn_bert_multilabel import load_goemotions

SHA256 = {
    "train": "1c254a142be5c00e80d819b9ae1bbd36d94b2eeb8f4b1271846508d57e57d9c5",
    "dev": "575489c079c9de1097062a01738f998590d6b7ead66dd1c9fd1d2ba01fd8bc62",
    "test": "0587b2dd8b27b97352adbfc3fb083d46005c8946657fdc2b1ca8b1cc7f1f8be4",
}


@pytest.mark.parametrize("split, n", [("train", 43410), ("dev", 5426), ("test", 5427)])
def test_splits(split, n):
    texts, Y, names = load_goemotions(split)
    assert len(texts) == n and Y.shape == (n, 28) and len(names) == 28
    assert Y.dtype == np.uint8 and set(np.unique(Y)) == {0, 1}
    assert (Y.sum(axis=1) >= 1).all()
    assert all(isinstance(t, str) and t for t in texts)
    data = resources.files("sklearn_bert_multilabel.datasets") / "data" / f"goemotions_{split}.tsv.gz"
    assert hashlib.sha256(gzip.decompress(data.read_bytes())).hexdigest() == SHA256[split]


def test_label_statistics_match_the_published_description():
    _, Y, names = load_goemotions("train")
    counts = dict(zip(names, Y.sum(axis=0).tolist(), strict=True))
    assert counts["neutral"] == 14219 and counts["grief"] == 77 and counts["pride"] == 111
    assert 1.17 < Y.sum(axis=1).mean() < 1.19


def test_bad_split():
    with pytest.raises(ValueError, match="split must be one of"):
        load_goemotions("validation")
