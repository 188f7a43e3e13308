"""Rare labels on GoEmotions: label weights (pos_weight) and text weights (sample_weight).

A frozen encoder and a cache (``memory``): the texts are encoded once, and each of the
12 fits below trains only a head, in seconds. Thresholds are tuned on dev, scores are
test macro-F1, for three seeds.

python examples/imbalance.py
"""

import tempfile

import numpy as np
from sklearn.metrics import f1_score

from sklearn_bert_multilabel import BertMultiLabelClassifier, load_goemotions

X, Y, names = load_goemotions("train")
X_dev, Y_dev, _ = load_goemotions("dev")
X_test, Y_test, _ = load_goemotions("test")
rows = np.random.default_rng(0).permutation(len(X))[:8000]
X, Y = [X[i] for i in rows], Y[rows]

# A text weighs 1 / sqrt(frequency of its rarest label): texts that carry a rare label count more.
frequency = Y.mean(axis=0)
rarest = np.where(Y > 0, frequency, 1.0).min(axis=1)
rarest[Y.sum(axis=1) == 0] = np.median(frequency)  # a text without labels
text_weights = 1.0 / np.sqrt(rarest)

common = dict(
    freeze_encoder=True,
    hidden_layer_sizes=(256,),
    max_epochs=10,
    lr=1e-3,
    batch_size=64,
    max_length=64,
    train_split=None,
)
settings = {
    "no weights": ({}, None),
    'pos_weight="balanced"': ({"pos_weight": "balanced"}, None),
    "sample_weight": ({}, text_weights),
    "both": ({"pos_weight": "balanced"}, text_weights),
}
with tempfile.TemporaryDirectory() as cache:
    for name, (params, sample_weight) in settings.items():
        scores = []
        for seed in range(3):
            clf = BertMultiLabelClassifier(**common, **params, memory=cache, random_state=seed)
            clf.fit(X, Y, sample_weight=sample_weight)
            clf.fit_thresholds(X_dev, Y_dev)
            scores.append(f1_score(Y_test, clf.predict(X_test), average="macro", zero_division=0))
        listed = " ".join(f"{s:.3f}" for s in scores)
        print(f"{name:22s} test macro-F1 {np.mean(scores):.3f}  ({listed})")
