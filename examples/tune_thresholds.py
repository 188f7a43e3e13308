"""Tune one threshold per label on GoEmotions dev; compare test macro-F1 before and after.

python examples/tune_thresholds.py
"""

from sklearn.metrics import f1_score

from sklearn_bert_multilabel import BertMultiLabelClassifier, load_goemotions

X, Y, names = load_goemotions("train")
X_dev, Y_dev, _ = load_goemotions("dev")
X_test, Y_test, _ = load_goemotions("test")

clf = BertMultiLabelClassifier(
    max_epochs=2, max_length=64, precision="auto", train_split=None, random_state=0
)
clf.fit(X[:8000], Y[:8000])

before = f1_score(Y_test, clf.predict(X_test), average="macro", zero_division=0)
clf.fit_thresholds(X_dev, Y_dev)  # weights unchanged; threshold becomes "auto"
after = f1_score(Y_test, clf.predict(X_test), average="macro", zero_division=0)

print(f"test macro-F1 with threshold 0.5:           {before:.3f}")
print(f"test macro-F1 with per-label dev thresholds: {after:.3f}")
for name, t in sorted(zip(names, clf.thresholds_, strict=True), key=lambda p: p[1])[:5]:
    print(f"  {name:15s} threshold {t:.2f}")
