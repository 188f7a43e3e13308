"""Per-label decision thresholds chosen to maximise an F-beta score."""

from __future__ import annotations

import numpy as np

#: Threshold metrics by name, each an F-beta score with this beta.
THRESHOLD_METRICS = {"f1": 1.0, "f0.5": 0.5, "f2": 2.0}
#: Threshold kept by a label that has no positive example in the tuning data.
DEFAULT_THRESHOLD = 0.5


def best_threshold(scores: np.ndarray, y: np.ndarray, beta: float = 1.0) -> float:
    """Threshold on ``scores`` maximising F-beta of ``scores >= threshold`` vs ``y``.

    Every distinct cut of the sorted scores is tried, so the result is exact
    (not a grid). The returned threshold lies halfway between the lowest
    score predicted positive and the next lower score. A label with no
    positive in ``y`` gets :data:`DEFAULT_THRESHOLD`.
    """
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    if n_pos == 0 or len(scores) == 0:
        return DEFAULT_THRESHOLD
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    tp = np.cumsum(y[order])
    k = np.arange(1, len(s) + 1)  # number predicted positive when cutting after k
    # A cut is valid only where the score changes (ties go the same side).
    valid = np.append(s[1:] < s[:-1], True)
    b2 = beta * beta
    fbeta = (1 + b2) * tp / ((1 + b2) * tp + b2 * (n_pos - tp) + (k - tp))
    fbeta = np.where(valid, fbeta, -1.0)
    best = int(np.argmax(fbeta))
    if fbeta[best] <= 0:
        return DEFAULT_THRESHOLD
    lower = s[best + 1] if best + 1 < len(s) else max(s[best] - 1e-6, 0.0)
    return float((s[best] + lower) / 2)


def tune_thresholds(proba: np.ndarray, Y: np.ndarray, metric: str = "f1") -> np.ndarray:
    """One threshold per label (column) maximising ``metric`` on ``(proba, Y)``."""
    beta = THRESHOLD_METRICS[metric]
    return np.array(
        [best_threshold(proba[:, j], Y[:, j], beta) for j in range(proba.shape[1])],
        dtype=np.float64,
    )
