"""Bad input and bad parameters give one clear error before any training."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from sklearn_bert_multilabel import BertMultiLabelClassifier, InvalidInputError, UnusedLabelWarning

X4 = ["a good game", "stocks fell", "a win", "bank profits"]
Y4 = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])


@pytest.fixture
def clf(tiny_model_dir):
    return BertMultiLabelClassifier(model_name=tiny_model_dir, max_epochs=1, train_split=None, random_state=0)


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """Bad input must be refused before the encoder is even loaded."""
    import sklearn_bert_multilabel._estimator as est

    def refuse(*args, **kwargs):
        raise AssertionError("validation should have failed before loading the model")

    monkeypatch.setattr(est, "load_encoder", refuse)
    monkeypatch.setattr(est, "load_tokenizer", refuse)


@pytest.mark.parametrize(
    "X, match",
    [
        (["ok", 3, "fine", "yes"], r"X must contain only str.*X\[1\]=3.*Convert or drop them"),
        ([b"ok", b"fine", "yes", "no"], r"2 element\(s\) are not text.*t\.decode\('utf-8'\)"),
        (["ok", None, "fine", "yes"], r"X\[1\]=None"),
        (["ok", float("nan"), "fine", "yes"], r"X\[1\]=nan"),
        (np.array([1.0, 2.0, 3.0, 4.0]), "X must contain only str"),
        ("one text", "got a single str; wrap it in a list"),
        (np.array([["a"], ["b"], ["c"], ["d"]]), r"X must be 1-D.*X\[:, 0\]"),
        (pd.DataFrame({"text": X4}), r"select the text column"),
        (42, "X must be a list, tuple, 1-D array or pandas Series of str, got int\\.$"),
        ((t for t in X4), r"got generator\. Make it a list first: list\(texts\)"),
        (["", "  ", "\n", ""], r"X holds only empty or blank texts \(all 4\)"),
        (
            ["ok", "a \ud83d\ude00 b", "fine", "lone \udc00"],
            r"X has 2 text\(s\) with surrogate code points.*X\[1\]=.*X\[3\]=.*surrogatepass",
        ),
        (
            ["ok", b"caf\xe9".decode("utf-8", "surrogateescape"), "fine", "yes"],
            r"X\[1\]='caf\\udce9'\. They stand for bytes that are not UTF-8.*'surrogateescape'\)\.decode",
        ),
    ],
    ids=[
        "int",
        "bytes",
        "none",
        "nan",
        "numeric-array",
        "single-str",
        "2d",
        "dataframe",
        "scalar",
        "generator",
        "all-blank",
        "surrogates",
        "surrogate-escaped-bytes",
    ],
)
def test_bad_texts(clf, X, match):
    with pytest.raises(InvalidInputError, match=match):
        clf.fit(X, Y4)


def test_empty_X(clf):
    with pytest.raises(ValueError, match="X is empty"):
        clf.fit([], np.zeros((0, 2)))


def test_length_mismatch(clf):
    with pytest.raises(ValueError, match="X has 4 texts but Y has 3 rows"):
        clf.fit(X4, Y4[:3])


@pytest.mark.parametrize(
    "Y, match",
    [
        (np.array([1, 0, 1, 0]), r"Y must be 2-D.*reshape\(-1, 1\)"),
        (np.zeros((4, 2, 2)), "Y must be 2-D"),
        (np.array([[1, 0], [0, 2], [1, 0], [0, 1]]), r"Y must be binary \(0/1\); found other values \[2"),
        (
            np.array([[1, -1], [-1, 1], [1, -1], [-1, 1]]),
            r"found other values \[-1\]\. For labels coded -1/1, use \(Y > 0\)",
        ),
        (np.array([[1, 0], [0, np.nan], [1, 0], [0, 1]]), "Y contains 1 NaN value.*row 1, column 1"),
        ([[0, 3], [1], [2], [1, 2]], "MultiLabelBinarizer"),
        (
            np.array([["a", "b"]] * 4),
            r"Y must hold numbers 0/1 or booleans; it holds values such as 'a', 'b'\.",
        ),
        (
            pd.DataFrame({"p": ["yes", "no", "1", "no"], "q": ["no", "yes", "0", "no"]}),
            r"values such as 'yes', 'no'\. To mark 'yes' as the positive answer, pass "
            r"\(Y == 'yes'\)\.astype\(int\)",
        ),
        (np.zeros((4, 0)), "no label columns"),
        (np.array([[1, 0], [0, 1j], [1, 0], [0, 1]]), "Y must hold numbers 0/1 or booleans, not complex"),
        (np.array([[1, 0], [0, np.complex64(1)], [1, 0], [0, 1]], dtype=object), "not complex numbers"),
    ],
    ids=[
        *("1d", "3d", "non-binary", "minus-one", "nan", "ragged", "strings", "yes-no", "no-columns"),
        *("complex", "complex-objects"),
    ],
)
def test_bad_labels(clf, Y, match):
    with pytest.raises(ValueError, match=match):
        clf.fit(X4, Y)


def test_missing_values_in_nullable_dataframe(clf):
    Y = pd.DataFrame({"a": [1, 0, pd.NA, 0], "b": [0, 1, 0, 1]}, dtype="Int64")
    with pytest.raises(ValueError, match="Y contains 1 missing value.*row 2, column 0"):
        clf.fit(X4, Y)
    Y_none = np.array([[1, 0], [0, None], [1, 0], [0, 1]], dtype=object)
    with pytest.raises(ValueError, match="Y contains 1 missing value.*row 1, column 1"):
        clf.fit(X4, Y_none)


def test_never_positive_label_warns(tiny_model_dir, monkeypatch):
    import sklearn_bert_multilabel._estimator as est

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(est, "load_tokenizer", stop)
    Y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
    clf = BertMultiLabelClassifier(model_name=tiny_model_dir)
    with pytest.warns(UnusedLabelWarning, match="1 label column.*never positive.*2"), pytest.raises(Stop):
        clf.fit(X4, pd.DataFrame(Y, columns=["a", "b", "2"]))


@pytest.mark.parametrize(
    "params, match",
    [
        ({"pooling": "max"}, r"pooling must be one of \['cls', 'pooler', 'mean', 'attention'\]"),
        ({"threshold": -0.1}, r"threshold must be >= 0.0 and <= 1.0"),
        ({"threshold": 1.5}, r"threshold must be >= 0.0 and <= 1.0"),
        ({"threshold": "best"}, "threshold must be a number in"),
        ({"threshold": [0.5, 0.5, 0.5]}, "threshold has 3 values but Y has 2 labels"),
        (
            {"threshold": {"0": 0.4, "2": 0.5}},
            "threshold is given by label name.* no value for '1'; '2' not among",
        ),
        (
            {"pos_weight": pd.Series([2.0], index=["x"])},
            "pos_weight is given by label name.*of Y \\('0', '1'\\)",
        ),
        ({"pos_weight": {"0": "high", "1": 2}}, "pos_weight must be a number or an array of numbers"),
        (
            {"threshold": pd.Series([0.5] * 3, index=["0", "1", "0"])},
            r"threshold names the label\(s\) '0' more than once",
        ),
        ({"pos_weight": {0: 1.0, "0": 2.0, "1": 1.0}}, r"pos_weight names the label\(s\) '0' more than once"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout must be a number in \[0, 1\)"),
        ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes must be a tuple of positive ints"),
        ({"hidden_layer_sizes": 256.0}, "hidden_layer_sizes must be a tuple"),
        ({"hidden_layer_sizes": np.array([[8]])}, "hidden_layer_sizes must be a tuple"),
        ({"pos_weight": "auto"}, "pos_weight must be None, 'balanced'"),
        ({"callbacks": ["print_log", 3]}, r"callbacks must hold skorch callbacks .* got 'print_log', 3\."),
        ({"callbacks": [()]}, r"callbacks must hold skorch callbacks .* got \(\)\."),
        ({"pos_weight": [1.0, -2.0]}, "pos_weight must be >= 0.0"),
        ({"max_length": 1}, "max_length must be an int >= 2"),
        ({"max_epochs": 0}, "max_epochs must be an int >= 1"),
        ({"batch_size": 2.5}, "batch_size must be an int >= 1"),
        ({"lr": 0}, "lr must be a number > 0"),
        ({"precision": "int8"}, "precision must be one of"),
        ({"precision": "fp16"}, "precision='fp16' needs a CUDA device"),
        ({"device": "tpu"}, "device must be 'cpu', 'cuda', 'cuda:N' or 'auto'"),
        ({"device": "mps"}, "device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'mps'"),
        ({"device": "meta"}, "device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'meta'"),
        ({"device": 0}, "device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 0"),
        ({"device": None}, "device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got None"),
        ({"train_split": 1.5}, r"train_split must be a fraction in \(0, 1\)"),
        (
            {"train_split": __import__("skorch").dataset.ValidSplit(0.2, stratified=True)},
            r"train_split is a ValidSplit with stratified=True.*train_split=0\.2",
        ),
        ({"random_state": -1}, r"random_state must be None, an int in \[0, 2\*\*32 - 1\] .*got -1\."),
        ({"random_state": 2**32}, r"random_state must be None, an int .*got 4294967296\."),
        ({"random_state": "0"}, r"random_state must be None, an int .*got '0'\."),
        ({"random_state": 1.0}, r"random_state must be None, an int .*got 1\.0\."),
        ({"lr_schedule": "step"}, "lr_schedule must be one of"),
        ({"threshold_metric": "accuracy"}, "threshold_metric must be one of"),
        ({"optimizer": "adam"}, "optimizer must be a torch.optim.Optimizer class"),
        (
            {"optimizer__betas2": (0.9, 0.99)},
            r"optimizer__betas2: AdamW takes no such option; it takes amsgrad,",
        ),
        (
            {"optimizer__param_groups": [("encoder.*", {"momentum": 0.9})]},
            r"optimizer__param_groups option 'momentum': AdamW takes no such option",
        ),
        (
            {"optimizer__param_groups": [("head.*", {1: 0.1, "eps": 1e-6}), ("encoder.*", {"mom": 0})]},
            r"optimizer__param_groups option 'mom', optimizer__param_groups option 1: AdamW takes no such",
        ),
        ({"optimizer__param_groups": {"encoder.*": {"lr": 1e-5}}}, r"list of \(pattern, options\) pairs"),
        ({"optimizer__param_groups": [("encoder.*", 1e-5)]}, r"list of \(pattern, options\) pairs"),
        (
            {"iterator_train__shuffel": True},
            r"iterator_train__shuffel: torch's DataLoader takes no such option",
        ),
        ({"iterator_valid__workers": 2}, r"iterator_valid__workers: torch's DataLoader takes no such option"),
        (
            {"iterator_train__sampler": [0, 1], "iterator_valid__collate_fn": list},
            r"iterator_train__sampler, iterator_valid__collate_fn: the estimator forms its batches itself",
        ),
        ({"iterator_train_shuffle": True}, "unknown parameter 'iterator_train_shuffle'"),
        ({"optimizer__eps": -1.0}, "optimizer__eps: AdamW refuses these values: Invalid epsilon value"),
        ({"optimizer__eps": 1e-8, "lr": -1.0}, r"^lr must be a number > 0, got -1\.0\.$"),  # one problem
        ({"optimizer__weight_decay": -0.1}, "optimizer__weight_decay: AdamW refuses these values"),
        (
            {"optimizer__param_groups": [("head.*", {"lr": -1.0})]},
            "optimizer__param_groups, the options of 'head.*': AdamW refuses these values: Invalid learning",
        ),
        ({"iterator_train__batch_size": 0}, r"iterator_train__batch_size must be an int >= 1 \(or -1"),
        ({"iterator_valid__batch_size": "8"}, "iterator_valid__batch_size must be an int >= 1"),
        ({"iterator_train__shuffle": "yes"}, "iterator_train__shuffle must be True or False, got 'yes'"),
        ({"iterator_train__worker_init_fn": 3}, "iterator_train__worker_init_fn must be a function or None"),
        (
            {"iterator_train__persistent_workers": True},
            "iterator_train__persistent_workers: torch's DataLoader refuses these values: "
            "persistent_workers option needs num_workers > 0",
        ),
        ({"iterator_valid__num_workers": -1}, "iterator_valid__num_workers: torch's DataLoader refuses"),
        (
            {"criterion__pos_weight": [2.0, 1.0]},
            "'criterion__pos_weight': it is the .* set pos_weight=... instead",
        ),
        ({"module__dropout": 0.2}, "'module__dropout': it is the estimator's own parameter dropout"),
        ({"criterion": None}, "'criterion': the loss is BCEWithLogitsLoss, one logit per label"),
        ({"lr_scheduler": None}, "'lr_scheduler': the learning rate follows lr_schedule and warmup_ratio"),
        ({"compile": True}, "'compile': the estimator does not torch.compile the model"),
        ({"use_caching": False}, r"'use_caching': .* EpochScoring\(\.\.\., use_caching=False\)"),
        ({"torch_load_kwargs": {}}, r"'torch_load_kwargs': .*\.load\(path, device=\.\.\.\)"),
        ({"encoder__dtype": "bfloat16"}, "encoder__dtype='bfloat16': the encoder's weights stay float32"),
        ({"encoder__torch_dtype": "auto"}, "encoder__torch_dtype='auto': .* use precision='bf16'"),
    ],
)
def test_bad_parameters(clf, params, match):
    clf = type(clf)(**{**clf.get_params(), **params})
    with pytest.raises(ValueError, match=match):
        clf.fit(X4, Y4)


def test_cuda_requested_without_cuda(clf, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available.*device='cpu' or device='auto'"):
        clf.set_params(device="cuda").fit(X4, Y4)


def test_device_check_accepts_what_fit_documents():
    import torch

    from sklearn_bert_multilabel._validation import Problems, check_device

    problems = Problems()
    assert check_device("cpu", problems) == "cpu"
    assert check_device("cpu:0", problems) == "cpu:0"
    assert check_device(torch.device("cpu"), problems) == "cpu"
    assert check_device("auto", problems) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert problems == []


def test_memory_that_is_a_file(clf, tmp_path):
    (tmp_path / "notes.txt").write_text("not a cache", encoding="utf-8")
    with pytest.raises(ValueError, match=r"memory=.*notes.txt' is a file; give a folder"):
        clf.set_params(memory=str(tmp_path / "notes.txt")).fit(X4, Y4)


def test_empty_memory_path(clf, tmp_path, monkeypatch):
    """An empty path would put the cache in the working directory: refused, naming both ways out."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"memory='' names no folder; .*memory='\.'.*memory=None"):
        clf.set_params(memory="").fit(X4, Y4)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("folder", "match"),
    [
        (123, r"checkpoint_dir must be None or a folder path, got 123"),
        ("", r"checkpoint_dir='' names no folder; .*checkpoint_dir='\.'.*checkpoint_dir=None"),
        ("notes.txt", r"checkpoint_dir=.*notes.txt' is a file; give a folder"),
    ],
)
def test_bad_checkpoint_dir_is_refused_before_training(clf, folder, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a checkpoint", encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        clf.set_params(checkpoint_dir=folder).fit(X4, Y4)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        ({}, "training_guard"),
        ({}, "print_log"),
        ({"early_stopping": True, "train_split": 0.5}, "early_stopping"),
        ({"checkpoint_dir": "unused"}, "checkpoint"),
        ({"verbose": 1}, "progress_bar"),
    ],
)
def test_callback_names_the_estimator_uses_are_refused_before_training(clf, extra, name):
    from skorch.callbacks import EpochScoring

    clf.set_params(callbacks=[(name, EpochScoring("f1_macro"))], **extra)
    with pytest.raises(ValueError, match=rf"callbacks: the name\(s\) '{name}' belong to callbacks the"):
        clf.fit(X4, Y4)


