"""Quickstart: fit, predict_proba, predict and a per-label report on GoEmotions.

python examples/quickstart.py
"""

from sklearn.metrics import classification_report

from sklearn_bert_multilabel import BertMultiLabelClassifier, load_goemotions

X, Y, names = load_goemotions("train")
X_test, Y_test, _ = load_goemotions("test")
labels = [names.index(n) for n in ("admiration", "amusement", "gratitude", "love", "neutral")]
X, Y, Y_test = X[:2000], Y[:2000, labels], Y_test[:, labels]

clf = BertMultiLabelClassifier(max_epochs=2, max_length=64, threshold="auto", random_state=0)
clf.fit(X, Y)

proba = clf.predict_proba(X_test[:3])  # (3, 5) independent probabilities
for text, p in zip(X_test[:3], proba, strict=True):
    print(f"{text[:60]!r:64} " + " ".join(f"{names[j]}={q:.2f}" for j, q in zip(labels, p, strict=True)))

report = classification_report(
    Y_test, clf.predict(X_test), target_names=[names[j] for j in labels], zero_division=0
)
print(report)
