"""Checks of texts, label matrices and parameters, with errors reported together."""

from __future__ import annotations

import numbers
import os
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp


class InvalidInputError(ValueError, TypeError):
    """Raised for bad input or parameters; lists every problem found in one call.

    It is both a :class:`ValueError` and a :class:`TypeError`, so code that
    catches either (as scikit-learn's conventions suggest) catches it.

    Parameters
    ----------
    problems : sequence of str
        One sentence per problem; kept as the ``problems`` attribute.
    """

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class UnusedLabelWarning(UserWarning):
    """A label column has no positive example, so nothing can be learned for it.

    Issued by ``fit`` for the training labels, and by ``fit_thresholds`` for
    the tuning labels, whose thresholds then stay at 0.5.
    """


class SingleLabelWarning(UserWarning):
    """Y has one label column, which scikit-learn's scorers take for a binary target."""


class Problems(list):
    """A list of problem descriptions; :meth:`raise_if_any` raises them together."""

    def raise_if_any(self) -> None:
        if self:
            raise InvalidInputError(self)


def describe(value: object) -> str:
    """``repr(value)``, cut to 40 characters for error messages."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def first_few(items: Sequence, show: Callable[[Any], str] = str, limit: int = 3) -> str:
    """The first ``limit`` of ``items`` as ``show`` writes them, and how many more there are."""
    text = ", ".join(show(item) for item in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def cells(mask: np.ndarray, what: str) -> str:
    """How many cells of a 2-D ``mask`` are set, and the first one.

    For example ``"2 NaN value(s) (first at row 0, column 1)"``.
    """
    rows, cols = np.nonzero(mask)
    return f"{len(rows)} {what} value(s) (first at row {rows[0]}, column {cols[0]})"


#: Code points U+D800-U+DFFF: halves of UTF-16 pairs, never characters of their own.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_texts(X: object, problems: Problems, name: str = "X") -> list[str] | None:
    """Return ``X`` as a list of str, or record why it cannot be.

    Accepts a list, tuple, 1-D ndarray, pandas Series or Index of str. Empty strings
    are accepted (they predict the model's prior).
    """
    if isinstance(X, str):
        problems.append(f"{name} must be a sequence of texts, got a single str; wrap it in a list: [text].")
        return None
    if hasattr(X, "to_numpy") and getattr(X, "ndim", None) == 1 and not hasattr(X, "columns"):
        X = X.to_numpy()  # a pandas Series (its index dropped) or Index
    if isinstance(X, np.ndarray):
        if X.ndim != 1:
            problems.append(
                f"{name} must be 1-D (one text per row), got an array of shape {X.shape}; "
                "for a single column of texts use X[:, 0] or X.ravel()."
            )
            return None
        X = X.tolist()
    elif sp.issparse(X) or hasattr(X, "columns"):
        problems.append(
            f"{name} must be a sequence of texts, got {type(X).__name__}; "
            "select the text column (e.g. df['text'])."
        )
        return None
    elif not isinstance(X, (list, tuple)):
        hint = ""
        if hasattr(X, "__iter__") and not hasattr(X, "__len__"):  # a generator, map, dict view...
            hint = " Make it a list first: list(texts)."
        problems.append(
            f"{name} must be a list, tuple, 1-D array or pandas Series of str, got {type(X).__name__}.{hint}"
        )
        return None
    texts = list(X)
    if len(texts) == 0:
        problems.append(f"{name} is empty: give at least one text.")
        return None
    bad = [(i, t) for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        shown = first_few(bad, lambda pair: f"{name}[{pair[0]}]={describe(pair[1])}")
        if all(isinstance(t, (bytes, bytearray)) for _, t in bad):
            fix = "Decode them first, e.g. [t.decode('utf-8') for t in X]."
        else:
            fix = "Convert or drop them (missing texts: use '' or remove the rows)."
        problems.append(f"{name} must contain only str; {len(bad)} element(s) are not text: {shown}. {fix}")
        return None
    broken = [i for i, t in enumerate(texts) if _SURROGATE.search(t)]
    if broken:
        shown = first_few(broken, lambda i: f"{name}[{i}]={describe(texts[i])}")
        found = {c for i in broken for c in _SURROGATE.findall(texts[i])}
        if all("\udc80" <= c <= "\udcff" for c in found):  # what surrogateescape makes of bytes
            cause = (
                "They stand for bytes that are not UTF-8, read with errors='surrogateescape' (as "
                "os.fsdecode and sys.stdin do); decode the bytes with their real encoding, or repair "
                "with t.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')."
            )
        else:
            cause = (
                "They usually come from text decoded as UTF-16 halves; repair with "
                "t.encode('utf-16', 'surrogatepass').decode('utf-16', 'replace')."
            )
        problems.append(
            f"{name} has {len(broken)} text(s) with surrogate code points, which are not valid "
            f"Unicode and no tokenizer can read: {shown}. {cause}"
        )
        return None
    return texts


def _is_missing(value: object) -> bool:
    """None, NaN, pandas.NA or NaT."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN and NaT compare unequal to themselves
    except (TypeError, ValueError):  # pandas.NA refuses bool()
        return True


def _reads_as_float(value: object) -> bool:
    """Whether ``float(value)`` succeeds (``"1"`` does), unlike :func:`is_number`, a type check."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def unnamed_columns(columns: object) -> bool:
    """Whether DataFrame ``columns`` are pandas' default 0, 1, 2... (``pd.DataFrame(array)``): no names."""
    return type(columns).__name__ == "RangeIndex" and columns.start == 0 and columns.step == 1


def check_label_matrix(
    Y: object, problems: Problems, name: str = "Y"
) -> tuple[np.ndarray | None, list[str] | None]:
    """Return ``(Y as a 2-D float32 0/1 array, column names or None)``.

    Accepts an ndarray, a list of lists, a pandas DataFrame (its column names
    are returned, unless they are pandas' default 0, 1, 2...) or a scipy
    sparse matrix, of bool, int or float 0/1 values.
    """
    names = None
    if hasattr(Y, "columns") and hasattr(Y, "to_numpy") and not unnamed_columns(Y.columns):
        names = [str(c) for c in Y.columns]
        repeated = sorted(n for n, count in Counter(names).items() if count > 1)
        if repeated:
            problems.append(
                f"{name}'s column names must be unique (they become the label names); "
                f"repeated: {', '.join(map(repr, repeated[:5]))}."
            )
        Y = Y.to_numpy()
    elif hasattr(Y, "iloc") and hasattr(Y, "to_numpy"):
        Y = Y.to_numpy()
    if sp.issparse(Y):
        Y = Y.toarray()
    try:
        arr = np.asarray(Y)
    except ValueError:
        arr = np.asarray(Y, dtype=object)
    if arr.dtype == object and arr.ndim == 1 and len(arr) and isinstance(arr[0], (list, tuple)):
        problems.append(
            f"{name} looks like lists of label ids of different lengths; {name} must be a "
            "binary indicator matrix (n_samples, n_labels). Convert it with "
            "sklearn.preprocessing.MultiLabelBinarizer().fit_transform(Y)."
        )
        return None, names
    if arr.ndim != 2:
        hint = (
            " For a single label use Y.reshape(-1, 1); for class ids use "
            "sklearn.preprocessing.MultiLabelBinarizer or LabelBinarizer."
            if arr.ndim == 1
            else ""
        )
        problems.append(f"{name} must be 2-D (n_samples, n_labels), got shape {arr.shape}.{hint}")
        return None, names
    if arr.shape[1] == 0:
        problems.append(f"{name} has no label columns: give at least one.")
        return None, names
    complex_types = (complex, np.complexfloating)  # numpy's complex64 is no Python complex
    if arr.dtype.kind == "c" or (arr.dtype == object and any(isinstance(v, complex_types) for v in arr.flat)):
        # astype(float) would drop the imaginary parts, with numpy's warning at best
        problems.append(f"{name} must hold numbers 0/1 or booleans, not complex numbers.")
        return None, names
    if arr.dtype.kind not in "biuf":
        missing = np.vectorize(_is_missing, otypes=[bool])(arr) if arr.dtype == object else None
        if missing is not None and missing.any():
            problems.append(
                f"{name} contains {cells(missing, 'missing')}; fill or drop them: labels must be 0 or 1."
            )
            return None, names
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            odd: dict[str, object] = {}  # the first few values that are not numbers, by repr
            for value in arr.ravel():
                if not _reads_as_float(value):
                    value = value.item() if isinstance(value, np.generic) else value  # np.str_ -> str
                    odd.setdefault(describe(value), value)
                    if len(odd) == 3:
                        break
            if not odd:  # every value reads as a number on its own (arrays of one number...)
                problems.append(f"{name} must hold numbers 0/1 or booleans, got dtype {arr.dtype}.")
                return None, names
            first = next(iter(odd.values()))
            hint = (
                f" To mark {first!r} as the positive answer, pass (Y == {first!r}).astype(int)."
                if isinstance(first, str)
                else ""
            )
            problems.append(
                f"{name} must hold numbers 0/1 or booleans; it holds values such as {', '.join(odd)}.{hint}"
            )
            return None, names
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        problems.append(
            f"{name} contains {cells(np.isnan(arr), 'NaN')}; fill or drop them: labels must be 0 or 1."
        )
        return None, names
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        values = np.unique(arr[bad])[:5].tolist()
        if values == [-1]:  # the -1/1 coding of label_binarize(neg_label=-1) and SVM-style targets
            hint = f"For labels coded -1/1, use ({name.split()[-1]} > 0).astype(int)."
        else:
            hint = "For class ids per row use sklearn.preprocessing.MultiLabelBinarizer."
        problems.append(f"{name} must be binary (0/1); found other values {values}. {hint}")
        return None, names
    return arr.astype(np.float32), names


def check_sample_weight(
    sample_weight: object,
    n_samples: int | None,
    problems: Problems,
    name: str = "sample_weight",
    *,
    against: str = "X",
    rows: str = "texts",
) -> np.ndarray | None:
    """Return ``sample_weight`` as a 1-D float64 array, or record why it cannot be.

    Accepts a list, tuple, 1-D ndarray or pandas Series of numbers (a column
    vector of shape ``(n, 1)`` too, or one number for every row), as many
    as ``n_samples`` when it is given: the number of ``rows`` of ``against``,
    as the messages name them. The weights must be finite, at least 0, and
    not all 0.
    """
    if hasattr(sample_weight, "to_numpy") and not hasattr(sample_weight, "columns"):
        sample_weight = sample_weight.to_numpy()  # a pandas Series, its index dropped
    if sp.issparse(sample_weight):
        problems.append(f"{name} must be a dense 1-D array of numbers, not a sparse matrix.")
        return None
    try:
        arr = np.asarray(sample_weight)
        if arr.dtype.kind == "c":
            raise TypeError("complex")
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        problems.append(f"{name} must hold numbers, one weight per text; got {describe(sample_weight)}.")
        return None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 0 and n_samples is not None:  # one number for every row, as scikit-learn takes it
        arr = np.full(n_samples, arr.item())
    if arr.ndim != 1:
        problems.append(f"{name} must be 1-D (one weight per text), got shape {arr.shape}.")
        return None
    if n_samples is not None and len(arr) != n_samples:
        problems.append(
            f"{name} has {len(arr)} weights but {against} has {n_samples} {rows}; give one weight per row."
        )
        return None
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        problems.append(
            f"{name} contains {int(bad.sum())} NaN or infinite value(s) (first at row {first}); "
            "weights must be finite."
        )
        return None
    negative = arr < 0
    if negative.any():
        first = int(np.flatnonzero(negative)[0])
        problems.append(
            f"{name} contains {int(negative.sum())} negative value(s) (first at row {first}, "
            f"{arr[first]:g}); weights must be 0 or more."
        )
        return None
    if len(arr) and not arr.any():
        problems.append(f"{name} is 0 for every text: at least one text must have a positive weight.")
        return None
    return arr


def check_label_names(
    given: Sequence[str] | None,
    expected: Sequence[str] | None,
    problems: Problems,
    *,
    name: str,
    against: str,
    reorder: str,
) -> None:
    """Record a problem if a DataFrame's label columns are not ``expected``, in that order.

    Labels are matched by position, so a DataFrame whose columns are reordered
    or different would otherwise give silently wrong results. Nothing is
    checked when either side has no names or the counts differ (reported
    elsewhere). ``reorder`` is the expression the message suggests for a
    mere change of order (``"Y[clf.label_names_]"``).
    """
    if given is None or expected is None or len(given) != len(expected) or list(given) == list(expected):
        return
    j = next(i for i, (a, b) in enumerate(zip(given, expected, strict=True)) if a != b)
    if sorted(given) == sorted(expected):
        what, fix = "the same labels in another order", f"reorder its columns: {reorder}"
    else:
        what, fix = "other labels", f"give the columns of {against}, in the same order"
    problems.append(
        f"{name} has {what} than {against}: its column {j} is {given[j]!r} where {against} has "
        f"{expected[j]!r}. Labels are matched by position; {fix}."
    )


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning, issued by the function that calls this one,
    name the first caller outside this package and skorch: the user's line, however deep
    the calls (``predict`` -> ``predict_proba`` -> ``decision_function``, or a skorch
    callback inside ``fit``) that led to it."""
    skorch = sys.modules.get("skorch")
    inside = (_PACKAGE_DIR,) if skorch is None else (_PACKAGE_DIR, os.path.dirname(skorch.__file__) + os.sep)
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame = frame.f_back
        level += 1
    return level


def warn_misaligned_rows(X: object, Y: object, *, name: str = "X", y_name: str = "Y") -> None:
    """Warn when ``X`` and ``Y`` are pandas objects with the same index labels in another order.

    Rows are matched by position, as everywhere in scikit-learn; such indexes
    say that the rows were meant to match by label, and they do not.
    """
    x_index, y_index = getattr(X, "index", None), getattr(Y, "index", None)
    if not (hasattr(x_index, "is_unique") and hasattr(y_index, "is_unique")):  # not both pandas
        return
    if (
        len(x_index) != len(y_index)
        or not (x_index.is_unique and y_index.is_unique)
        or x_index.equals(y_index)
    ):
        return
    if set(x_index) != set(y_index):  # other rows (a reset index, say): nothing to tell
        return
    xs, ys = x_index.tolist(), y_index.tolist()  # Python values: numpy's reprs say np.int64(...)
    j = next(i for i, (a, b) in enumerate(zip(xs, ys, strict=True)) if a != b)
    warnings.warn(
        f"{name} and {y_name} have the same index labels in another order (row {j}: {xs[j]!r} "
        f"in {name}, {ys[j]!r} in {y_name}), but rows are matched by position, not by index. "
        f"Align them first, e.g. {y_name}.loc[{name}.index], or pass {name}.to_numpy() if the order "
        "is right as it is.",
        UserWarning,
        stacklevel=caller_stacklevel(),
    )


def never_positive(Y: np.ndarray, label_names: Sequence[str]) -> list[str]:
    """The names of the label columns of ``Y`` with no positive example, in column order."""
    return [str(label_names[j]) for j in np.flatnonzero(Y.sum(axis=0) == 0)]


def _warn_never_positive(Y: np.ndarray, label_names: Sequence[str], weighted: bool, message: str) -> None:
    """Issue an :class:`UnusedLabelWarning` for the label columns of ``Y`` with no positive.

    ``message`` holds ``{count}``, ``{among}`` (what ``weighted`` adds: the rows of ``Y`` are
    the texts whose weight is above 0) and ``{names}`` (the first ten).
    """
    never = never_positive(Y, label_names)
    if never:
        among = " (among the texts of weight above 0)" if weighted else ""
        warnings.warn(
            message.format(count=len(never), among=among, names=", ".join(never[:10])),
            UnusedLabelWarning,
            stacklevel=caller_stacklevel(),
        )


def warn_unused_labels(Y: np.ndarray, label_names: Sequence[str], *, weighted: bool = False) -> None:
    """Warn about label columns with no positive example in the training data."""
    _warn_never_positive(
        Y,
        label_names,
        weighted,
        "{count} label column(s) are never positive in the training data{among} ({names}); the "
        "model can only learn to predict 0 for them.",
    )


def warn_untuned_labels(
    Y: np.ndarray, label_names: Sequence[str], default: float, *, weighted: bool = False
) -> None:
    """Warn about label columns that threshold tuning cannot tune: no positive example."""
    _warn_never_positive(
        Y,
        label_names,
        weighted,
        "{count} label column(s) have no positive example in the tuning data{among} ({names}); "
        f"their thresholds were not tuned and keep {default}. Tune on data with at least one "
        "positive per label, e.g. a larger validation set.",
    )


def warn_single_label(n_labels: int) -> None:
    """Warn that scikit-learn's scorers misread a model of one label column."""
    if n_labels == 1:
        warnings.warn(
            "Y has a single label column. scikit-learn reads a one-column target as binary and a "
            "classifier with one entry in classes_ as scoring the other class: its 'roc_auc' "
            "scorer gives 1 - AUC for this model, and 'average_precision', 'f1', 'neg_log_loss' "
            "and 'neg_brier_score' refuse it. In GridSearchCV or cross_validate use "
            "scoring='f1_macro', 'accuracy' or a callable such as "
            "lambda est, X, y: roc_auc_score(y, est.predict_proba(X)).",
            SingleLabelWarning,
            stacklevel=caller_stacklevel(),
        )


def default_label_names(n_labels: int) -> list[str]:
    """The label names of a fit whose Y had none: the column numbers as text."""
    return [str(j) for j in range(n_labels)]


def device_here(saved: str) -> str:
    """Where a model saved or pickled on device ``saved`` goes on this machine.

    ``saved`` itself when this machine has it, else the CPU (a GPU this
    machine lacks: no CUDA, or no such index).
    """
    return check_device(saved, Problems()) or "cpu"


def check_device(device: object, problems: Problems, *, name: str = "device") -> str | None:
    """Resolve ``device`` (``"auto"``: CUDA when available) and check this machine has it.

    Returns the device to use, or None after recording in ``problems`` why
    ``device`` cannot be used: not a CPU or CUDA device, CUDA missing, or a
    CUDA index beyond this machine's devices.
    """
    import torch

    resolved = str(device) if isinstance(device, torch.device) else device
    if resolved == "auto":
        resolved = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(resolved).type if isinstance(resolved, str) else None
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        problems.append(f"{name} must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}.")
        return None
    if kind == "cuda":
        if not torch.cuda.is_available():
            problems.append(
                f"{name}={device!r} but CUDA is not available on this machine; "
                f"use {name}='cpu' or {name}='auto'."
            )
            return None
        index, count = torch.device(resolved).index, torch.cuda.device_count()
        if index is not None and index >= count:
            problems.append(
                f"{name}={device!r} but this machine has {count} CUDA device(s), "
                f"'cuda:0' to 'cuda:{count - 1}'."
            )
            return None
    return resolved


def check_seed(value: object, problems: Problems, *, name: str = "random_state") -> None:
    """``value`` must be what ``check_random_state`` takes: None, a numpy seed or a RandomState."""
    in_range = is_int(value) and 0 <= value < 2**32  # numpy's seeds
    if not (value is None or in_range or isinstance(value, np.random.RandomState)):
        problems.append(
            f"{name} must be None, an int in [0, 2**32 - 1] or a numpy RandomState, got {value!r}."
        )


def check_flag(value: object, name: str, problems: Problems) -> bool:
    """``value`` must be True or False (Python's or numpy's); returns whether it is."""
    if isinstance(value, (bool, np.bool_)):
        return True
    problems.append(f"{name} must be True or False, got {value!r}.")
    return False


def is_param_group_pairs(value: object) -> bool:
    """Whether ``value`` is skorch's ``optimizer__param_groups``: a list of (pattern, options)
    pairs, each a pattern string and a dict (tuples or lists, as JSON gives them back)."""
    return isinstance(value, (list, tuple)) and all(
        isinstance(item, (tuple, list))
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], dict)
        for item in value
    )


