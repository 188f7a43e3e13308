"""Multi-label text classification with pretrained transformer encoders, as scikit-learn estimators."""

from ._estimator import BertMultiLabelClassifier
from ._model import MultiLabelTextModule
from ._thresholds import tune_thresholds
from ._validation import InvalidInputError, UnusedLabelWarning
from .datasets import load_goemotions

__version__ = "0.1.0"

__all__ = [
    "BertMultiLabelClassifier",
    "InvalidInputError",
    "MultiLabelTextModule",
    "UnusedLabelWarning",
    "__version__",
    "load_goemotions",
    "tune_thresholds",
]
