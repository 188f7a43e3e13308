"""GoEmotions: fine-tune the default encoder on train, tune on dev, evaluate once on test.

Every choice (thresholds, early stopping, epochs) is made on train/dev; the test split is
only scored, at the end: the fine-tuned model's predictions, and the same with
``min_labels=1`` (every GoEmotions text has a label). Two baselines run in the same script,
each with per-label thresholds tuned on dev: TF-IDF + one-vs-rest logistic regression, and
frozen all-MiniLM-L6-v2 mean-pooled features + one-vs-rest logistic regression.

    python benchmarks/goemotions.py                   # the recipe + baselines, chart to goemotions_f1.png
    python benchmarks/goemotions.py --epochs 5 --pos-weight balanced   # the README's result
    python benchmarks/goemotions.py --epochs 5 --pos-weight balanced --seed 0 1 2 --skip-baselines
    python benchmarks/goemotions.py --ablation        # dev macro-F1 with each option off (reduced budget)

Needs the ``bench`` extra (matplotlib) for the chart.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.multiclass import OneVsRestClassifier

from sklearn_bert_multilabel import BertMultiLabelClassifier, load_goemotions, tune_thresholds

RECIPE = dict(
    max_length=64,
    batch_size=32,
    lr=1e-4,
    weight_decay=0.01,
    lr_schedule="linear",
    warmup_ratio=0.1,
    max_grad_norm=1.0,
    precision="bf16",
    pooling="mean",
    threshold="auto",
    early_stopping=True,
    n_iter_no_change=2,
    random_state=0,
)


def scores(Y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {
        "macro-F1": f1_score(Y, pred, average="macro", zero_division=0),
        "micro-F1": f1_score(Y, pred, average="micro", zero_division=0),
        "subset accuracy": accuracy_score(Y, pred),
        "samples-F1": f1_score(Y, pred, average="samples", zero_division=0),
    }


def linear_baseline(features_train, Y_train, features_dev, Y_dev, features_test):
    """One-vs-rest logistic regression with per-label thresholds tuned on dev."""
    clf = OneVsRestClassifier(LogisticRegression(C=4.0, max_iter=2000), n_jobs=1)
    clf.fit(features_train, Y_train)
    thresholds = tune_thresholds(clf.predict_proba(features_dev), Y_dev)
    return (clf.predict_proba(features_test) >= thresholds).astype(int)


def frozen_features(texts_by_split: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Mean-pooled all-MiniLM-L6-v2 vectors, through the estimator's own feature path."""
    encoder = BertMultiLabelClassifier(
        freeze_encoder=True, max_epochs=1, max_length=64, precision="bf16", train_split=None, random_state=0
    )
    encoder.fit(["warm-up"], np.ones((1, 1)))
    return {split: encoder._pooled_features(texts) for split, texts in texts_by_split.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-limit", type=int, default=None, help="use the first N training texts")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument(
        "--pos-weight", default=None, help="pos_weight of the fine-tuned model (e.g. 'balanced')"
    )
    parser.add_argument("--chart", default="goemotions_f1.png")
    parser.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        help="random_state of the fine-tuned model; several seeds fine-tune one model each",
    )
    parser.add_argument(
        "--ablation", action="store_true", help="dev macro-F1 of the recipe with one option changed at a time"
    )
    args = parser.parse_args()

    X, Y, names = load_goemotions("train")
    X_dev, Y_dev, _ = load_goemotions("dev")
    X_test, Y_test, _ = load_goemotions("test")
    if args.train_limit:
        X, Y = X[: args.train_limit], Y[: args.train_limit]

    if args.ablation:
        ablation(X, Y, X_dev, Y_dev, args.epochs)
        return

    results = {}
    seeds = list(dict.fromkeys(args.seed))
    for seed in seeds:
        suffix = "" if len(seeds) == 1 else f" seed {seed}"
        start = time.perf_counter()
        recipe = {**RECIPE, "pos_weight": args.pos_weight, "random_state": seed}
        clf = BertMultiLabelClassifier(max_epochs=args.epochs, verbose=1, **recipe)
        clf.fit(X, Y, validation_data=(X_dev, Y_dev))
        minutes = (time.perf_counter() - start) / 60
        pred = clf.predict(X_test)  # the test split is only scored, never used for a choice
        results[f"fine-tuned{suffix or ' (this project)'}"] = (pred, scores(Y_test, pred))
        # Every GoEmotions text has a label ("neutral" included): predict at least one.
        at_least_one = clf.set_params(min_labels=1).predict(X_test)
        results[f"fine-tuned, min_labels=1{suffix}"] = (at_least_one, scores(Y_test, at_least_one))
        print(
            f"\ntraining{suffix}: {minutes:.1f} min, {len(clf.history_)} epochs, "
            f"best dev macro-F1 {max(clf.history_[:, 'valid_f1_macro']):.4f}"
        )
    fine_tuned = [name for name in results if name.startswith("fine-tuned") and "min_labels" not in name]

    if not args.skip_baselines:
        tfidf = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        pred = linear_baseline(
            tfidf.fit_transform(X), Y, tfidf.transform(X_dev), Y_dev, tfidf.transform(X_test)
        )
        results["TF-IDF + one-vs-rest LR"] = (pred, scores(Y_test, pred))
        feats = frozen_features({"train": X, "dev": X_dev, "test": X_test})
        pred = linear_baseline(feats["train"], Y, feats["dev"], Y_dev, feats["test"])
        results["frozen MiniLM + one-vs-rest LR"] = (pred, scores(Y_test, pred))

    print(f"\nGoEmotions test ({len(X_test)} texts, 28 labels)\n")
    print(f"{'model':34s} {'macro-F1':>9s} {'micro-F1':>9s} {'subset acc':>11s} {'samples-F1':>11s}")
    for name, (_, s) in results.items():
        print(
            f"{name:34s} {s['macro-F1']:9.4f} {s['micro-F1']:9.4f} {s['subset accuracy']:11.4f} "
            f"{s['samples-F1']:11.4f}"
        )

    if len(fine_tuned) > 1:  # one seed is one draw: runs of the same recipe differ
        macro = np.array([results[name][1]["macro-F1"] for name in fine_tuned])
        print(
            f"\nfine-tuned, {len(macro)} seeds: test macro-F1 {macro.mean():.4f} on average "
            f"(standard deviation {macro.std(ddof=1):.4f}, from {macro.min():.4f} to {macro.max():.4f})"
        )

    p, r, f, support = precision_recall_fscore_support(Y_test, results[fine_tuned[0]][0], zero_division=0)
    print(f"\nper label ({fine_tuned[0]})")
    print(f"{'label':16s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'support':>8s}")
    for j, name in enumerate(names):
        print(f"{name:16s} {p[j]:9.3f} {r[j]:7.3f} {f[j]:6.3f} {support[j]:8d}")

    if args.chart:
        models = {
            name: result
            for name, result in results.items()
            if "min_labels" not in name and (name == fine_tuned[0] or name not in fine_tuned)
        }
        chart(models, Y_test, names, args.chart)


