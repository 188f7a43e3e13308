"""ONNX export: onnxruntime vs the PyTorch predict path, same model, same texts, one run.

The model is all-MiniLM-L6-v2 with a linear head, fitted for one short epoch
on GoEmotions train texts (the weights do not matter for speed), with
thresholds tuned on dev texts and ``min_labels=1``, ``max_labels=3``. Both
sides get the same length-sorted batches of GoEmotions test texts: the
PyTorch side is ``predict_proba`` itself; the ONNX side runs ``model.onnx``
in an onnxruntime session over the same batches. Each is timed twice (best
kept), after a warm-up. Then the graph's ``labels`` output is compared with
``predict``. Needs the ``onnx`` extra:

    python benchmarks/bench_onnx.py [--n-texts 2000] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sklearn_bert_multilabel import BertMultiLabelClassifier, UnusedLabelWarning, load_goemotions
from sklearn_bert_multilabel._text import iter_text_batches


def best_of(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-texts", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    import onnxruntime as ort

    warnings.simplefilter("ignore", UnusedLabelWarning)  # a short fit: rare labels may be absent

    X_train, Y_train, _ = load_goemotions("train")
    X_dev, Y_dev, _ = load_goemotions("dev")
    X_test, _, _ = load_goemotions("test")
    X_test = X_test[: args.n_texts]
    clf = BertMultiLabelClassifier(
        max_epochs=1, train_split=None, random_state=0, predict_batch_size=args.batch_size
    ).fit(X_train[:256], Y_train[:256])
    # The decision the graph's labels output applies: tuned thresholds and both bounds.
    clf.fit_thresholds(X_dev[:1000], Y_dev[:1000]).set_params(min_labels=1, max_labels=3)

    folder = Path(tempfile.mkdtemp()) / "onnx"
    start = time.perf_counter()
    clf.export_onnx(folder)
    export_s = time.perf_counter() - start
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def onnx_output(texts, name="probabilities", dtype=np.float32):
        out = np.empty((len(texts), clf.n_labels_), dtype=dtype)
        for rows, inputs in iter_text_batches(
            clf.tokenizer_, texts, clf.max_length, args.batch_size, clf._pad_id
        ):
            out[rows] = session.run([name], {k: v.numpy() for k, v in inputs.items()})[0]
        return out

    onnx_output(X_test[:256])  # warm-up both sides
    clf.predict_proba(X_test[:256])
    torch_s = best_of(lambda: clf.predict_proba(X_test))
    onnx_s = best_of(lambda: onnx_output(X_test))
    diff = float(np.abs(onnx_output(X_test) - clf.predict_proba(X_test)).max())
    labels = onnx_output(X_test, "labels", np.int64)
    predicted = clf.predict(X_test)
    above = (clf.predict_proba(X_test) >= clf.thresholds_).sum(axis=1)  # labels before the bounds

    n = len(X_test)
    print(f"texts: {n} GoEmotions test, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"export_onnx: {export_s:.1f} s, model.onnx {(folder / 'model.onnx').stat().st_size / 1e6:.1f} MB")
    print(f"PyTorch predict_proba fp32: {n / torch_s:8.1f} texts/s")
    print(f"onnxruntime fp32          : {n / onnx_s:8.1f} texts/s")
    print(f"ratio onnxruntime / PyTorch: {torch_s / onnx_s:.2f}x")
    print(f"largest probability difference: {diff:.2e} (must be <= 1e-4)")
    print(
        f"labels output against predict (tuned thresholds, min_labels=1, max_labels=3): "
        f"{int((labels != predicted).sum())} of {labels.size} cells differ; the bounds moved "
        f"{int(((above < 1) | (above > 3)).sum())} of {len(X_test)} texts"
    )


if __name__ == "__main__":
    main()
