"""The same script in a notebook, on 8 GPUs or on several machines: no code changes.

    python examples/distributed/train.py                                  # one process
    accelerate launch --multi_gpu --num_processes 8 examples/distributed/train.py   # 8 GPUs
    torchrun --nproc_per_node 2 examples/distributed/train.py            # 2 CPU processes (gloo)

Under a launcher, each process trains on its share of the batches (the
effective batch is batch_size x processes) and every process ends with the
same fitted estimator; the main process evaluates and saves it.
"""

import os

import torch
from sklearn.metrics import f1_score

from sklearn_bert_multilabel import BertMultiLabelClassifier, load_goemotions

X, Y, names = load_goemotions("train")
X_dev, Y_dev, _ = load_goemotions("dev")
n = int(os.environ.get("N_TEXTS", "4000"))

clf = BertMultiLabelClassifier(
    max_epochs=1,
    max_length=64,
    threshold="auto",
    random_state=0,
    device="auto",  # each process's own GPU under a launcher, else the first GPU or the CPU
)
clf.fit(X[:n], Y[:n], validation_data=(X_dev[:1000], Y_dev[:1000]))

if int(os.environ.get("RANK", "0")) == 0:
    macro = f1_score(Y_dev[1000:3000], clf.predict(X_dev[1000:3000]), average="macro", zero_division=0)
    print(f"dev macro-F1 on held-out dev texts: {macro:.3f}")
    clf.save("goemotions-model")

if torch.distributed.is_initialized():  # under a launcher: leave the process group together
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
