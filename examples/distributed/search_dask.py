"""A cluster-wide grid search: every candidate fit runs on a dask worker.

    python examples/distributed/search_dask.py                  # a LocalCluster of 2 workers
    SCHEDULER=tcp://scheduler:8786 python examples/distributed/search_dask.py   # a real cluster

``memory`` must be a folder every worker sees (a shared file system): the
search then trains once per fold and training setting, whatever the number
of thresholds, and workers reuse each other's trained weights.
"""

import os
import tempfile

from distributed import Client, LocalCluster
from joblib import parallel_backend
from sklearn.model_selection import GridSearchCV

from sklearn_bert_multilabel import BertMultiLabelClassifier, load_goemotions

X, Y, names = load_goemotions("train")
keep = [names.index(n) for n in ("admiration", "amusement", "gratitude", "love")]
X, Y = X[:1500], Y[:1500][:, keep]

shared = os.environ.get("CACHE", tempfile.mkdtemp())
search = GridSearchCV(
    BertMultiLabelClassifier(max_epochs=2, max_length=64, random_state=0, memory=shared),
    {"lr": [1e-4, 3e-4], "threshold": [0.1, 0.2, 0.3]},
    scoring="f1_macro",
    cv=2,
    n_jobs=-1,
)

if __name__ == "__main__":
    address = os.environ.get("SCHEDULER")
    cluster = None if address else LocalCluster(n_workers=2, threads_per_worker=1)
    with Client(address or cluster):
        with parallel_backend("dask"):
            search.fit(X, Y)
    print("best:", search.best_params_, f"macro-F1 {search.best_score_:.3f}")
