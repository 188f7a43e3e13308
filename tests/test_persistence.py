"""save/load without pickle, Hugging Face export, ONNX export, pickle size."""

from __future__ import annotations

import copy
import json
import pickle
import threading
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_texts

from sklearn_bert_multilabel import (
    BertMultiLabelClassifier,
    InvalidInputError,
    LongTextWarning,
    ModelFileError,
    __version__,
)
from sklearn_bert_multilabel._persistence import MANIFEST, WEIGHTS, staged_folder
from sklearn_bert_multilabel._thresholds import bound_labels


@pytest.fixture(scope="module")
def tuned(tiny_model_dir):
    """A fitted model with tuned thresholds, label names and a non-default head."""
    X, Y = make_texts(96, seed=3)
    frame = pd.DataFrame(Y, columns=["sports", "business", "positive"])
    clf = BertMultiLabelClassifier(
        model_name=tiny_model_dir,
        hidden_layer_sizes=(16,),
        pooling="attention",
        threshold="auto",
        pos_weight="balanced",
        max_epochs=2,
        batch_size=16,
        lr=1e-3,
        optimizer=torch.optim.Adam,
        train_split=0.25,
        random_state=0,
    )
    return clf.fit(X, frame), X


@pytest.fixture
def saved(tuned, tmp_path):
    clf, _ = tuned
    folder = tmp_path / "model"
    clf.save(folder)
    return folder


def _edit_manifest(folder, edit) -> None:
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_round_trip_gives_identical_predictions_and_state(tuned, saved):
    clf, X = tuned
    loaded = BertMultiLabelClassifier.load(saved)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    np.testing.assert_array_equal(loaded.thresholds_, clf.thresholds_)
    assert loaded.label_names_ == ["sports", "business", "positive"]
    np.testing.assert_array_equal(loaded.pos_weight_, clf.pos_weight_)
    assert loaded.history_[-1, "valid_loss"] == pytest.approx(clf.history_[-1, "valid_loss"])
    assert loaded.get_params() == {**clf.get_params()}
    assert loaded.optimizer is torch.optim.Adam
    assert loaded.hidden_layer_sizes == (16,)


def test_round_trip_keeps_the_label_bounds(tuned, tmp_path):
    clf, X = tuned
    for low, high, threshold in ((2, None, 0.99), (0, 1, 0.0)):
        fitted = copy.deepcopy(clf).set_params(threshold=threshold, min_labels=low, max_labels=high)
        fitted.save(tmp_path / str(low))
        loaded = BertMultiLabelClassifier.load(tmp_path / str(low))
        assert (loaded.min_labels, loaded.max_labels) == (low, high)
        predicted = loaded.predict(X)
        assert (predicted.sum(axis=1) == (high or low)).all()
        np.testing.assert_array_equal(predicted, fitted.predict(X))


def test_loaded_model_refits_and_threshold_changes_apply(tuned, saved):
    clf, X = tuned
    loaded = BertMultiLabelClassifier.load(saved)
    loaded.set_params(threshold=0.99)
    assert loaded.predict(X).sum() < clf.predict(X).sum()
    Y = make_texts(96, seed=3)[1]
    refit = loaded.set_params(threshold=0.5, max_epochs=1).fit(X, Y)
    assert refit.predict_proba(X).shape == (96, 3)


def test_loading_uses_no_pickle(saved, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle or torch.load was used")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    assert BertMultiLabelClassifier.load(saved).n_labels_ == 3


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / WEIGHTS).write_bytes((f / WEIGHTS).read_bytes()[:-100]), "truncated or edited"),
        (lambda f: _flip_byte(f / WEIGHTS), "truncated or edited"),
        (lambda f: (f / "tokenizer" / "tokenizer.json").unlink(), "tokenizer.json is missing"),
        (lambda f: (f / MANIFEST).write_text("{not json"), "is damaged"),
        (lambda f: (f / MANIFEST).unlink(), "has no estimator.json"),
        (lambda f: _edit_manifest(f, lambda m: m["fitted"].update(n_labels=4)), "label_names"),
        (lambda f: _edit_manifest(f, lambda m: m["fitted"].update(tuned_thresholds=[0.1])), "3 finite"),
        (lambda f: _edit_manifest(f, lambda m: m["files"].pop(WEIGHTS)), "not listed"),
        (lambda f: _edit_manifest(f, lambda m: m["files"].update({"../x": "0"})), "outside the folder"),
        (
            lambda f: _edit_manifest(f, lambda m: m["params"].update(optimizer={"class": "os:system"})),
            "not a torch optimizer",
        ),
        (lambda f: _edit_manifest(f, lambda m: m["params"].update(bogus=1)), "unknown parameter 'bogus'"),
    ],
)
def test_damaged_folder_fails_clearly(saved, damage, message):
    damage(saved)
    with pytest.raises(ModelFileError, match=message):
        BertMultiLabelClassifier.load(saved)