def is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def by_label(value: object) -> dict[str, object] | None:
    """A per-label parameter's values keyed by label name, where it is given that way.

    A mapping, or a pandas Series whose index is anything but the positions
    ``0..n-1``, names its labels; keys are compared as text, as label names
    are. None for a number or a sequence, which are matched by position.
    """
    if isinstance(value, Mapping):
        return {str(key): item for key, item in value.items()}
    if hasattr(value, "to_numpy") and hasattr(value, "index") and getattr(value, "ndim", None) == 1:
        index = list(value.index)
        if index != list(range(len(index))):
            return {str(key): item for key, item in zip(index, value.to_numpy().tolist(), strict=True)}
    return None


def check_per_label(
    value: object,
    name: str,
    problems: Problems,
    *,
    low: float,
    high: float | None,
    labels: Sequence[str] | None = None,
    whose: str = "Y",
) -> np.ndarray | None:
    """Validate a scalar or per-label parameter; return it as a 1-D float array.

    The value is a number, a sequence (one number per label, by position) or
    a mapping / labelled pandas Series (by label name, see :func:`by_label`).
    With ``labels``, the label names of ``whose`` (``"Y"`` or ``"the model"``),
    the result holds one value per label, in their order, and a value that
    does not fit them is a problem; without, the values as given.
    """
    high_text = "" if high is None else f" and <= {high}"
    named = by_label(value)
    if is_number(value):
        arr = np.asarray([value], dtype=np.float64)
    else:
        try:
            arr = np.asarray(value if named is None else list(named.values()), dtype=np.float64)
        except (TypeError, ValueError):
            problems.append(f"{name} must be a number or an array of numbers, got {describe(value)}.")
            return None
        if arr.ndim != 1:
            problems.append(f"{name} must be a number or a 1-D array (one per label), got shape {arr.shape}.")
            return None
    if not np.isfinite(arr).all() or (arr < low).any() or (high is not None and (arr > high).any()):
        problems.append(f"{name} must be >= {low}{high_text} (finite), got {describe(value)}.")
        return None
    if named is not None and len(named) < len(value):  # 1 and "1", or a repeated Series index
        keys = value.keys() if isinstance(value, Mapping) else value.index
        repeated = [key for key, count in Counter(str(key) for key in keys).items() if count > 1]
        problems.append(f"{name} names the label(s) {first_few(repeated, repr)} more than once.")
        return None
    if labels is None:
        return arr
    if named is not None:
        missing = [label for label in labels if label not in named]
        known = set(labels)
        unknown = [key for key in named if key not in known]
        if missing or unknown:
            gaps = [f"no value for {first_few(missing, repr)}"] if missing else []
            gaps += [f"{first_few(unknown, repr)} not among them"] if unknown else []
            problems.append(
                f"{name} is given by label name, so it needs one value for each label of {whose} "
                f"({first_few(list(labels), repr)}): {'; '.join(gaps)}."
            )
            return None
        values = dict(zip(named, arr, strict=True))
        return np.array([values[label] for label in labels], dtype=np.float64)
    if len(arr) not in (1, len(labels)):
        problems.append(
            f"{name} has {len(arr)} values but {whose} has {len(labels)} labels; "
            "give one number, one per label or a mapping from label name to value."
        )
        return None
    return np.broadcast_to(arr, (len(labels),)).astype(np.float64)
