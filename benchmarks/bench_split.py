"""Thresholds tuned on a stratified vs a random validation split, on GoEmotions.

``threshold="auto"`` tunes one threshold per label on the validation rows
that ``train_split`` holds out. This fits the same frozen-encoder model
(all-MiniLM-L6-v2 features, a linear head) with ``train_split=0.1``, which
splits every label's positives in proportion (iterative stratification), and
with skorch's own ``ValidSplit(0.1, stratified=False)``, a random split, for
the same seeds, all in one run, and compares on the GoEmotions test set:

- labels with no positive in the validation rows (their threshold stays 0.5);
- test macro-F1 with the tuned thresholds.

Then 5-fold cross-validation (``threshold=0.5``, macro-F1) of the same model
with ``MultilabelStratifiedKFold`` vs scikit-learn's shuffled ``KFold``:
labels with no positive in a test fold, and the spread of the fold scores.

    python benchmarks/bench_split.py [--n-train 3000] [--seeds 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import warnings

import numpy as np
from sklearn.metrics import f1_score
from sklearn.model_selection import KFold, cross_val_score
from skorch.dataset import ValidSplit

from sklearn_bert_multilabel import (
    BertMultiLabelClassifier,
    MultilabelStratifiedKFold,
    UnusedLabelWarning,
    load_goemotions,
)
from sklearn_bert_multilabel._split import stratified_validation_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()

    X, Y, names = load_goemotions("train")
    X, Y = X[: args.n_train], Y[: args.n_train]
    X_test, Y_test, _ = load_goemotions("test")
    X_test, Y_test = X_test[: args.n_test], Y_test[: args.n_test]
    results: dict[str, dict[str, list[float]]] = {"stratified": {}, "random": {}}
    with tempfile.TemporaryDirectory() as cache, warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedLabelWarning)
        common = dict(
            freeze_encoder=True,
            max_epochs=args.epochs,
            lr=args.lr,
            max_length=64,
            threshold="auto",
            memory=cache,
        )
        for seed in range(args.seeds):
            splits = {
                "stratified": 0.1,
                "random": ValidSplit(0.1, stratified=False, random_state=seed),
            }
            for name, split in splits.items():
                clf = BertMultiLabelClassifier(train_split=split, random_state=seed, **common).fit(X, Y)
                if name == "stratified":
                    _, valid = stratified_validation_split(Y.astype(np.float32), 0.1, seed)
                else:
                    _, subset = split(np.arange(len(X)), None)
                    valid = np.asarray(subset.indices)
                missing = int(((Y[valid].sum(axis=0) == 0) & (Y.sum(axis=0) > 0)).sum())
                f1 = f1_score(Y_test, clf.predict(X_test), average="macro", zero_division=0)
                results[name].setdefault("missing", []).append(missing)
                results[name].setdefault("f1", []).append(f1)

        folds: dict[str, dict[str, list[float]]] = {"stratified": {}, "random": {}}
        for seed in range(min(args.seeds, 5)):
            splitters = {
                "stratified": MultilabelStratifiedKFold(5, random_state=seed),
                "random": KFold(5, shuffle=True, random_state=seed),
            }
            for name, cv in splitters.items():
                est = BertMultiLabelClassifier(
                    train_split=None, random_state=seed, **dict(common, threshold=0.5)
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # undefined F1 of labels absent from a fold
                    scores = cross_val_score(est, X, Y, cv=cv, scoring="f1_macro")
                tests = [test for _, test in cv.split(X, Y)]
                missing = [int(((Y[t].sum(axis=0) == 0) & (Y.sum(axis=0) > 0)).sum()) for t in tests]
                folds[name].setdefault("missing", []).append(statistics.mean(missing))
                folds[name].setdefault("sd", []).append(statistics.stdev(scores))
                folds[name].setdefault("mean", []).append(statistics.mean(scores))

    print(f"GoEmotions: {len(X)} training texts, {len(X_test)} test texts, {Y.shape[1]} labels, ")
    print(f"{args.seeds} seeds, train_split 0.1, frozen all-MiniLM-L6-v2 + linear head\n")
    print(f"{'split':12s} {'labels without validation positives':>36s} {'test macro-F1':>22s}")
    for name, r in results.items():
        missing, f1 = r["missing"], r["f1"]
        print(
            f"{name:12s} {statistics.mean(missing):>20.1f} (range {min(missing)}-{max(missing)})"
            f" {statistics.mean(f1):>10.3f} (sd {statistics.stdev(f1):.3f})"
        )
    gain = [s - r for s, r in zip(results["stratified"]["f1"], results["random"]["f1"], strict=True)]
    wins = sum(g > 0 for g in gain)
    print(
        f"\nstratified - random, same seed: {statistics.mean(gain):+.3f} macro-F1 on average, "
        f"better in {wins} of {len(gain)} seeds"
    )
    print(f"\n5-fold cross-validation, {len(folds['random']['sd'])} seeds, threshold 0.5:")
    print(f"{'splitter':12s} {'labels missing from a test fold':>32s} {'fold macro-F1 sd':>18s} {'mean':>7s}")
    for name, r in folds.items():
        print(
            f"{name:12s} {statistics.mean(r['missing']):>32.2f} {statistics.mean(r['sd']):>18.4f}"
            f" {statistics.mean(r['mean']):>7.3f}"
        )


if __name__ == "__main__":
    main()
