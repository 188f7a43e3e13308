"""The classifier as the last step of a scikit-learn Pipeline.

python examples/pipeline.py
"""

import re

from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from sklearn_bert_multilabel import BertMultiLabelClassifier, load_goemotions


def clean_texts(texts):
    """Replace Reddit user and subreddit mentions by placeholders."""
    return [re.sub(r"/?u/\w+", "[user]", re.sub(r"/?r/\w+", "[sub]", t)) for t in texts]


X, Y, names = load_goemotions("train")
X_dev, Y_dev, _ = load_goemotions("dev")
labels = [names.index(n) for n in ("admiration", "amusement", "curiosity", "gratitude")]
X_val, Y_val = X_dev[:1000], Y_dev[:1000, labels]  # for early stopping and thresholds
X_eval, Y_eval = X_dev[1000:], Y_dev[1000:, labels]

pipe = make_pipeline(
    FunctionTransformer(clean_texts),
    BertMultiLabelClassifier(max_epochs=2, max_length=64, threshold="auto", random_state=0),
)
# Fit parameters reach a step as <step name>__<parameter>; validation texts are not passed
# through the earlier steps, so clean them here.
pipe.fit(
    X[:3000],
    Y[:3000, labels],
    bertmultilabelclassifier__validation_data=(clean_texts(X_val), Y_val),
)
print("held-out macro-F1:", round(f1_score(Y_eval, pipe.predict(X_eval), average="macro"), 3))