def test_callback_names_given_twice_are_refused_before_training(clf):
    from skorch.callbacks import EarlyStopping, EpochScoring

    clf.set_params(callbacks=[("mine", EpochScoring("f1_macro")), ("mine", EarlyStopping())])
    with pytest.raises(ValueError, match=r"callbacks: the name\(s\) 'mine' are given more than once"):
        clf.fit(X4, Y4)


def test_callback_names_free_in_this_fit_are_accepted(clf):
    from skorch.callbacks import EarlyStopping

    clf.set_params(callbacks=[("early_stopping", EarlyStopping(patience=5))], train_split=0.5)
    with pytest.raises(AssertionError, match="before loading the model"):  # the checks passed
        clf.fit(X4, Y4)  # early_stopping=False: the name is free


def test_callback_parameters_must_name_a_callback(clf):
    """skorch ignores callbacks__<name>__... for a name no callback has; a typo would be lost."""
    from skorch.callbacks import EarlyStopping

    clf.set_params(callbacks=[EarlyStopping()], callbacks__earlystopping__patience=5)
    with pytest.raises(ValueError, match=r"callbacks__earlystopping__patience: no callback has that name"):
        clf.fit(X4, Y4)
    with pytest.raises(ValueError, match=r"The callbacks are EarlyStopping, checkpoint, .*valid_scores;"):
        clf.fit(X4, Y4)


