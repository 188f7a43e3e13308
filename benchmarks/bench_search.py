"""Cost of model selection: threshold searches and frozen-encoder head searches.

Runs, in one process, on the same GoEmotions texts and the default encoder:

1. GridSearchCV(cv=3) over 1 threshold vs over 5 thresholds, both with
   ``memory`` (each in a fresh cache) -- target: ratio <= 1.3; and the same
   5-threshold search without ``memory``, which refits for every candidate as
   a plain skorch net or a Trainer loop does.
2. One fit with ``freeze_encoder=True`` vs GridSearchCV(cv=3) over 4 head
   sizes with ``memory`` -- target: ratio <= 1.5 -- at the default batch size
   (32) and at 128, a usual batch for training a head on fixed vectors. The
   two are timed in alternation ``--repeats`` times (each search in a fresh
   cache, so it encodes every text again) and the median ratio is reported,
   since a single pair of timings moves by 20% or more on a shared machine.
   Each timed call loads the encoder once: the fit without ``memory`` loads
   its own copy, as it always does, and before each search the copy that
   fits with ``memory`` share is dropped, so that the search loads it again.

Each timed call starts after a full garbage collection, so
that no run is charged for collecting what an earlier one left behind.

    python benchmarks/bench_search.py [--n-texts 1200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time

from sklearn.model_selection import GridSearchCV

from sklearn_bert_multilabel import BertMultiLabelClassifier, _pretrained, load_goemotions


def timed(fn):
    gc.collect()  # no run pays for collecting the garbage of the one before
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=1200)
    parser.add_argument("--skip-naive", action="store_true", help="skip the search without memory")
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternating (fit, search) pairs per batch size"
    )
    args = parser.parse_args()

    X, Y, names = load_goemotions("train")
    top = (-Y.sum(axis=0)).argsort()[:6]
    X, Y = X[: args.n_texts], Y[: args.n_texts][:, top]
    common = dict(max_length=64, train_split=None, random_state=0)
    thresholds5 = [0.1, 0.2, 0.3, 0.4, 0.5]

    def search(estimator, grid):
        return GridSearchCV(estimator, grid, scoring="f1_macro", cv=3, refit=False).fit(X, Y)

    results = {}
    # Warm-up: load the encoder once so file-system caching does not favour a later run.
    BertMultiLabelClassifier(max_epochs=1, **common).fit(X[:32], Y[:32])
    BertMultiLabelClassifier(max_epochs=1, freeze_encoder=True, **common).fit(X[:32], Y[:32])

    with tempfile.TemporaryDirectory() as cache:
        est = BertMultiLabelClassifier(max_epochs=1, memory=cache + "/a", **common)
        results["search, 1 threshold (memory)"] = timed(lambda: search(est, {"threshold": [0.5]}))
        est = BertMultiLabelClassifier(max_epochs=1, memory=cache + "/b", **common)
        results["search, 5 thresholds (memory)"] = timed(lambda: search(est, {"threshold": thresholds5}))
    if not args.skip_naive:
        est = BertMultiLabelClassifier(max_epochs=1, **common)
        results["search, 5 thresholds (no memory)"] = timed(lambda: search(est, {"threshold": thresholds5}))

    sizes = {"hidden_layer_sizes": [(), (128,), (256,), (256, 128)]}
    pairs = {}
    for batch_size in (32, 128):
        frozen = dict(freeze_encoder=True, max_epochs=10, lr=1e-3, batch_size=batch_size, **common)
        tag = f"batch {batch_size}"
        pairs[tag] = []
        for _ in range(args.repeats):
            fit = timed(lambda f=frozen: BertMultiLabelClassifier(**f).fit(X, Y))
            with tempfile.TemporaryDirectory() as cache:
                est = BertMultiLabelClassifier(memory=cache, **frozen)
                # As the fit loads its own encoder, the search loads the copy its fits share.
                _pretrained._FROZEN_ENCODERS.clear()
                _pretrained._TOKENIZERS.clear()
                pairs[tag].append((fit, timed(lambda e=est: search(e, sizes))))
        if not args.skip_naive and batch_size == 32:
            est = BertMultiLabelClassifier(**frozen)
            results[f"frozen search, 4 head sizes, {tag} (no memory)"] = timed(lambda e=est: search(e, sizes))

    print(f"{len(X)} GoEmotions texts, 6 labels, cv=3, all-MiniLM-L6-v2\n")
    for name, seconds in results.items():
        print(f"{name:42s} {seconds:8.1f} s")
    one, five = results["search, 1 threshold (memory)"], results["search, 5 thresholds (memory)"]
    print(f"\n5 vs 1 threshold, with memory:            {five / one:.2f}x  (target <= 1.3)")
    if "search, 5 thresholds (no memory)" in results:
        naive = results["search, 5 thresholds (no memory)"]
        print(f"5 thresholds, no memory vs 1 with memory: {naive / one:.2f}x")
    for tag, timings in pairs.items():
        fits = ", ".join(f"{fit:.1f}" for fit, _ in timings)
        searches = ", ".join(f"{search:.1f}" for _, search in timings)
        print(f"\n{tag}: one frozen-encoder fit {fits} s; 4-size search with memory {searches} s")
        ratios = [search / fit for fit, search in timings]
        listed = ", ".join(f"{r:.2f}" for r in ratios)
        print(
            f"frozen 4-size search vs one fit, {tag:9s} {statistics.median(ratios):.2f}x median of {listed}"
            "  (target <= 1.5)"
        )
        naive = results.get(f"frozen search, 4 head sizes, {tag} (no memory)")
        if naive is not None:
            fit = statistics.median(f for f, _ in timings)
            print(f"  the same search without memory:         {naive / fit:.2f}x")


if __name__ == "__main__":
    main()
