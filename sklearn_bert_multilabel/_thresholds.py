"""Per-label decision thresholds chosen to maximise an F-beta score or a constrained rate."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from ._validation import (
    Problems,
    caller_stacklevel,
    cells,
    check_label_matrix,
    check_label_names,
    check_sample_weight,
    unnamed_columns,
)

#: Threshold metrics by name, each an F-beta score with this beta.
THRESHOLD_METRICS = {"f1": 1.0, "f0.5": 0.5, "f2": 2.0}
#: Constrained metrics: ``"precision@recall=R"`` maximises precision among the
#: thresholds whose recall is at least R; ``"recall@precision=P"`` the reverse.
CONSTRAINED_METRICS = ("precision@recall", "recall@precision")
#: Threshold kept by a label that has no positive example in the tuning data.
DEFAULT_THRESHOLD = 0.5

_CONSTRAINED = re.compile(f"({'|'.join(CONSTRAINED_METRICS)})=(.*)")
METRIC_CHOICES = '"f1", "f0.5", "f2", "precision@recall=R" or "recall@precision=P" (R, P in (0, 1])'


def parse_metric(metric: object) -> tuple[str, float]:
    """``(kind, value)`` of a threshold metric: ``("fbeta", beta)`` or ``(constraint, level)``.

    Raises ValueError, with a message that lists the choices, for anything else.
    """
    if isinstance(metric, str):
        if metric in THRESHOLD_METRICS:
            return "fbeta", THRESHOLD_METRICS[metric]
        match = _CONSTRAINED.fullmatch(metric)
        if match:
            try:
                level = float(match.group(2))
            except ValueError:
                level = float("nan")
            if 0.0 < level <= 1.0:
                return match.group(1), level
    raise ValueError(f"must be one of {METRIC_CHOICES}; got {metric!r}")


def _cuts(scores: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None):
    """Scores sorted high to low, true positives and predicted positives after each cut, valid cuts.

    With ``weight``, the counts are sums of the rows' weights.
    """
    # Any order of tied scores gives the same counts at the end of their run, the only cut
    # among them that is tried: numpy's default sort, several times as fast as a stable one.
    order = np.argsort(-scores)
    s = scores[order]
    if weight is None:
        tp = np.cumsum(y[order])
        k = np.arange(1, len(s) + 1)  # number predicted positive when cutting after k
    else:
        w = weight[order]
        tp = np.cumsum(w * y[order])
        k = np.cumsum(w)
    # A cut is valid only where the score changes (ties go the same side).
    valid = np.append(s[1:] < s[:-1], True)
    return s, tp, k, valid


def _threshold_at(s: np.ndarray, best: int) -> float:
    """Halfway between the lowest score predicted positive and the next lower score.

    When every row is predicted positive, the threshold lies just below the
    lowest score: not below 0 for scores that are all at least 0 (such as
    probabilities), but below a negative score (such as a logit) too.
    """
    high = s[best]
    if best + 1 < len(s):
        low = s[best + 1]
    else:
        low = high - 1e-6
        if high >= 0:
            low = max(low, 0.0)
    middle = (high + low) / 2
    # Scores one float apart (or so large that 1e-6 is lost) have no middle: cut at the score.
    return float(middle if low < middle <= high else high)


def _positives(y: np.ndarray, weight: np.ndarray | None) -> float:
    """The number of positives of ``y``, or their total weight."""
    return float(y.sum()) if weight is None else float(weight[y].sum())


def best_threshold(
    scores: np.ndarray, y: np.ndarray, beta: float = 1.0, weight: np.ndarray | None = None
) -> float:
    """Threshold on ``scores`` maximising F-beta of ``scores >= threshold`` vs ``y``.

    Every distinct cut of the sorted scores is tried, so the result is exact
    (not a grid). The returned threshold lies halfway between the lowest
    score predicted positive and the next lower score. A label with no
    positive in ``y`` (no positive of weight above 0, with ``weight``) gets
    :data:`DEFAULT_THRESHOLD`. ``weight`` weighs each row's counts, as
    ``sample_weight`` does in scikit-learn's metrics.
    """
    y = np.asarray(y, dtype=bool)
    n_pos = _positives(y, weight)
    if n_pos == 0 or len(scores) == 0:
        return DEFAULT_THRESHOLD
    s, tp, k, valid = _cuts(scores, y, weight)
    b2 = beta * beta
    fbeta = (1 + b2) * tp / ((1 + b2) * tp + b2 * (n_pos - tp) + (k - tp))
    fbeta = np.where(valid, fbeta, -1.0)
    best = int(np.argmax(fbeta))
    if fbeta[best] <= 0:
        return DEFAULT_THRESHOLD
    return _threshold_at(s, best)


def constrained_threshold(
    scores: np.ndarray, y: np.ndarray, kind: str, level: float, weight: np.ndarray | None = None
) -> tuple[float, bool]:
    """Threshold maximising one rate while the other stays at or above ``level``.

    ``kind="precision@recall"``: the highest precision among the cuts with
    recall >= ``level`` (ties: the higher recall). ``kind="recall@precision"``:
    the highest recall among the cuts with precision >= ``level`` (ties: the
    higher precision). Every distinct cut is tried, as in
    :func:`best_threshold`. Returns the threshold and whether the constraint
    was met. When no cut meets it (precision ``level`` is out of reach), the
    threshold lies just above the highest score, so the label is predicted
    for no row of this data: recall at precision ``level`` is 0. For
    probabilities it is at most 1. A label with no positive in ``y`` gets
    :data:`DEFAULT_THRESHOLD` (and counts as met). ``weight`` weighs each
    row's counts, as in :func:`best_threshold`.
    """
    if kind not in CONSTRAINED_METRICS:
        raise ValueError(f"kind must be one of {CONSTRAINED_METRICS}, got {kind!r}")
    y = np.asarray(y, dtype=bool)
    n_pos = _positives(y, weight)
    if n_pos == 0 or len(scores) == 0:
        return DEFAULT_THRESHOLD, True
    s, tp, k, valid = _cuts(scores, y, weight)
    with np.errstate(divide="ignore", invalid="ignore"):  # k is 0 above rows of weight 0 only
        precision = np.where(k > 0, tp / np.where(k > 0, k, 1), 0.0)
    recall = tp / n_pos
    if kind == "precision@recall":
        objective, constraint = precision, recall
    else:
        objective, constraint = recall, precision
    # Small tolerance: a level such as 0.7 must accept 7 / 10 computed in floating point.
    feasible = valid & (constraint >= level - 1e-12)
    if not feasible.any():  # only recall@precision can miss: the last cut has recall 1
        above = float(np.nextafter(s[0], np.inf))
        return (min(above, 1.0) if 0.0 <= s[-1] and s[0] <= 1.0 else above), False
    # Lexicographic: the objective first, then the constraint's rate.
    candidates = np.flatnonzero(feasible)
    best = candidates[np.lexsort((constraint[candidates], objective[candidates]))[-1]]
    return _threshold_at(s, int(best)), True


def _check_scores_and_labels(
    proba: object, Y: object, sample_weight: object = None
) -> tuple[np.ndarray, np.ndarray, list[str] | None, np.ndarray | None]:
    """``proba`` as a 2-D float array without NaN, ``Y`` as a 0/1 matrix of its shape,
    ``Y``'s column names (None unless it is a DataFrame) and the checked weights."""
    problems = Problems()
    Y_arr, names = check_label_matrix(Y, problems)
    weight = None
    if sample_weight is not None:
        n_rows = None if Y_arr is None else len(Y_arr)
        weight = check_sample_weight(sample_weight, n_rows, problems, against="Y", rows="rows")
        if weight is not None:
            weight = weight / weight.max()  # the same cuts, and sums of weights near 1e308 stay finite
    if hasattr(proba, "columns") and not unnamed_columns(proba.columns):  # Y's columns, in Y's order
        check_label_names(
            [str(c) for c in proba.columns],
            names,
            problems,
            name="proba",
            against="Y",
            reorder="proba[Y.columns]",
        )
    if sp.issparse(proba):
        proba = proba.toarray()
    try:
        scores = np.asarray(proba, dtype=np.float64)
    except (TypeError, ValueError):
        problems.append("proba must hold numbers only: it does not convert to an array of floats.")
        scores = None
    if scores is not None:
        if scores.ndim != 2:
            problems.append(f"proba must be 2-D (n_samples, n_labels), got shape {scores.shape}.")
            scores = None
        elif np.isnan(scores).any():
            problems.append(f"proba contains {cells(np.isnan(scores), 'NaN')}.")
    if scores is not None and Y_arr is not None and scores.shape != Y_arr.shape:
        problems.append(
            f"proba and Y must be 2-D arrays of the same shape (n_samples, n_labels); "
            f"got {scores.shape} and {Y_arr.shape}."
        )
    if problems and Y_arr is None and scores is not None and np.isin(scores, (0.0, 1.0)).all():
        problems.append(
            "proba holds only 0 and 1 and Y does not: the arguments look swapped. The scores "
            "come first: tune_thresholds(proba, Y), unlike scikit-learn's metrics (y_true first)."
        )
    problems.raise_if_any()
    return scores, Y_arr, names, weight