@pytest.mark.parametrize(
    "params",
    [
        {"callbacks__EarlyStopping_2__patience": 3},  # two unnamed ones are numbered, as skorch does
        {"callbacks__mine__patience": 3},
        {"callbacks__print_log": None},
        {"callbacks__checkpoint__dirname": "x"},  # checkpoint_dir=None: a name some fits use
    ],
)
def test_callback_parameters_naming_a_callback_are_accepted(clf, params):
    from skorch.callbacks import EarlyStopping

    stoppers = [EarlyStopping, EarlyStopping(), ("mine", EarlyStopping())]
    clf.set_params(callbacks=stoppers, train_split=0.5, **params)  # they monitor valid_loss
    with pytest.raises(AssertionError, match="before loading the model"):  # the checks passed
        clf.fit(X4, Y4)


@pytest.mark.parametrize(
    ("callbacks", "params", "named"),
    [
        (lambda cb, lr: [cb.EarlyStopping(patience=1)], {}, "'EarlyStopping' (monitor='valid_loss')"),
        (lambda cb, lr: [cb.Checkpoint], {}, "'Checkpoint' (monitor='valid_loss_best')"),
        (
            lambda cb, lr: [cb.EarlyStopping(monitor="train_loss"), cb.EarlyStopping()],
            {},
            "'EarlyStopping_2' (monitor='valid_loss')",  # numbered as skorch numbers them
        ),
        (
            lambda cb, lr: [("stop", cb.EarlyStopping(monitor="train_loss"))],
            {"callbacks__stop__monitor": "valid_f1"},
            "'stop' (monitor='valid_f1')",
        ),
        (
            lambda cb, lr: [cb.LRScheduler(policy=lr.ReduceLROnPlateau, monitor="valid_loss")],
            {},
            "'LRScheduler' (monitor='valid_loss')",
        ),
    ],
)
def test_callbacks_monitoring_validation_scores_need_validation_data(clf, callbacks, params, named):
    """skorch would fail with a KeyError at the end of the first epoch."""
    import skorch.callbacks
    import torch.optim.lr_scheduler

    clf.set_params(callbacks=callbacks(skorch.callbacks, torch.optim.lr_scheduler), **params)
    with pytest.raises(InvalidInputError) as info:
        clf.fit(X4, Y4)
    message = str(info.value)
    assert f"callbacks: {named} monitor(s) a validation score, but this fit has no validation" in message
    assert "set train_split (e.g. 0.1)" in message and "validation_data=(X_val, Y_val)" in message


