"""Speed: prediction and training against the Hugging Face pipeline and Trainer.

One run, same encoder weights (all-MiniLM-L6-v2), same texts (GoEmotions test for
prediction, 2,048 GoEmotions train texts for training), same machine:

- predict_proba fp32 and bf16 vs ``pipeline("text-classification", top_k=None)``
  (batch 32, fp32), with the batched probabilities compared to one-text-at-a-time
  ones and the bf16 macro-F1 compared to fp32;
- fp32 prediction's achieved rate (2 x non-embedding parameters x real tokens / s)
  as a fraction of the best fp32 matrix-multiply rate measured in the same run (the
  default BLAS's or oneDNN's, whichever is faster);
- training samples/s, one epoch, batch 32, fp32 and bf16, vs the HF ``Trainer``
  with ``AutoModelForSequenceClassification(problem_type="multi_label_classification")``,
  and where fp32 training takes oneDNN's products (x86 CPUs not made by Intel), the
  same fp32 epoch with the default BLAS's products;
- peak RSS while predicting 100k texts vs 10k texts (separate processes).

Needs the ``bench`` extra (accelerate, for the Trainer):

    python benchmarks/bench_speed.py
"""

from __future__ import annotations

import argparse
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from sklearn.metrics import f1_score

from sklearn_bert_multilabel import BertMultiLabelClassifier, _cpu_linear, load_goemotions
from sklearn_bert_multilabel._pretrained import DEFAULT_MODEL, resolve_model_path
from sklearn_bert_multilabel._thresholds import tune_thresholds

MODEL = resolve_model_path(DEFAULT_MODEL)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def best_matmul_gflops() -> float:
    """The best fp32 rate of square products, by the default BLAS (``a @ b``) or by oneDNN
    (with a packed weight, as fp32 prediction uses it) where the build has it."""
    products = [lambda a, b: a @ b]
    if _cpu_linear.onednn_on_x86():
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight
            _cpu_linear.onednn_product(torch.randn(2, 8), packed(torch.randn(8, 8), None), None)
            products.append(lambda a, b: _cpu_linear.onednn_product(a, packed(b, None), None))
        except (AttributeError, RuntimeError):
            pass
    best = 0.0
    for n in (256, 512, 1024, 1536, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        for product in products:
            for _ in range(2):
                product(a, b)
            reps = max(3, int(2e10 / (2 * n**3)))
            seconds, _ = timed(lambda a=a, b=b, reps=reps, p=product: [p(a, b) for _ in range(reps)])
            best = max(best, 2 * n**3 * reps / seconds / 1e9)
    return best


def hf_pipeline_rate(texts: list[str], n_labels: int) -> float:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(
        MODEL, num_labels=n_labels, problem_type="multi_label_classification"
    )
    tok = AutoTokenizer.from_pretrained(MODEL)
    pipe = pipeline(
        "text-classification", model=model, tokenizer=tok, top_k=None, device=-1, function_to_apply="sigmoid"
    )
    pipe(texts[:64], batch_size=32)  # warm-up
    seconds, _ = timed(lambda: pipe(texts, batch_size=32))
    return len(texts) / seconds


def trainer_rate(texts: list[str], Y: np.ndarray, bf16: bool = False) -> float:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(MODEL)
    enc = tok(texts, truncation=True, max_length=128)
    rows = [
        {"input_ids": ids, "attention_mask": mask, "labels": y.astype(np.float32).tolist()}
        for ids, mask, y in zip(enc["input_ids"], enc["attention_mask"], Y, strict=True)
    ]
    model = AutoModelForSequenceClassification.from_pretrained(
        MODEL, num_labels=Y.shape[1], problem_type="multi_label_classification"
    )
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=32,
            num_train_epochs=1,
            learning_rate=1e-4,
            weight_decay=0.01,
            warmup_steps=0.1,
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=bf16,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tok)
        )
        seconds, _ = timed(trainer.train)
    return len(texts) / seconds


