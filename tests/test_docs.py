"""The Examples sections of the public docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    pytest.param("sklearn_bert_multilabel._estimator", marks=pytest.mark.pretrained),  # the default model
    "sklearn_bert_multilabel._model",
    "sklearn_bert_multilabel._split",
    "sklearn_bert_multilabel._thresholds",
    "sklearn_bert_multilabel.datasets._goemotions",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, report=True)
    assert result.attempted > 0  # the module has examples, and they ran
    assert result.failed == 0, f"{result.failed} example(s) of {name} failed (see the captured output)"
