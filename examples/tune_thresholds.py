"""Tune one threshold per label on GoEmotions dev; compare test F1 before and after.

Each with and without ``min_labels=1``: every GoEmotions text has a label ("neutral" included),
so a text for which no label passes its threshold gets its most probable label instead of none.
Last, ``max_labels=2`` keeps at most the two most probable labels of a text.

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


def report(setting: str) -> None:
    Y_pred = clf.predict(X_test)
    macro = f1_score(Y_test, Y_pred, average="macro", zero_division=0)
    samples = f1_score(Y_test, Y_pred, average="samples", zero_division=0)
    empty = (Y_pred.sum(axis=1) == 0).mean()
    print(f"{setting:32s} macro-F1 {macro:.3f}  samples-F1 {samples:.3f}  texts with no label {empty:.0%}")


report("threshold 0.5")
clf.set_params(min_labels=1)  # no refit: only predict changes
report("threshold 0.5, min_labels=1")
clf.set_params(min_labels=0).fit_thresholds(X_dev, Y_dev)  # weights kept; threshold is "auto"
report("per-label dev thresholds")
clf.set_params(min_labels=1)
report("dev thresholds, min_labels=1")
clf.set_params(max_labels=2)  # most GoEmotions texts have one label, few more than two
report("dev thresholds, 1 to 2 labels")
for name, t in sorted(zip(names, clf.thresholds_, strict=True), key=lambda p: p[1])[:5]:
    print(f"  {name:15s} threshold {t:.2f}")