def chart(results, Y_test, names, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_label = {
        name: f1_score(Y_test, pred, average=None, zero_division=0) for name, (pred, _) in results.items()
    }
    order = np.argsort(-next(iter(per_label.values())))  # labels by the fine-tuned model's F1
    fig, ax = plt.subplots(figsize=(14, 5))
    width = 0.8 / len(per_label)
    for i, (name, f1) in enumerate(per_label.items()):
        ax.bar(np.arange(len(names)) + i * width, f1[order], width, label=name)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels([names[j] for j in order], rotation=60, ha="right")
    ax.set_ylabel("test F1")
    ax.set_title("GoEmotions test F1 per label (thresholds tuned on dev)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nchart saved to {path}")


def ablation(X, Y, X_dev, Y_dev, epochs: int) -> None:
    """Dev macro-F1 of the recipe and of variants with one option changed."""
    variants = {
        "recipe": {},
        "threshold 0.5 (no tuning)": {"threshold": 0.5},
        "no warmup/decay (constant lr)": {"lr_schedule": "constant", "warmup_ratio": 0.0},
        "cosine decay": {"lr_schedule": "cosine"},
        "no gradient clipping": {"max_grad_norm": None},
        "no weight decay": {"weight_decay": 0.0},
        "pos_weight='balanced'": {"pos_weight": "balanced"},
        "cls pooling": {"pooling": "cls"},
        "MLP head (256,)": {"hidden_layer_sizes": (256,)},
        "layer_decay=0.8": {"layer_decay": 0.8},
        "fp32 instead of bf16": {"precision": "fp32"},
    }
    print(
        f"ablation: {len(X)} training texts, {epochs} epoch(s), dev macro-F1 (thresholds tuned on dev "
        "unless stated)\n"
    )
    print(f"{'variant':32s} {'dev macro-F1':>12s} {'minutes':>8s}")
    for name, change in variants.items():
        params = {**RECIPE, "early_stopping": False, **change}
        start = time.perf_counter()
        clf = BertMultiLabelClassifier(max_epochs=epochs, **params).fit(X, Y, validation_data=(X_dev, Y_dev))
        minutes = (time.perf_counter() - start) / 60
        f1 = f1_score(Y_dev, clf.predict(X_dev), average="macro", zero_division=0)
        print(f"{name:32s} {f1:12.4f} {minutes:8.1f}", flush=True)


if __name__ == "__main__":
    main()
