"""Splitting multi-label data so that every label's positives are shared out in proportion.

A random split leaves a rare label's few positives where chance puts them:
with 5 positives and a 10% validation split, no positive reaches the
validation data 59% of the time, and its threshold cannot be tuned there.
Iterative stratification (Sechidis, Tsoumakas and Vlahavas, "On the
stratification of multi-label data", ECML PKDD 2011) deals out the positives
of the rarest label first, each to the part that still wants most of that
label, so every label ends up close to its share in every part.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import BaseCrossValidator
from sklearn.utils import check_random_state

from ._validation import InvalidInputError, Problems, check_flag, check_label_matrix, check_seed, is_int


def iterative_stratification(
    Y: np.ndarray, proportions: np.ndarray, rng: np.random.Generator | None
) -> np.ndarray:
    """The part (0 to ``len(proportions) - 1``) of each row of the binary matrix ``Y``.

    Part ``j`` gets about ``proportions[j]`` of the rows and of each label's
    positives. Rows are dealt in random order and ties (between labels and
    parts) broken at random with ``rng``; with ``rng=None``, rows are dealt in
    their order and ties go to the first label or part.
    """
    Y = np.asarray(Y) != 0
    n = len(Y)
    proportions = np.asarray(proportions, dtype=np.float64)
    counts = Y.sum(axis=0).astype(np.float64)
    wanted_rows = proportions * n  # rows each part still wants
    wanted = np.outer(proportions, counts)  # (parts, labels): positives each part still wants
    left = counts.copy()  # positives of each label not yet dealt
    part = np.full(n, -1, dtype=np.intp)
    unassigned = np.ones(n, dtype=bool)

    def one_of(candidates: np.ndarray) -> int:
        return int(candidates[0] if len(candidates) == 1 or rng is None else rng.choice(candidates))

    def pick(scores: np.ndarray, then: np.ndarray | None = None) -> int:
        """The part with the highest score; ties go to the highest ``then``, then as ``one_of``."""
        best = np.flatnonzero(scores == scores.max())
        if len(best) > 1 and then is not None:
            best = best[then[best] == then[best].max()]
        return one_of(best)

    while left.any():
        # The label with the fewest positives still to deal (ties as one_of breaks them).
        label = one_of(np.flatnonzero(left == left[left > 0].min()))
        rows = np.flatnonzero(unassigned & Y[:, label])
        if rng is not None:
            rng.shuffle(rows)
        for row in rows:
            j = pick(wanted[:, label], wanted_rows)
            part[row] = j
            unassigned[row] = False
            wanted[j] -= Y[row]
            wanted_rows[j] -= 1
            left -= Y[row]
    # Rows with no positive label fill what each part still wants.
    rows = np.flatnonzero(unassigned)
    if rng is not None:
        rng.shuffle(rows)
    for row in rows:
        j = pick(wanted_rows)
        part[row] = j
        wanted_rows[j] -= 1
    # A part left empty (possible only with very few rows) takes a row from the largest part.
    for j in range(len(proportions)):
        if n >= len(proportions) and not (part == j).any():
            largest = np.bincount(part, minlength=len(proportions)).argmax()
            part[one_of(np.flatnonzero(part == largest))] = j
    return part


def stratified_validation_split(
    Y: np.ndarray, valid_fraction: float, seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows), sorted, with every label's positives split in proportion.

    The validation part holds about ``valid_fraction`` of the rows (at least
    one, and at least one row is left for training).
    """
    part = iterative_stratification(Y, [1.0 - valid_fraction, valid_fraction], np.random.default_rng(seed))
    return np.flatnonzero(part == 0), np.flatnonzero(part == 1)


def _n_rows(X) -> int:
    """The number of rows of ``X``: a sequence, an array, a DataFrame or a sparse matrix."""
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) > 0:
        return int(shape[0])
    return len(X)


class MultilabelStratifiedKFold(BaseCrossValidator):
    """K-fold cross-validation that shares out every label's positives in proportion.

    scikit-learn's :class:`~sklearn.model_selection.StratifiedKFold` refuses a
    label matrix and :class:`~sklearn.model_selection.KFold` leaves a rare
    label's positives where chance puts them, so a fold may have none to
    score or tune a threshold on. This splitter uses iterative
    stratification (Sechidis et al., 2011): the positives of the rarest
    labels are dealt first, each to the fold that still wants most of that
    label; rows without a positive label fill the folds up to equal sizes.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2.
    shuffle : bool, default=True
        Deal the rows out in random order and break ties between labels and
        folds at random (with ``random_state``). With False the rows are
        dealt in their order and ties go to the first fold, so every call
        gives the same folds; ``random_state`` must then be None. The
        parameter has the name and meaning it has in ``iterstrat``'s splitter
        of this name, whose code therefore runs unchanged, but defaults to
        True.
    random_state : int, RandomState instance or None, default=None
        With ``shuffle=True``, the seed of that order and those ties. Pass an
        int for the same folds on every call.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_bert_multilabel import MultilabelStratifiedKFold
    >>> Y = np.zeros((12, 2), dtype=int)
    >>> Y[:3, 0] = 1  # a rare label: 3 positives
    >>> Y[::2, 1] = 1
    >>> cv = MultilabelStratifiedKFold(n_splits=3, random_state=0)
    >>> [int(Y[test, 0].sum()) for _, test in cv.split(np.zeros(12), Y)]
    [1, 1, 1]
    """

    def __init__(self, n_splits: int = 5, *, shuffle: bool = True, random_state=None):
        self.n_splits = n_splits
        self.shuffle = shuffle
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """The number of folds, ``n_splits``.

        Parameters
        ----------
        X, y, groups : object
            Not used; present for API compatibility.

        Returns
        -------
        n_splits : int
            The number of folds.
        """
        return self.n_splits

    def split(self, X, y, groups=None):
        """Yield ``(train, test)`` row indices for each fold.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, ...)
            Only its number of rows is used.
        y : array-like of shape (n_samples, n_labels)
            The binary label matrix to stratify on.
        groups : None
            Not used; present for API compatibility.

        Yields
        ------
        train : ndarray
        test : ndarray
        """
        problems = Problems()
        if not (is_int(self.n_splits) and self.n_splits >= 2):
            problems.append(f"n_splits must be an integer of at least 2, got {self.n_splits!r}.")
        if (
            check_flag(self.shuffle, "shuffle", problems)
            and not self.shuffle
            and self.random_state is not None
        ):
            problems.append(
                "random_state has no effect with shuffle=False (the folds do not depend on chance); "
                "set shuffle=True or leave random_state=None."
            )
        else:
            check_seed(self.random_state, problems)
        if y is None:
            problems.append("y is required: the folds are stratified on the label matrix, split(X, Y).")
            Y = None
        else:
            Y, _ = check_label_matrix(y, problems, name="y")
        n = _n_rows(X)
        if Y is not None and len(Y) != n:
            problems.append(f"X has {n} rows but y has {len(Y)}; they must match.")
        if not problems and self.n_splits > n:
            problems.append(f"n_splits={self.n_splits} is more than the {n} rows; lower it.")
        if problems:
            raise InvalidInputError(problems)
        rng = None
        if self.shuffle:
            rng = np.random.default_rng(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        shares = np.full(self.n_splits, 1.0 / self.n_splits)
        part = iterative_stratification(Y, shares, rng)
        rows = np.arange(n)
        for fold in range(self.n_splits):
            test = part == fold
            yield rows[~test], rows[test]