@pytest.mark.parametrize(
    ("callbacks", "params"),
    [
        (lambda cb, lr: [cb.EarlyStopping(monitor="train_loss")], {"train_split": None}),
        (lambda cb, lr: [cb.EarlyStopping()], {"train_split": 0.5}),
        (lambda cb, lr: [cb.EarlyStopping()], {"callbacks__EarlyStopping__monitor": "train_loss"}),
        (lambda cb, lr: [cb.EarlyStopping()], {"callbacks__EarlyStopping": None}),  # turned off
        (lambda cb, lr: [cb.Checkpoint(monitor=None)], {}),
        (lambda cb, lr: [cb.LRScheduler(policy=lr.StepLR, step_size=1, monitor="valid_loss")], {}),
        (lambda cb, lr: [cb.EpochScoring("f1_macro", on_train=True)], {}),
    ],
)
def test_callbacks_that_need_no_validation_data_pass_the_checks(clf, callbacks, params):
    import skorch.callbacks
    import torch.optim.lr_scheduler

    clf.set_params(callbacks=callbacks(skorch.callbacks, torch.optim.lr_scheduler), **params)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(AssertionError, match="before loading the model"):  # the checks passed
            clf.fit(X4, Y4)


def test_validation_scorings_without_validation_data_warn(clf):
    """skorch's EpochScoring records nothing without validation data: a history without the key."""
    from skorch.callbacks import EpochScoring

    clf.set_params(callbacks=[EpochScoring("f1_macro", lower_is_better=False)])
    match = r"callbacks: 'EpochScoring' \(scoring='f1_macro'\) score\(s\) the validation data, but this fit"
    with pytest.warns(UserWarning, match=match), pytest.raises(AssertionError, match="before loading"):
        clf.fit(X4, Y4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises(AssertionError, match="before loading the model"):  # validation data given
            clf.fit(X4, Y4, validation_data=(X4, Y4))


def test_cuda_index_beyond_the_machine(clf, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    match = r"device='cuda:2' but this machine has 2 CUDA device\(s\), 'cuda:0' to 'cuda:1'"
    with pytest.raises(ValueError, match=match):
        clf.set_params(device="cuda:2").fit(X4, Y4)


def test_all_problems_reported_together(clf):
    clf.set_params(pooling="max", dropout=2.0, lr=-1.0)
    with pytest.raises(InvalidInputError) as info:
        clf.fit(["ok", 3, "x", "y"], np.array([[1, 0], [0, 2], [1, 0], [0, 1]]))
    message = str(info.value)
    assert "5 problems" in message
    for part in ("pooling", "dropout", "lr", "X must contain only str", "Y must be binary"):
        assert part in message
    assert len(info.value.problems) == 5
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_errors_do_not_warn_first(clf):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError):
            clf.fit(X4, [[0, 1]] * 3)


def test_validation_labels_in_another_order_are_refused(clf):
    Y = pd.DataFrame(Y4, columns=["sports", "business"])
    shuffled = Y[["business", "sports"]]
    with pytest.raises(
        InvalidInputError,
        match=r"validation_data Y has the same labels in another order than Y: "
        r"its column 0 is 'business' where Y has 'sports'.*Y_val\[Y.columns\]",
    ):
        clf.fit(X4, Y, validation_data=(X4, shuffled))
    with pytest.raises(
        InvalidInputError, match=r"validation_data Y has other labels than Y.*in the same order"
    ):
        clf.fit(X4, Y, validation_data=(X4, shuffled.set_axis(["a", "b"], axis=1)))


def test_repeated_label_names_are_refused(clf):
    Y = pd.DataFrame(Y4, columns=["sports", "sports"])
    with pytest.raises(InvalidInputError, match=r"Y's column names must be unique .* repeated: 'sports'\."):
        clf.fit(X4, Y)
