"""Long texts: windows of max_length tokens, combined per text, in fit and predict."""

from __future__ import annotations

import resource
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from sklearn_bert_multilabel import BertMultiLabelClassifier, InvalidInputError, LongTextWarning
from sklearn_bert_multilabel._model import aggregate_windows
from sklearn_bert_multilabel._text import window_text_ids

# The long documents here carry one label: whether a word appears near their end.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn_bert_multilabel.SingleLabelWarning")

FILLER = "the a and or but is was it this that today yesterday really very so not quite up down".split()


def long_documents(n: int, seed: int, length: int = 90):
    """Texts of ``length`` neutral words; label 1 iff "goal scored" is among the last 5 words."""
    rng = np.random.default_rng(seed)
    texts, Y = [], []
    for _ in range(n):
        words = list(rng.choice(FILLER, size=length))
        y = int(rng.integers(0, 2))
        if y:
            position = length - int(rng.integers(2, 5))
            words[position : position + 2] = ["goal", "scored"]
        texts.append(" ".join(words))
        Y.append([y])
    return texts, np.asarray(Y)


@pytest.fixture(scope="module")
def chunk_params(tiny_model_dir):
    return dict(
        model_name=tiny_model_dir,
        max_length=24,
        stride=6,
        max_epochs=10,
        batch_size=32,
        lr=3e-3,
        train_split=None,
        random_state=0,
    )


@pytest.fixture(scope="module")
def chunked(chunk_params):
    X, Y = long_documents(128, seed=0)
    return BertMultiLabelClassifier(long_text="chunk", **chunk_params).fit(X, Y)