def peak_rss_child(path: str, n: int) -> None:
    """Child process: load a fitted model, predict n texts, print peak RSS in MiB."""
    with open(path, "rb") as f:
        clf = pickle.load(f)
    texts, _, _ = load_goemotions("test")
    texts = (texts * (n // len(texts) + 1))[:n]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    clf.predict_proba(texts)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{before:.1f} {after:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rss-child", nargs=2, metavar=("MODEL_PICKLE", "N"))
    parser.add_argument("--skip-trainer", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument(
        "--quality-texts",
        type=int,
        default=8000,
        help="training texts of the model used for the fp32-vs-bf16 macro-F1 check",
    )
    args = parser.parse_args()
    if args.rss_child:
        peak_rss_child(args.rss_child[0], int(args.rss_child[1]))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {DEFAULT_MODEL}\n")
    X_train, Y_train, names = load_goemotions("train")
    X_test, Y_test, _ = load_goemotions("test")
    X_train, Y_train = X_train[:2048], Y_train[:2048]
    rows = {}

    # Warm-up of both sides (the first run in a process pays one-off kernel set-up costs).
    BertMultiLabelClassifier(max_epochs=1, train_split=None).fit(X_train[:256], Y_train[:256])
    if not args.skip_trainer:
        trainer_rate(X_train[:256], Y_train[:256])

    # Training, one epoch over the same 2,048 texts.
    def train_rate(precision: str) -> tuple[float, BertMultiLabelClassifier]:
        clf = BertMultiLabelClassifier(
            max_epochs=1, batch_size=32, train_split=None, precision=precision, random_state=0
        )
        seconds, _ = timed(lambda: clf.fit(X_train, Y_train))
        return len(X_train) / seconds, clf

    rows["train fp32 (samples/s)"], fitted = train_rate("fp32")
    if _cpu_linear.use_onednn_products():
        # This CPU's fp32 training products are oneDNN's: the same epoch with the default BLAS's.
        chosen = _cpu_linear.use_onednn_products
        _cpu_linear.use_onednn_products = lambda: False
        try:
            rows["train fp32, default BLAS (samples/s)"], _ = train_rate("fp32")
        finally:
            _cpu_linear.use_onednn_products = chosen
    rows["train bf16 (samples/s)"], _ = train_rate("bf16")
    if not args.skip_trainer:
        rows["HF Trainer fp32 (samples/s)"] = trainer_rate(X_train, Y_train, bf16=False)
        rows["HF Trainer bf16 (samples/s)"] = trainer_rate(X_train, Y_train, bf16=True)

    # Prediction on GoEmotions test.
    rows["HF pipeline fp32, batch 32 (texts/s)"] = hf_pipeline_rate(X_test, Y_test.shape[1])
    fitted.predict_proba(X_test[:256])  # warm-up
    t32, p32 = timed(lambda: fitted.set_params(precision="fp32").predict_proba(X_test))
    rows["predict_proba fp32 (texts/s)"] = len(X_test) / t32
    t16, p16 = timed(lambda: fitted.set_params(precision="bf16").predict_proba(X_test))
    rows["predict_proba bf16 (texts/s)"] = len(X_test) / t16
    fitted.set_params(precision="fp32")
    one_by_one = np.vstack([fitted.predict_proba([x]) for x in X_test[:500]])
    max_diff = float(np.abs(one_by_one - p32[:500]).max())

    # Macro-F1 of fp32 vs bf16 prediction with a better-trained model, each precision with
    # per-label thresholds tuned on its own dev probabilities and evaluated on test.
    X_all, Y_all, _ = load_goemotions("train")
    X_dev, Y_dev, _ = load_goemotions("dev")
    quality = BertMultiLabelClassifier(max_epochs=1, train_split=None, precision="bf16", random_state=0)
    quality.fit(X_all[: args.quality_texts], Y_all[: args.quality_texts])

    def macro_f1(precision: str) -> float:
        quality.set_params(precision=precision)
        t = tune_thresholds(quality.predict_proba(X_dev), Y_dev)
        return float(f1_score(Y_test, quality.predict_proba(X_test) >= t, average="macro", zero_division=0))

    f1_32, f1_16 = macro_f1("fp32"), macro_f1("bf16")

    # Achieved rate of fp32 prediction.
    encoder = fitted.module_.encoder
    embed = sum(p.numel() for n, p in encoder.named_parameters() if "embeddings" in n)
    non_embedding = sum(p.numel() for p in fitted.module_.parameters()) - embed
    tokens = sum(len(ids) for ids in fitted.tokenizer_(X_test, truncation=True, max_length=128)["input_ids"])
    achieved = 2 * non_embedding * tokens / t32 / 1e9
    matmul = best_matmul_gflops()

    rss = None
    if not args.skip_rss:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "clf.pkl")
            with open(path, "wb") as f:
                pickle.dump(fitted, f)
            rss = {}
            for n in (10_000, 100_000):
                out = subprocess.run(
                    [sys.executable, __file__, "--rss-child", path, str(n)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()
                rss[n] = float(out[-1])

    for name, value in rows.items():
        print(f"{name:40s} {value:8.1f}")
    print()

    def report(label: str, value: float, target: str) -> None:
        print(f"{label:44s} {value:8.2f}  (target {target})")

    pipe = rows["HF pipeline fp32, batch 32 (texts/s)"]
    report("predict_proba fp32 / HF pipeline", rows["predict_proba fp32 (texts/s)"] / pipe, ">= 1.8")
    report("  max |batched - one at a time| x 1e5", max_diff * 1e5, "<= 1")
    report("predict_proba bf16 / HF pipeline fp32", rows["predict_proba bf16 (texts/s)"] / pipe, ">= 3.0")
    report(f"  |macro-F1 fp32 {f1_32:.4f} - bf16 {f1_16:.4f}|", abs(f1_32 - f1_16), "<= 0.005")
    print(f"  (model trained 1 epoch on {args.quality_texts} texts; thresholds tuned on dev per precision)")
    print(
        f"fp32 predict: {achieved:.1f} GFLOP/s achieved ({tokens} tokens, "
        f"{non_embedding / 1e6:.1f}M non-embedding parameters); best matmul {matmul:.1f} GFLOP/s"
    )
    report("  achieved / best matmul", achieved / matmul, ">= 0.8")
    if "HF Trainer fp32 (samples/s)" in rows:
        base = rows["HF Trainer fp32 (samples/s)"]
        report("train fp32 / HF Trainer fp32", rows["train fp32 (samples/s)"] / base, ">= 1.7")
        if "train fp32, default BLAS (samples/s)" in rows:
            report(
                "  (the same with the default BLAS's products)",
                rows["train fp32, default BLAS (samples/s)"] / base,
                "-",
            )
        report("train bf16 / HF Trainer fp32", rows["train bf16 (samples/s)"] / base, ">= 2.5")
        report("  (HF Trainer bf16 / HF Trainer fp32)", rows["HF Trainer bf16 (samples/s)"] / base, "-")
    if rss:
        print(f"peak RSS predicting 10k texts {rss[10_000]:.0f} MiB, 100k texts {rss[100_000]:.0f} MiB")
        report("  100k / 10k", rss[100_000] / rss[10_000], "<= 1.2")


if __name__ == "__main__":
    main()