def _flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_missing_folder_is_clear(tmp_path):
    with pytest.raises(ModelFileError, match="no such folder"):
        BertMultiLabelClassifier.load(tmp_path / "nothing")


def test_newer_format_says_to_upgrade(saved):
    _edit_manifest(saved, lambda m: m.update(format_version=99, library_version="9.0.0"))
    with pytest.raises(ModelFileError, match=r"pip install -U 'sklearn-bert-multilabel>=9.0.0'"):
        BertMultiLabelClassifier.load(saved)


def test_other_library_version_warns_and_loads(tuned, saved):
    clf, X = tuned
    _edit_manifest(saved, lambda m: m.update(library_version="0.0.1"))
    with pytest.warns(
        UserWarning, match=f"saved by sklearn-bert-multilabel 0.0.1 and is loaded by {__version__}"
    ):
        loaded = BertMultiLabelClassifier.load(saved)
    np.testing.assert_array_equal(loaded.predict_proba(X[:5]), clf.predict_proba(X[:5]))


def test_model_saved_on_gpu_loads_on_cpu(tuned, saved, monkeypatch):
    """Weights are always written from CPU tensors; the saved device is only a preference."""
    clf, X = tuned
    _edit_manifest(saved, lambda m: m["fitted"].update(device="cuda:0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = BertMultiLabelClassifier.load(saved)
    assert loaded.device_ == "cpu"
    assert next(loaded.module_.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(loaded.predict_proba(X[:5]), clf.predict_proba(X[:5]))


def test_model_saved_on_a_missing_gpu_index_loads_on_cpu(tuned, saved, monkeypatch):
    clf, X = tuned
    _edit_manifest(saved, lambda m: m["fitted"].update(device="cuda:1"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    loaded = BertMultiLabelClassifier.load(saved)
    assert loaded.device_ == "cpu"
    np.testing.assert_array_equal(loaded.predict_proba(X[:5]), clf.predict_proba(X[:5]))


@pytest.mark.parametrize(
    "device, match",
    [
        ("mps", "device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'mps'"),
        (0, "device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 0"),
        ("cuda", "device='cuda' but CUDA is not available on this machine"),
    ],
)
def test_load_rejects_a_device_this_machine_cannot_use(saved, device, match, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidInputError, match=match):
        BertMultiLabelClassifier.load(saved, device=device)


def test_load_on_device_auto(tuned, saved, monkeypatch):
    clf, X = tuned
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = BertMultiLabelClassifier.load(saved, device="auto")
    assert loaded.device_ == "cpu"
    np.testing.assert_array_equal(loaded.predict(X[:5]), clf.predict(X[:5]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_model_saves_and_loads_on_cpu(fast_params, toy_data, tmp_path):
    X, Y = toy_data
    clf = BertMultiLabelClassifier(device="cuda", **fast_params).fit(X, Y)
    clf.save(tmp_path / "m")
    loaded = BertMultiLabelClassifier.load(tmp_path / "m", device="cpu")
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=1e-5)


def test_parameters_json_cannot_hold_warn_at_save(fast_params, toy_data, tmp_path):
    from skorch.callbacks import EpochTimer

    X, Y = toy_data
    clf = BertMultiLabelClassifier(
        callbacks=[("timer2", EpochTimer())], **{**fast_params, "max_epochs": 1}
    ).fit(X, Y)
    with pytest.warns(UserWarning, match="saved as their defaults: callbacks"):
        clf.save(tmp_path / "m")
    loaded = BertMultiLabelClassifier.load(tmp_path / "m")
    assert loaded.callbacks is None
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def test_optimizer_param_groups_are_saved_and_refit_the_same(fast_params, toy_data, tmp_path):
    X, Y = toy_data
    groups = [("encoder.*", {"lr": 1e-5, "betas": (0.8, 0.99)}), ("head.*", {"weight_decay": 0.0})]
    clf = BertMultiLabelClassifier(**fast_params, optimizer__param_groups=groups).fit(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing saved as its default
        clf.save(tmp_path / "m")
    loaded = BertMultiLabelClassifier.load(tmp_path / "m")
    assert loaded.get_params()["optimizer__param_groups"] == groups
    np.testing.assert_array_equal(loaded.fit(X, Y).predict_proba(X), clf.predict_proba(X))


@pytest.mark.parametrize("stored", [[["encoder.*"]], "encoder.*", [[1, {}]]])
def test_an_edited_param_groups_value_is_a_model_file_error(saved, stored):
    _edit_manifest(saved, lambda m: m["params"].update({"optimizer__param_groups": {"param_groups": stored}}))
    with pytest.raises(ModelFileError, match="optimizer__param_groups' has an unreadable value"):
        BertMultiLabelClassifier.load(saved)


@pytest.mark.parametrize("freeze_encoder", [False, True])
def test_saved_model_does_not_keep_the_cache_folder(fast_params, toy_data, tmp_path, freeze_encoder):
    X, Y = toy_data
    cache = tmp_path / "cache"
    params = dict(fast_params, max_epochs=1, memory=str(cache), freeze_encoder=freeze_encoder)
    clf = BertMultiLabelClassifier(**params).fit(X, Y)
    clf.predict_proba(X[:5])
    entries = sorted(p for p in cache.rglob("*"))
    assert any(p.parent.name in ("logits", "features") or p.name.startswith("chunk-") for p in entries)
    clf.save(tmp_path / "m")
    loaded = BertMultiLabelClassifier.load(tmp_path / "m")
    assert loaded.memory is None
    np.testing.assert_allclose(loaded.predict_proba(X[5:]), clf.predict_proba(X[5:]), atol=1e-6)
    entries = sorted(p for p in cache.rglob("*"))  # the original model's call just wrote here
    loaded.predict_proba(X[:3] + ["a text never seen before"])
    assert sorted(p for p in cache.rglob("*")) == entries


def test_save_refuses_a_folder_with_other_files_and_replaces_a_saved_model(tuned, tmp_path):
    clf, X = tuned
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ModelFileError, match="other files in it"):
        clf.save(tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    clf.save(tmp_path / "m")
    clf.save(tmp_path / "m")  # replacing a saved model is fine
    assert BertMultiLabelClassifier.load(tmp_path / "m").n_labels_ == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "m"]  # no staging left behind


@pytest.mark.parametrize("path", ["", ".", "..", "sub/.."])
def test_save_and_exports_refuse_the_working_directory(tuned, tmp_path, monkeypatch, path):
    """The folder is renamed into place whole, which the working directory cannot be."""
    clf, _ = tuned
    monkeypatch.chdir(tmp_path)
    message = "is empty" if path == "" else "working directory"
    with pytest.raises(ModelFileError, match=message):
        clf.save(path)
    assert list(tmp_path.iterdir()) == []
    pytest.importorskip("onnxscript")  # the export's extra
    with pytest.raises(ValueError, match=message):
        clf.export_onnx(path)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even "sub"


def test_save_through_a_link_replaces_the_folder_it_points_to(tuned, tmp_path):
    clf, X = tuned
    clf.save(tmp_path / "v1")
    (tmp_path / "current").symlink_to(tmp_path / "v1", target_is_directory=True)
    clf.save(tmp_path / "current")
    assert (tmp_path / "current").is_symlink()
    loaded = BertMultiLabelClassifier.load(tmp_path / "current")
    np.testing.assert_array_equal(loaded.predict_proba(X[:4]), clf.predict_proba(X[:4]))


def test_head_parameters_changed_after_fit_do_not_change_what_is_saved(tuned, tmp_path):
    """The saved layout is the fitted module's: set_params after fit changes neither it nor
    predictions, so the folder must load into the same head."""
    clf, X = tuned
    copied = copy.deepcopy(clf)
    expected = clf.predict_proba(X)
    copied.set_params(hidden_layer_sizes=(8, 4), dropout=0.5)
    np.testing.assert_array_equal(copied.predict_proba(X), expected)
    copied.save(tmp_path / "m")
    loaded = BertMultiLabelClassifier.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict_proba(X), expected)
    assert loaded.hidden_layer_sizes == (8, 4)  # the parameters are kept as they were set


def test_save_before_fit_raises_not_fitted(tiny_model_dir, tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        BertMultiLabelClassifier(model_name=tiny_model_dir).save(tmp_path / "m")


# ------------------------------------------------------------ Hugging Face export
def _pipeline_proba(folder, texts, names):
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(folder), top_k=None, function_to_apply="sigmoid")
    rows = pipe(list(texts), truncation=True)
    return np.array([[{r["label"]: r["score"] for r in row}[name] for name in names] for row in rows])


def test_numpy_valued_head_parameters_save_and_export(fast_params, tmp_path):
    """Sizes from ``np.arange`` or a search's distributions are numpy integers; the saved
    and exported files must still hold plain JSON numbers."""
    X, Y = make_texts(48, seed=8)
    params = dict(
        fast_params, max_epochs=np.int64(1), pooling="pooler", random_state=np.int64(4), warm_start=np.True_
    )
    clf = BertMultiLabelClassifier(hidden_layer_sizes=(np.int64(8),), dropout=np.float32(0.25), **params)
    clf.fit(X, Y)
    expected = clf.predict_proba(X)
    clf.save(tmp_path / "m")
    loaded = BertMultiLabelClassifier.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict_proba(X), expected)
    assert loaded.hidden_layer_sizes == (8,) and type(loaded.hidden_layer_sizes[0]) is int
    assert loaded.warm_start is True  # kept, not replaced by its default (False) with a warning
    one_layer = BertMultiLabelClassifier(hidden_layer_sizes=8, **params).fit(X, Y)  # MLPClassifier's int
    sizes = [layer.out_features for layer in one_layer.module_.head if hasattr(layer, "out_features")]
    assert sizes == [8, 3]  # one hidden layer of 8, then the 3 labels
    one_layer.save(tmp_path / "int")
    np.testing.assert_array_equal(
        BertMultiLabelClassifier.load(tmp_path / "int").predict_proba(X), one_layer.predict_proba(X)
    )
    linear = BertMultiLabelClassifier(hidden_layer_sizes=(), **params).fit(X, Y)
    linear.export_pretrained(tmp_path / "hf")
    np.testing.assert_allclose(
        _pipeline_proba(tmp_path / "hf", X, linear.label_names_), linear.predict_proba(X), atol=1e-5
    )


def test_export_pretrained_reproduces_predict_proba(fast_params, tmp_path):
    X, Y = make_texts(64, seed=5)
    frame = pd.DataFrame(Y, columns=["sports", "business", "positive"])
    clf = BertMultiLabelClassifier(pooling="pooler", **fast_params).fit(X, frame)
    clf.set_params(threshold={"sports": 0.3, "business": 0.5, "positive": 0.7}, max_labels=2)
    clf.export_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {"0": "sports", "1": "business", "2": "positive"}
    got = _pipeline_proba(tmp_path / "hf", X, clf.label_names_)
    np.testing.assert_allclose(got, clf.predict_proba(X), atol=1e-5)
    # labels.json beside it holds what predict applies to those probabilities.
    meta = json.loads((tmp_path / "hf" / "labels.json").read_text())
    assert meta == {
        "label_names": ["sports", "business", "positive"],
        "thresholds": [0.3, 0.5, 0.7],
        "min_labels": 0,
        "max_labels": 2,
        "max_length": clf.max_length,
    }
    # Without a bound, the pipeline's probabilities against those thresholds are predict's labels
    # (on the texts whose probabilities are clear of the thresholds by more than their rounding).
    clf.set_params(max_labels=None)
    thresholds = np.array(meta["thresholds"])
    clear = (np.abs(got - thresholds) > 1e-4).all(axis=1)
    assert clear.mean() > 0.9
    np.testing.assert_array_equal((got >= thresholds)[clear], clf.predict(X)[clear])


def test_export_pretrained_distilbert(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    source = Path(tiny_model_dir)
    folder = tmp_path / "tiny-distilbert"
    vocab_size = len((source / "vocab.txt").read_text().split())
    config = DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    DistilBertModel(config).save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (source / name).exists():
            (folder / name).write_bytes((source / name).read_bytes())
    X, Y = make_texts(48, seed=6)
    clf = BertMultiLabelClassifier(
        model_name=str(folder),
        pooling="cls",
        hidden_layer_sizes=(32,),
        max_epochs=1,
        lr=1e-3,
        train_split=None,
        random_state=0,
    ).fit(X, Y)
    clf.export_pretrained(tmp_path / "hf")
    # The BERT tokenizer beside it gives token_type_ids, which DistilBERT's forward does not take.
    assert "token_type_ids" in clf.tokenizer_("a game")
    assert list(AutoTokenizer.from_pretrained(tmp_path / "hf")("a game")) == ["input_ids", "attention_mask"]
    assert "token_type_ids" in clf.tokenizer_("a game")  # the fitted tokenizer is left as it was
    got = _pipeline_proba(tmp_path / "hf", X, clf.label_names_)
    np.testing.assert_allclose(got, clf.predict_proba(X), atol=1e-5)


def test_exported_tokenizer_keeps_its_inputs_when_the_model_does_not_name_them(tuned, tmp_path):
    """A forward of only *args and **kwargs says nothing about its inputs: none are dropped."""
    from transformers import AutoTokenizer

    from sklearn_bert_multilabel._export import _save_tokenizer

    clf, _ = tuned
    _save_tokenizer(clf, tmp_path / "all", inputs={"args", "kwargs"})
    _save_tokenizer(clf, tmp_path / "two", inputs={"input_ids", "attention_mask"})
    assert list(AutoTokenizer.from_pretrained(tmp_path / "all")("a game")) == list(clf.tokenizer_("a game"))
    assert list(AutoTokenizer.from_pretrained(tmp_path / "two")("a game")) == ["input_ids", "attention_mask"]
    assert AutoTokenizer.from_pretrained(tmp_path / "two").model_max_length == clf.max_length


def test_export_pretrained_says_which_models_it_cannot_express(tuned, tmp_path):
    clf, _ = tuned  # attention pooling, MLP head
    with pytest.raises(
        ValueError, match=r"pooling='attention'.*pooling='pooler' and hidden_layer_sizes=\(\)"
    ):
        clf.export_pretrained(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# -------------------------------------------------------------------- ONNX export
def _onnx_inputs(folder: Path, texts: list[str]) -> dict:
    """The exported graph's inputs for ``texts``, from the tokenizer exported beside it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    return dict(tokenizer(texts, padding=True, truncation=True, return_tensors="np"))


def test_export_onnx_reproduces_predict_proba(tuned, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from sklearn_bert_multilabel._text import iter_text_batches

    clf, X = tuned
    clf.export_onnx(tmp_path / "onnx")
    meta = json.loads((tmp_path / "onnx" / "labels.json").read_text())
    assert meta["label_names"] == clf.label_names_
    np.testing.assert_allclose(meta["thresholds"], clf.thresholds_)
    assert meta["min_labels"] == 0 and meta["max_labels"] is None
    # Both axes of both inputs are symbolic, named "batch" and "tokens" where torch names them.
    graph = pytest.importorskip("onnx").load(str(tmp_path / "onnx" / "model.onnx")).graph
    axes = [[dim.dim_param for dim in tensor.type.tensor_type.shape.dim] for tensor in graph.input]
    assert len(axes) == 2 and axes[0] == axes[1] and all(axes[0]) and axes[0][0] != axes[0][1]
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 7):
        assert axes[0] == ["batch", "tokens"]
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    got = np.zeros((len(X), 3), dtype=np.float32)
    for rows, inputs in iter_text_batches(clf.tokenizer_, X, clf.max_length, 7, clf._pad_id):
        got[rows] = session.run(["probabilities"], {k: v.numpy() for k, v in inputs.items()})[0]
    np.testing.assert_allclose(got, clf.predict_proba(X), atol=1e-4)
    assert meta["outputs"] == ["logits", "probabilities", "labels"]
    labels = session.run(["labels"], _onnx_inputs(tmp_path / "onnx", X))[0]
    assert labels.dtype == np.int64
    # The tuned thresholds, in the graph: predict's labels, on every text none of whose
    # probabilities is within the runtimes' rounding of its threshold (tuned thresholds lie
    # halfway between two probabilities of the validation texts, which X holds).
    clear = (np.abs(clf.predict_proba(X) - clf.thresholds_) > 1e-5).all(axis=1)
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(labels[clear], clf.predict(X)[clear])
    # The exported tokenizer alone feeds the graph: only its two inputs, cut at max_length.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "onnx" / "tokenizer")
    texts = [*X[:5], " ".join(X) * 3]  # the last one is longer than max_length
    inputs = dict(tokenizer(texts, padding=True, truncation=True, return_tensors="np"))
    assert sorted(inputs) == sorted(meta["inputs"]) and inputs["input_ids"].shape[1] == clf.max_length
    got = session.run(["probabilities"], inputs)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LongTextWarning)  # the long text, as predict reads it
        np.testing.assert_allclose(got, clf.predict_proba(texts), atol=1e-4)
    assert "token_type_ids" in clf.tokenizer_("a game")  # the fitted tokenizer is left as it was


@pytest.mark.parametrize(
    "error, translated",
    [
        (ModuleNotFoundError("No module named 'onnxscript._framework_apis.torch_2_11'"), True),
        (AttributeError("module 'onnx_ir' has no attribute 'schemas'", name="schemas", obj=types), True),
        (AttributeError("'Graph' object has no attribute 'x'", name="x", obj=object()), False),
    ],
)
def test_export_onnx_names_onnx_packages_too_old_for_torch(tuned, tmp_path, monkeypatch, error, translated):
    pytest.importorskip("onnxscript")
    clf, _ = tuned

    def export(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch.onnx, "export", export)
    expected = ImportError if translated else AttributeError
    with pytest.raises(expected) as info:
        clf.export_onnx(tmp_path / "onnx")
    if translated:
        assert "ONNX exporter cannot use the installed ONNX packages (onnx " in str(info.value)
        assert "pip install -U onnx onnxscript onnx-ir ml-dtypes" in str(info.value)
        assert info.value.__cause__ is error
    assert not (tmp_path / "onnx").exists()  # nothing half-written


# ------------------------------------------------------------------------- pickle
def test_pickle_holds_the_weights_once_and_no_optimizer_state(tuned):
    clf, _ = tuned
    weights = sum(t.numel() * t.element_size() for t in clf.module_.state_dict().values())
    tokenizer = len(pickle.dumps(clf.tokenizer_))
    payload = pickle.dumps(clf)
    # Adam's two moment buffers alone would add 2x the weights.
    assert len(payload) < 1.1 * weights + tokenizer + 50_000
    assert not any("optimizer" in key and key != "optimizer" for key in vars(clf))


def test_two_writers_of_one_folder_both_succeed(tmp_path):
    """Identical fits of a parallel search write the same checkpoint folder at once."""
    target = tmp_path / "epoch-0001"
    errors = []

    def write(name):
        for i in range(200):
            try:
                with staged_folder(target) as staging:
                    (staging / "a.txt").write_text(f"{name} {i}")
                    (staging / "b.txt").write_text(f"{name} {i}")
            except OSError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=write, args=(name,)) for name in "AB"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001"]  # nothing left behind
    texts = {(target / name).read_text() for name in ("a.txt", "b.txt")}
    assert len(texts) == 1 and texts.pop().endswith(" 199")  # one writer's complete, last folder


def test_exports_refuse_a_max_length_the_model_cannot_use(tuned, tmp_path):
    """An exported model keeps max_length; set_params after fit may have broken it."""
    clf = copy.deepcopy(tuned[0]).set_params(max_length=10**6)
    for export in (clf.export_onnx, clf.export_pretrained):
        with pytest.raises(InvalidInputError, match=r"max_length=1000000 exceeds the \d+ positions"):
            export(tmp_path / export.__name__)
        assert not (tmp_path / export.__name__).exists()
    # With a bad label bound as well: both problems in one error.
    clf.set_params(max_labels=0)
    for export in (clf.export_onnx, clf.export_pretrained):
        with pytest.raises(InvalidInputError, match=r"max_length=1000000 exceeds") as info:
            export(tmp_path / export.__name__)
        assert len(info.value.problems) == 2 and "max_labels must be None or an int >= 1" in str(info.value)
        assert not (tmp_path / export.__name__).exists()


def test_export_onnx_writes_the_thresholds_predict_applies(tuned, tmp_path):
    """None where threshold='auto' has nothing tuned; a threshold that does not fit the model
    is refused before anything is written, as predict would refuse it."""
    pytest.importorskip("onnxscript")
    clf = copy.deepcopy(tuned[0]).set_params(threshold={"sports": 0.3, "business": 0.4})
    with pytest.raises(InvalidInputError, match="no value for 'positive'"):
        clf.export_onnx(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    clf.set_params(min_labels=4)
    for export in (clf.export_onnx, clf.export_pretrained):
        with pytest.raises(InvalidInputError, match="no value for 'positive'") as info:
            export(tmp_path / "bad")
        assert "min_labels=4 asks for more labels" in str(info.value)  # both problems, together
        assert not (tmp_path / "bad").exists()
    clf.set_params(threshold="auto").tuned_thresholds_ = None
    with pytest.raises(InvalidInputError, match="min_labels=4 asks for more labels") as info:
        clf.export_onnx(tmp_path / "bad")
    assert len(info.value.problems) == 1  # no tuned thresholds is not a problem for an export
    assert not (tmp_path / "bad").exists()
    clf.set_params(min_labels=1, max_labels=2).export_onnx(tmp_path / "auto")
    meta = json.loads((tmp_path / "auto" / "labels.json").read_text())
    assert meta["thresholds"] is None and (meta["min_labels"], meta["max_labels"]) == (1, 2)
    assert meta["outputs"] == ["logits", "probabilities"]  # no thresholds: no labels output


@pytest.mark.parametrize("bounds", [(0, None), (2, None), (0, 2), (1, 3)])
def test_exported_decision_breaks_ties_as_predict_does(tmp_path, bounds):
    """In onnxruntime, on probabilities with many ties, the graph's labels are bound_labels'."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from sklearn_bert_multilabel._export import _OnnxGraph

    class Logits(torch.nn.Module):  # the token ids as logits: ties wherever ids repeat
        def forward(self, input_ids, attention_mask):
            return (input_ids * attention_mask).float() - 2.0

    thresholds = [0.5, 0.6, 0.5, 0.9, 0.3, 0.5]
    graph = _OnnxGraph(Logits(), thresholds, *bounds).eval()
    example = (torch.full((2, 6), 3), torch.ones(2, 6, dtype=torch.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            example,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits", "probabilities", "labels"],
            dynamic_shapes=({0: torch.export.Dim.DYNAMIC}, {0: torch.export.Dim.DYNAMIC}),
            dynamo=True,
        )
    program.save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    ids = np.random.default_rng(0).integers(0, 5, size=(200, 6))
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    proba, labels = session.run(["probabilities", "labels"], inputs)
    assert len(np.unique(proba)) == 5  # sigmoid(-2), ..., sigmoid(2)
    expected = bound_labels(proba, proba >= np.array(thresholds), *bounds)
    np.testing.assert_array_equal(labels, expected)
    if bounds != (0, None):  # the bounds move some rows
        assert (expected.sum(axis=1) != (proba >= np.array(thresholds)).sum(axis=1)).any()


@pytest.mark.parametrize(("quantile", "bounds"), [(0.5, (1, 2)), (0.2, (0, 1)), (0.8, (2, None))])
def test_export_onnx_labels_apply_the_bounds_as_predict_does(tuned, tmp_path, quantile, bounds):
    ort = pytest.importorskip("onnxruntime")
    clf, X = tuned
    proba = clf.predict_proba(X)
    # Per-label thresholds that this share of the texts falls below: halfway between two of them.
    ordered = np.sort(proba, axis=0)
    at = int(quantile * len(X))
    threshold = ((ordered[at - 1] + ordered[at]) / 2).tolist()
    # Far enough from every probability, and the probabilities of a text from each other, that
    # the runtimes' rounding cannot tip a decision.
    assert np.abs(proba - np.array(threshold)).min() > 1e-5
    assert np.diff(np.sort(proba, axis=1), axis=1).min() > 1e-5
    clf = copy.deepcopy(clf).set_params(threshold=threshold, min_labels=bounds[0], max_labels=bounds[1])
    expected = clf.predict(X)
    counts = (proba >= np.array(threshold)).sum(axis=1)
    # Each case moves some rows, so the graph's bounds are put to work.
    assert (expected.sum(axis=1) != counts).any()
    clf.export_onnx(tmp_path / "onnx")
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    got_proba, got = session.run(["probabilities", "labels"], _onnx_inputs(tmp_path / "onnx", X))
    # The graph's decision on its own probabilities is bound_labels', exactly ...
    np.testing.assert_array_equal(got, bound_labels(got_proba, got_proba >= threshold, *bounds))
    # ... and predict's.
    np.testing.assert_array_equal(got, expected)
