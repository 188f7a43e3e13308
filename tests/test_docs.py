"""The public docstrings: their Examples sections run and print what they show, and they
follow the numpydoc format."""

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


#: numpydoc checks left out, as scikit-learn's own docstring test leaves them out: a See Also
#: section, an example and an extended summary for every method, a name for every return value
#: and a summary that starts with a verb in the infinitive.
NUMPYDOC_SKIPPED = {"SA01", "EX01", "ES01", "RT02", "SS05"}


def _public_names():
    import sklearn_bert_multilabel as package

    for name in package.__all__:
        if name.startswith("__"):
            continue
        yield name
        obj = getattr(package, name)
        if isinstance(obj, type):
            for attr, value in vars(obj).items():
                if not attr.startswith("_") and (
                    callable(value) or isinstance(value, (property, classmethod))
                ):
                    yield f"{name}.{attr}"


@pytest.mark.parametrize("name", list(_public_names()))
def test_public_docstrings_follow_numpydoc(name):
    validate = pytest.importorskip("numpydoc.validate").validate
    errors = [f"{code}: {message}" for code, message in validate(f"sklearn_bert_multilabel.{name}")["errors"]]
    problems = [error for error in errors if error.split(":")[0] not in NUMPYDOC_SKIPPED]
    assert not problems, f"{name}: " + "; ".join(problems)


def test_readme_parameter_table_lists_every_parameter():
    """The README's table of parameters names each of the estimator's, and nothing else."""
    import re
    from pathlib import Path

    from sklearn_bert_multilabel import BertMultiLabelClassifier

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Parameters\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert sorted(listed) == sorted(BertMultiLabelClassifier().get_params(deep=False))
