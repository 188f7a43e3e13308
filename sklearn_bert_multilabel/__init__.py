"""Multi-label text classification with pretrained transformer encoders, as scikit-learn estimators."""

from ._estimator import BertMultiLabelClassifier
from ._memory import CacheWarning
from ._model import MultiLabelTextModule
from ._net import NonFiniteLossError, PrecisionWarning
from ._persistence import ModelFileError
from ._split import MultilabelStratifiedKFold
from ._text import LongTextWarning
from ._thresholds import tune_thresholds
from ._validation import InvalidInputError, SingleLabelWarning, UnusedLabelWarning
from ._version import __version__
from .datasets import load_goemotions

__all__ = [
    "BertMultiLabelClassifier",
    "CacheWarning",
    "InvalidInputError",
    "LongTextWarning",
    "ModelFileError",
    "MultiLabelTextModule",
    "MultilabelStratifiedKFold",
    "NonFiniteLossError",
    "PrecisionWarning",
    "SingleLabelWarning",
    "UnusedLabelWarning",
    "__version__",
    "load_goemotions",
    "tune_thresholds",
]
