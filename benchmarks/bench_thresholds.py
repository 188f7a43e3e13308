"""Per-label threshold tuning: this package's exact search against what users write otherwise.

On the same scores and labels (20,000 texts x 500 labels by default: probabilities with labels
drawn from them, rare labels, ties from rounding to 3 decimals), times:

1. ``tune_thresholds(P, Y)``: every cut of each label's sorted scores, exact;
2. scikit-learn's ``precision_recall_curve`` per label, F1 at each of its thresholds, the best
   taken: also exact, the usual scikit-learn recipe;
3. a grid of 99 thresholds (0.01 ... 0.99) for all labels at once, vectorised with numpy.

and reports each label's F1 on the tuning data at the thresholds found: the exact searches
agree, and the grid can only do as well or worse.

    python benchmarks/bench_thresholds.py [--n-texts 20000] [--n-labels 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from sklearn.metrics import precision_recall_curve

from sklearn_bert_multilabel import tune_thresholds


def sklearn_curves(P: np.ndarray, Y: np.ndarray) -> np.ndarray:
    thresholds = np.full(P.shape[1], 0.5)
    for j in range(P.shape[1]):
        if not Y[:, j].any():
            continue
        precision, recall, cuts = precision_recall_curve(Y[:, j], P[:, j])
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
        thresholds[j] = cuts[int(np.argmax(f1))]
    return thresholds


def numpy_grid(P: np.ndarray, Y: np.ndarray) -> np.ndarray:
    grid = np.linspace(0.01, 0.99, 99)
    positives = Y.sum(axis=0)
    best, thresholds = np.full(P.shape[1], -1.0), np.full(P.shape[1], 0.5)
    for t in grid:
        predicted = P >= t
        tp = (predicted & Y).sum(axis=0)
        f1 = 2 * tp / np.maximum(predicted.sum(axis=0) + positives, 1)
        better = f1 > best
        best[better], thresholds[better] = f1[better], t
    return thresholds


def f1_per_label(P: np.ndarray, Y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    predicted = P >= thresholds
    tp = (predicted & Y).sum(axis=0)
    return 2 * tp / np.maximum(predicted.sum(axis=0) + Y.sum(axis=0), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=20_000)
    parser.add_argument("--n-labels", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rate = rng.uniform(0.002, 0.2, size=args.n_labels)  # from rare to common labels
    Y = rng.random((args.n_texts, args.n_labels)) < rate
    signal = np.where(Y, rng.beta(4, 2, Y.shape), rng.beta(2, 4, Y.shape))
    P = np.round(np.clip(signal * (rate * 3 + 0.3), 0, 1), 3).astype(np.float32)

    methods = {
        "tune_thresholds (exact)": lambda: tune_thresholds(P, Y),
        "precision_recall_curve per label (exact)": lambda: sklearn_curves(P, Y),
        "numpy grid of 99 thresholds": lambda: numpy_grid(P, Y),
    }
    times, found = {}, {}
    for _ in range(args.repeats):  # in alternation, so that a slow spell hits every method
        for name, method in methods.items():
            start = time.perf_counter()
            found[name] = method()
            times.setdefault(name, []).append(time.perf_counter() - start)

    ours = statistics.median(times["tune_thresholds (exact)"])
    print(f"{args.n_texts:,} texts x {args.n_labels} labels, median of {args.repeats} runs\n")
    exact = f1_per_label(P, Y, found["tune_thresholds (exact)"])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        f1 = f1_per_label(P, Y, found[name])
        print(
            f"{name:42s} {median:7.3f} s  {median / ours:6.2f}x  mean F1 {f1.mean():.4f}  "
            f"labels below the exact F1: {int((f1 < exact - 1e-12).sum())}"
        )


if __name__ == "__main__":
    main()
