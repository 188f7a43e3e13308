"""Frozen-encoder feature cache: looking texts up vs encoding them, as the cache grows.

A fit with ``freeze_encoder=True`` and ``memory`` reads each text's pooled
features from the cache instead of running the encoder. This times, in one
run, encoding ``--n-texts`` GoEmotions texts with the default encoder (what
a fit without the cache pays) and looking the same texts up in a cache that
also holds features of up to 300,000 other texts (a cache shared by several
data sets or searches). Each lookup is timed 5 times (median), after the
files are in the page cache.

It then predicts ``--n-calls`` new texts one call at a time with a fitted
frozen model and with a fine-tuned one, with and without ``memory``: each
such call stores one more chunk (features, or logits), and the chunks are
merged as they accumulate, so the time of a call should not grow with the
number of calls before it. Printed: the median time of the first and of the
last 100 calls, and the chunks left.

    python benchmarks/bench_feature_cache.py [--n-texts 800] [--n-calls 1000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from sklearn_bert_multilabel import BertMultiLabelClassifier, UnusedLabelWarning, load_goemotions
from sklearn_bert_multilabel._memory import FitCache, text_keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=800)
    parser.add_argument("--n-calls", type=int, default=1000)
    args = parser.parse_args()

    X, Y, _ = load_goemotions("train")
    X, Y = X[: args.n_texts], Y[: args.n_texts]
    clf = BertMultiLabelClassifier(freeze_encoder=True, max_epochs=1, max_length=64, train_split=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedLabelWarning)  # 32 texts leave some labels unused
        clf.fit(X[:32], Y[:32])
    clf._pooled_features(list(X[:32]))  # warm-up
    start = time.perf_counter()
    features = clf._pooled_features(list(X))
    encode = time.perf_counter() - start
    width = features.shape[1]
    keys = text_keys(list(X))
    rng = np.random.default_rng(0)

    print(f"encoding {len(X)} texts (all-MiniLM-L6-v2, max_length 64): {encode * 1000:.0f} ms\n")
    print(f"{'texts cached':>14s} {'chunks':>7s} {'lookup':>10s} {'encode / lookup':>16s}")
    with tempfile.TemporaryDirectory() as folder:
        cache = FitCache(Path(folder))
        cache.save_rows("features", "k", keys, features)
        cached, chunks = len(X), 1
        for extra in (0, 10_000, 100_000, 200_000):
            if extra:  # features of other texts, one chunk as one fit would write
                other = text_keys([f"other text {cached + i}" for i in range(extra)])
                cache.save_rows("features", "k", other, rng.random((extra, width), dtype=np.float32))
                cached, chunks = cached + extra, chunks + 1
            times = []
            for _ in range(6):
                out = np.empty_like(features)
                start = time.perf_counter()
                found = cache.load_rows("features", "k", width).fill(keys, out)
                times.append(time.perf_counter() - start)
                assert found.all() and np.array_equal(out, features)
            lookup = statistics.median(times[1:])
            print(f"{cached:14,d} {chunks:7d} {lookup * 1000:8.1f} ms {encode / lookup:15.0f}x")

    print(f"\n{args.n_calls} calls of predict_proba, one new text each, after a fit on {len(X)} texts")
    print("(frozen: features cached; fine-tuned: logits cached, in the same kind of chunks):")
    print(
        f"{'model':>10s} {'memory':>7s} {'first 100 calls':>16s} {'last 100 calls':>15s} {'chunks left':>12s}"
    )
    texts = [f"{X[i % len(X)]} (call {i})" for i in range(args.n_calls)]
    for frozen in (True, False):
        for use_memory in (False, True):
            with tempfile.TemporaryDirectory() as folder:
                model = BertMultiLabelClassifier(
                    freeze_encoder=frozen,
                    max_epochs=1,
                    max_length=64,
                    train_split=None,
                    memory=folder if use_memory else None,
                )
                model.fit(X, Y)
                times = []
                for text in texts:
                    start = time.perf_counter()
                    model.predict_proba([text])
                    times.append(time.perf_counter() - start)
                first, last = statistics.median(times[:100]), statistics.median(times[-100:])
                chunks = len(list(Path(folder).rglob("chunk-*")))
            kind, label = ("frozen" if frozen else "fine-tuned"), ("set" if use_memory else "None")
            print(f"{kind:>10s} {label:>7s} {first * 1000:13.1f} ms {last * 1000:12.1f} ms {chunks:12d}")


if __name__ == "__main__":
    main()
