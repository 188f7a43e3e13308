"""Shared fixtures: a tiny random BERT encoder with a real WordPiece tokenizer."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import transformers
from packaging.version import Version

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: transformers 5 loads a checkpoint in its saved dtype and builds tokenizers from any folder.
TRANSFORMERS_5 = Version(transformers.__version__).major >= 5

WORDS = (
    "the a an and or but is was are were it this that he she they we you i "
    "good great happy love wonderful win won best nice fun "
    "bad sad terrible hate awful lost worst angry boring "
    "match team goal score scored striker game player coach season "
    "stock stocks market markets bank profit profits price shares money "
    "today yesterday really very so not quite fell rose up down sharply"
).split()

SPORTS = {"match", "team", "goal", "score", "scored", "striker", "game", "player", "coach", "season"}
BUSINESS = {"stock", "stocks", "market", "markets", "bank", "profit", "profits", "price", "shares", "money"}
POSITIVE = {"good", "great", "happy", "love", "wonderful", "win", "won", "best", "nice", "fun"}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer, 32-wide random BERT and its WordPiece tokenizer, saved to a folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz")
    vocab += list(".,!?'0123456789")
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True)
    assert tokenizer.convert_ids_to_tokens(tokenizer("striker")["input_ids"])[1] == "striker"
    tokenizer.save_pretrained(str(folder))

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(folder))
    return str(folder)


def make_texts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Synthetic texts with three labels: about sports, about business, positive."""
    rng = np.random.default_rng(seed)
    fillers = [w for w in WORDS if w not in SPORTS | BUSINESS | POSITIVE]
    texts, Y = [], []
    for _ in range(n):
        y = rng.integers(0, 2, size=3)
        words = list(rng.choice(fillers, size=rng.integers(3, 10)))
        for flag, pool in zip(y, (SPORTS, BUSINESS, POSITIVE), strict=True):
            if flag:
                words += list(rng.choice(sorted(pool), size=2))
        rng.shuffle(words)
        texts.append(" ".join(words))
        Y.append(y)
    return texts, np.asarray(Y)


def weights_after_each_training_batch():
    """A skorch callback whose ``state`` is a copy of the net's weights after the last training batch."""
    from skorch.callbacks import Callback

    class WeightsAfterEachTrainingBatch(Callback):
        def on_batch_end(self, net, training=False, **kwargs):
            if training:
                self.state = {k: v.clone() for k, v in net.module_.state_dict().items()}

    return WeightsAfterEachTrainingBatch()


@pytest.fixture
def collector_off():
    """The garbage collector off for the test, after a collection: whatever stays alive in it
    is kept alive by references (a reference cycle, say), not by when the collector runs."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.fixture(scope="session")
def toy_data() -> tuple[list[str], np.ndarray]:
    return make_texts(96, seed=0)


@pytest.fixture
def fast_params(tiny_model_dir) -> dict:
    """Parameters for a fit of a few seconds on the tiny model."""
    return dict(
        model_name=tiny_model_dir,
        max_epochs=2,
        batch_size=16,
        lr=1e-3,
        random_state=0,
        train_split=None,
    )


@pytest.fixture(scope="module")
def one_epoch_model(tiny_model_dir):
    """The tiny model after one epoch on 64 synthetic texts (weights barely trained)."""
    from sklearn_bert_multilabel import BertMultiLabelClassifier

    X, Y = make_texts(64, seed=11)
    return BertMultiLabelClassifier(
        model_name=tiny_model_dir, max_epochs=1, lr=1e-3, train_split=None, random_state=0
    ).fit(X, Y)
