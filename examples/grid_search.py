"""GridSearchCV over head sizes and thresholds, scored by macro-F1.

With ``freeze_encoder=True`` and ``memory=...``, only the head is trained and
the encoder's features are computed once, so the search takes seconds per
candidate. The folds share out every label's positives in proportion
(``MultilabelStratifiedKFold``).

    python examples/grid_search.py
"""

import tempfile

from sklearn.model_selection import GridSearchCV

from sklearn_bert_multilabel import BertMultiLabelClassifier, MultilabelStratifiedKFold, load_goemotions

X, Y, names = load_goemotions("train")
labels = [names.index(n) for n in ("admiration", "gratitude", "love", "neutral")]
X, Y = X[:1500], Y[:1500, labels]

with tempfile.TemporaryDirectory() as cache:
    search = GridSearchCV(
        BertMultiLabelClassifier(
            freeze_encoder=True,
            max_epochs=10,
            lr=1e-3,
            max_length=64,
            train_split=None,
            memory=cache,
            random_state=0,
        ),
        {"hidden_layer_sizes": [(), (256,)], "threshold": [0.2, 0.3, 0.5]},
        scoring="f1_macro",
        cv=MultilabelStratifiedKFold(3, random_state=0),
    )
    search.fit(X, Y)

for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"], strict=True):
    print(f"{score:.3f}  {params}")
print("best:", search.best_params_)
