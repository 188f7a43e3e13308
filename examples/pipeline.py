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
labels = [names.index(n) for n in ("anger", "joy", "sadness", "surprise")]

pipe = make_pipeline(
    FunctionTransformer(clean_texts),
    BertMultiLabelClassifier(max_epochs=2, max_length=64, threshold="auto", random_state=0),
)
pipe.fit(X[:2000], Y[:2000, labels])
print("dev macro-F1:", round(f1_score(Y_dev[:, labels], pipe.predict(X_dev), average="macro"), 3))
