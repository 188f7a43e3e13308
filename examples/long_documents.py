"""Long documents: read every window instead of the first max_length tokens.

Each "document" joins 12 GoEmotions comments (about 230 tokens); its labels
say whether any of its comments expresses admiration, amusement, gratitude
or love. With max_length=64, truncation sees only the first two or three
comments; long_text="chunk" reads the whole document in overlapping windows
and takes, per label, the strongest window.

python examples/long_documents.py
"""

import time

import numpy as np
from sklearn.metrics import f1_score

from sklearn_bert_multilabel import BertMultiLabelClassifier, load_goemotions

LABELS = ["admiration", "amusement", "gratitude", "love"]


def documents(split: str, n_docs: int, per_doc: int = 12, seed: int = 0):
    texts, Y, names = load_goemotions(split)
    columns = [names.index(name) for name in LABELS]
    order = np.random.default_rng(seed).permutation(len(texts))[: n_docs * per_doc].reshape(n_docs, per_doc)
    docs = [" ".join(texts[i] for i in rows) for rows in order]
    return docs, np.stack([Y[rows][:, columns].max(axis=0) for rows in order])


X, Y = documents("train", 600)
X_test, Y_test = documents("test", 300)
print(f"{len(X)} training documents, {np.mean([len(x.split()) for x in X]):.0f} words each on average")

common = dict(max_length=64, max_epochs=3, lr=1e-4, precision="auto", train_split=None, random_state=0)
for mode in ("truncate", "chunk"):
    clf = BertMultiLabelClassifier(long_text=mode, stride=16, chunk_aggregation="max", **common)
    start = time.perf_counter()
    clf.fit(X, Y)
    minutes = (time.perf_counter() - start) / 60
    f1 = f1_score(Y_test, clf.predict(X_test), average=None, zero_division=0)
    per_label = ", ".join(f"{name} {score:.2f}" for name, score in zip(LABELS, f1, strict=True))
    print(f"long_text={mode!r:11s} test macro-F1 {f1.mean():.3f} ({per_label}), {minutes:.1f} min")