def test_windows_cover_the_text_with_the_given_overlap(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = " ".join(FILLER * 3)  # 60 one-token words
    (windows,), cut = window_text_ids(tokenizer, [text], max_length=12, stride=3, max_chunks=None)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert cut == 0
    assert all(
        len(w) <= 12 and w[0] == tokenizer.cls_token_id and w[-1] == tokenizer.sep_token_id for w in windows
    )
    inner = [w[1:-1].tolist() for w in windows]
    assert inner[0] == ids[:10] and inner[-1][-1] == ids[-1]  # starts at the start, reaches the end
    for a, b in zip(inner, inner[1:], strict=False):
        assert a[-3:] == b[:3]  # neighbours share `stride` tokens
    (short,), _ = window_text_ids(tokenizer, ["   "], max_length=12, stride=3, max_chunks=None)
    assert [w.tolist() for w in short] == [[tokenizer.cls_token_id, tokenizer.sep_token_id]]


def test_a_label_at_the_end_is_learned_with_chunks_not_with_truncation(chunk_params, chunked):
    X_test, Y_test = long_documents(96, seed=1)
    truncated = BertMultiLabelClassifier(long_text="truncate", **chunk_params).fit(
        *long_documents(128, seed=0)
    )
    chunk_f1 = f1_score(Y_test, chunked.predict(X_test))
    truncate_f1 = f1_score(Y_test, truncated.predict(X_test))
    assert chunk_f1 > 0.9, chunk_f1
    assert truncate_f1 < 0.75, truncate_f1  # the end of the text is never seen


@pytest.mark.parametrize("aggregation", ["max", "mean", "attention"])
def test_streamed_prediction_equals_all_windows_at_once(chunk_params, aggregation):
    X, Y = long_documents(40, seed=2, length=60)
    X = X[:20] + ["", "  ", "goal"] + X[20:]  # short and empty texts among long ones
    clf = BertMultiLabelClassifier(
        long_text="chunk", chunk_aggregation=aggregation, **{**chunk_params, "max_epochs": 1}
    ).fit(X, np.vstack([Y[:20], [[0], [0], [1]], Y[20:]]))
    streamed = clf.set_params(predict_batch_size=3).decision_function(X)  # windows of a text split up

    windows, _ = clf._windows(X)
    flat = [w for doc in windows for w in doc]
    width = max(len(w) for w in flat)
    ids = torch.zeros((len(flat), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, w in enumerate(flat):
        ids[i, : len(w)] = torch.from_numpy(w)
        mask[i, : len(w)] = 1
    doc_index = torch.from_numpy(np.repeat(np.arange(len(windows)), [len(w) for w in windows]))
    with torch.inference_mode():
        at_once = clf.module_(input_ids=ids, attention_mask=mask, doc_index=doc_index).numpy()
    np.testing.assert_allclose(streamed, at_once, rtol=0, atol=1e-5)


def test_output_order_is_preserved(chunked):
    X, _ = long_documents(30, seed=3)
    X = [x if i % 3 else x[:20] for i, x in enumerate(X)]  # mixed lengths, different window counts
    proba = chunked.predict_proba(X)
    order = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_allclose(chunked.predict_proba([X[i] for i in order]), proba[order], atol=1e-6)
    np.testing.assert_allclose(chunked.predict_proba([X[7]]), proba[7:8], atol=1e-6)


def test_short_and_blank_texts_are_handled_as_with_truncation(chunked):
    """A text that fits in one window gives the same logits in either mode."""
    texts = ["", "   ", "goal scored", "the a and"]
    chunk_logits = chunked.decision_function(texts)
    truncate_logits = BertMultiLabelClassifier.__new__(BertMultiLabelClassifier)
    truncate_logits.__dict__.update(chunked.__dict__)
    truncate_logits.long_text = "truncate"
    np.testing.assert_allclose(chunk_logits, truncate_logits.decision_function(texts), atol=1e-6)
    assert np.isfinite(chunk_logits).all()


def test_max_chunks_warns_with_the_count_of_cut_texts(chunk_params):
    X, Y = long_documents(16, seed=4)  # 90 words: 5 windows of 22 text tokens with stride 6
    X[3] = X[3][:30]
    clf = BertMultiLabelClassifier(long_text="chunk", max_chunks=2, **{**chunk_params, "max_epochs": 1})
    with pytest.warns(LongTextWarning, match="15 of 16 texts have more than max_chunks=2 windows") as record:
        clf.fit(X, Y)
    assert record[0].filename == __file__
    # However deep the calls that reach it, the warning names the caller's line.
    for call in (clf.predict, clf.predict_proba, clf.decision_function, lambda X: clf.score(X, Y[[0, 3]])):
        with pytest.warns(LongTextWarning, match="1 of 2 texts") as record:
            call([X[0], X[3]])
        assert record[0].filename == __file__, record[0].filename


def test_max_chunks_keeps_the_side_the_tokenizer_truncates_to(tiny_model_dir, tmp_path):
    """A tokenizer saved with truncation_side="left" keeps a text's end: its last windows."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "left"
    shutil.copytree(tiny_model_dir, folder)
    AutoTokenizer.from_pretrained(tiny_model_dir, truncation_side="left").save_pretrained(folder)
    text = "goal " + "the " * 40 + "bank"
    clf = BertMultiLabelClassifier(
        model_name=str(folder), long_text="chunk", max_length=12, stride=3, max_chunks=2, max_epochs=1
    )
    with pytest.warns(LongTextWarning, match=r"only their last \(the tokenizer truncates on the left\) 2 "):
        clf.fit([text, "a game"], [[1, 0], [0, 1]])
    (windows,), _ = clf._windows([text])
    words = [w for window in windows for w in clf.tokenizer_.convert_ids_to_tokens(window.tolist())]
    assert "bank" in words and "goal" not in words


@pytest.mark.skipif(not hasattr(resource, "getrusage"), reason="needs getrusage")
def test_a_one_megabyte_text_predicts_in_bounded_memory(chunked):
    text = " ".join(FILLER[i % len(FILLER)] for i in range(250_000))[:1_000_000]
    assert len(text) >= 999_000
    clf = chunked.set_params(max_chunks=None, predict_batch_size=256)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation and no cut warning
        proba = clf.predict_proba([text, "goal scored"])
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert proba.shape == (2, 1) and np.isfinite(proba).all()
    assert grown_mib < 400, grown_mib  # ~13,000 windows: flat outputs, not one padded tensor
    chunked.set_params(max_chunks=16, predict_batch_size=128)


def test_aggregations():
    logits = torch.tensor([[1.0, -2.0], [3.0, 0.0], [-1.0, 5.0]])
    doc_index = torch.tensor([0, 0, 1])
    np.testing.assert_allclose(aggregate_windows("max", logits, doc_index, 2), [[3.0, 0.0], [-1.0, 5.0]])
    np.testing.assert_allclose(aggregate_windows("mean", logits, doc_index, 2), [[2.0, -1.0], [-1.0, 5.0]])
    scores = torch.tensor([[0.0, 100.0], [0.0, -100.0], [7.0, 7.0]])
    attention = aggregate_windows("attention", logits, doc_index, 2, scores)
    np.testing.assert_allclose(attention, [[2.0, -2.0], [-1.0, 5.0]], atol=1e-5)


def test_invalid_long_text_parameters_are_reported_together(tiny_model_dir):
    clf = BertMultiLabelClassifier(
        model_name=tiny_model_dir, long_text="split", chunk_aggregation="sum", stride=-1, max_chunks=0
    )
    with pytest.raises(InvalidInputError) as info:
        clf.fit(["a b"], [[1]])
    message = str(info.value)
    for name in ("long_text", "chunk_aggregation", "stride", "max_chunks"):
        assert name in message
    too_wide = BertMultiLabelClassifier(model_name=tiny_model_dir, long_text="chunk", max_length=8, stride=6)
    with pytest.raises(InvalidInputError, match="stride=6 must be smaller than the 6 text tokens"):
        too_wide.fit(["a b"], [[1]])


def test_chunked_model_saves_and_loads(chunked, tmp_path):
    X, _ = long_documents(10, seed=5)
    chunked.save(tmp_path / "m")
    loaded = BertMultiLabelClassifier.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict_proba(X), chunked.predict_proba(X))
    with pytest.raises(ValueError, match="long_text='chunk'"):
        chunked.export_pretrained(tmp_path / "hf")


def test_chunk_aggregation_set_after_fit_is_used_by_predictions(chunk_params):
    X, Y = long_documents(40, seed=6, length=60)
    attention = BertMultiLabelClassifier(
        long_text="chunk", chunk_aggregation="attention", **{**chunk_params, "max_epochs": 1}
    ).fit(X, Y)
    learned = attention.decision_function(X)
    windows, _ = attention._windows(X)
    assert min(len(w) for w in windows) > 1  # every text has several windows to combine
    highest = attention.set_params(chunk_aggregation="max").decision_function(X)
    average = attention.set_params(chunk_aggregation="mean").decision_function(X)
    assert (average <= highest + 1e-6).all() and (average < highest - 1e-3).any()
    assert (learned <= highest + 1e-6).all() and not np.allclose(learned, average, atol=1e-4)
    np.testing.assert_allclose(
        attention.set_params(chunk_aggregation="attention").decision_function(X), learned, atol=1e-6
    )


def test_attention_after_a_fit_without_it_is_refused(chunk_params):
    X, Y = long_documents(16, seed=7, length=40)
    clf = BertMultiLabelClassifier(long_text="chunk", **{**chunk_params, "max_epochs": 1}).fit(X, Y)
    clf.set_params(chunk_aggregation="attention")
    with pytest.raises(InvalidInputError, match="fitted with chunk_aggregation='max'.*'max' or 'mean'"):
        clf.predict(X)
    truncated = BertMultiLabelClassifier(**{**chunk_params, "max_epochs": 1}).fit(X, Y)
    truncated.set_params(long_text="chunk", chunk_aggregation="attention")
    with pytest.raises(InvalidInputError, match="fitted with long_text='truncate'"):
        truncated.decision_function(X)
    truncated.set_params(long_text="truncate")  # attention is not used without windows
    assert truncated.predict(X).shape == (16, 1)


@pytest.mark.filterwarnings("ignore::sklearn_bert_multilabel.LongTextWarning")  # max_chunks=1 cuts
def test_cached_logits_follow_window_parameters_set_after_fit(chunk_params, tmp_path):
    """With memory, a prediction's cache entry holds the window settings it was made with."""
    X, Y = long_documents(16, seed=8, length=60)
    params = {**chunk_params, "max_epochs": 1}
    cached = BertMultiLabelClassifier(memory=tmp_path, **params).fit(X, Y)
    plain = BertMultiLabelClassifier(**params).fit(X, Y)
    before = plain.decision_function(X)
    np.testing.assert_allclose(cached.decision_function(X), before, atol=1e-5)
    for change in ({"long_text": "chunk"}, {"stride": 2}, {"chunk_aggregation": "mean"}, {"max_chunks": 1}):
        cached.set_params(**change)
        plain.set_params(**change)
        after = plain.decision_function(X)
        assert not np.allclose(after, before, atol=1e-4), change  # the change matters here
        np.testing.assert_allclose(cached.decision_function(X), after, atol=1e-5)
        before = after