def tune_thresholds(
    proba: np.ndarray,
    Y: np.ndarray,
    metric: str = "f1",
    *,
    label_names: Sequence[str] | None = None,
    sample_weight: object = None,
) -> np.ndarray:
    """One threshold per label (column) maximising ``metric`` on ``(proba, Y)``.

    Parameters
    ----------
    proba : array-like of shape (n_samples, n_labels)
        Scores, usually probabilities; any real scores work, such as the
        logits of ``decision_function`` (compare them with the thresholds
        returned: ``scores >= thresholds``).
    Y : array-like of shape (n_samples, n_labels)
        Binary labels (an array, a list of lists or a DataFrame).
    metric : str, default="f1"
        ``"f1"``, ``"f0.5"`` or ``"f2"`` (the F-beta score of each label),
        ``"precision@recall=R"`` (the highest precision with recall at
        least R) or ``"recall@precision=P"`` (the highest recall with
        precision at least P). A label whose precision never reaches P on
        this data gets a threshold above all its scores (it is predicted
        for none of these rows), with a warning.
    label_names : sequence of str, optional
        Names used in that warning; by default ``Y``'s column names if it
        is a DataFrame, column numbers otherwise.
    sample_weight : array-like of shape (n_samples,), optional
        Weight of each row in the counts of true and false positives and
        negatives, as in scikit-learn's metrics (finite, at least 0).

    Returns
    -------
    thresholds : ndarray of shape (n_labels,)
        Labels with no positive example (of weight above 0) keep 0.5.

    Raises
    ------
    InvalidInputError
        ``proba`` not 2-D numbers or with NaN, ``Y`` not a 0/1 matrix,
        their shapes differ, or ``sample_weight`` is not one valid weight
        per row (every problem listed together).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_bert_multilabel import tune_thresholds
    >>> proba = np.array([[0.9], [0.8], [0.7], [0.6], [0.3]])
    >>> Y = np.array([[1], [0], [1], [1], [0]])
    >>> tune_thresholds(proba, Y).round(3)  # best F1: 3 of the 4 texts above 0.45 are positive
    array([0.45])
    >>> tune_thresholds(proba, Y, "recall@precision=1").round(3)  # no false positive allowed
    array([0.85])
    """
    try:
        kind, value = parse_metric(metric)
    except ValueError as exc:
        raise ValueError(f"metric {exc}") from None
    proba, Y, names, weight = _check_scores_and_labels(proba, Y, sample_weight)
    label_names = names if label_names is None else label_names
    # One label per contiguous row: each label's column is then read without a stride.
    columns, positives = np.ascontiguousarray(proba.T), np.ascontiguousarray(Y.T, dtype=bool)
    if kind == "fbeta":
        return np.array(
            [best_threshold(s, y, value, weight) for s, y in zip(columns, positives, strict=True)],
            dtype=np.float64,
        )
    thresholds, missed = [], []
    for j, (s, y) in enumerate(zip(columns, positives, strict=True)):
        threshold, met = constrained_threshold(s, y, kind, value, weight)
        thresholds.append(threshold)
        if not met:
            missed.append(str(label_names[j]) if label_names is not None else str(j))
    if missed:
        warnings.warn(
            f"{metric}: no threshold reaches precision {value:g} on the tuning data for "
            f"label(s) {', '.join(missed)}; they get a threshold above all their scores, so they are "
            "predicted for none of these texts. Lower the precision floor to predict them.",
            UserWarning,
            stacklevel=caller_stacklevel(),
        )
    return np.array(thresholds, dtype=np.float64)


def bound_labels(
    proba: np.ndarray, predicted: np.ndarray, min_labels: int = 0, max_labels: int | None = None
) -> np.ndarray:
    """``predicted`` with each row's number of labels brought within ``[min_labels, max_labels]``.

    A row of fewer than ``min_labels`` labels gets the most probable of its
    other labels added; a row of more than ``max_labels`` keeps only its most
    probable ones. Ties go to the first column. ``predicted`` itself is
    returned when no row is out of bounds, and is never written into.
    """
    counts = predicted.sum(axis=1)
    short = np.flatnonzero(counts < min_labels)
    long = np.flatnonzero(counts > max_labels) if max_labels is not None else short[:0]
    if short.size == 0 and long.size == 0:
        return predicted
    predicted = predicted.copy()
    if short.size:
        # A predicted label sorts first, then the others from the most probable (stable: first column).
        order = np.argsort(np.where(predicted[short], -np.inf, -proba[short]), axis=1, kind="stable")
        predicted[short[:, None], order[:, :min_labels]] = True
    if long.size:
        # The predicted labels from the most probable, then the others.
        order = np.argsort(np.where(predicted[long], -proba[long], np.inf), axis=1, kind="stable")
        predicted[long] = False
        predicted[long[:, None], order[:, :max_labels]] = True
    return predicted
