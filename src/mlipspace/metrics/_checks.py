"""Input validation of every measure, and the scikit-matter defaults of the reconstruction measures.

Every public measure (reconstruction and similarity) reads its matrices with :func:`as_matrix` /
:func:`check_pair` and its neighbour count with :func:`check_k`: bad input becomes
:class:`mlipspace.errors.InputError` (rows that do not match: :class:`~mlipspace.errors.AlignmentError`)
with a message that says what is wrong. :func:`resolve_split` fills the train/test defaults exactly
as scikit-matter 0.4 does (50/50 shuffled split with seed ``0x5F3759DF``).
"""

from __future__ import annotations

import numbers

import numpy as np

from mlipspace.errors import AlignmentError, InputError

#: Seed scikit-matter uses for its default train/test split and for the 2-fold CV of Ridge2FoldCV.
SEED = 0x5F3759DF
#: Relative singular-value cutoffs tried by the 2-fold CV (scikit-matter's defaults for the FREs).
ALPHAS = np.geomspace(1e-9, 0.9, 20)
#: Total training variance below which a space counts as constant (StandardFlexibleScaler's atol),
#: when no mean square is known.
ZERO_VARIANCE = 1e-12
#: With the mean square known: constant when variance <= this x mean square (std/rms <= 1e-10),
#: so the check is scale invariant like the measures (features in small units are not "constant").
ZERO_VARIANCE_RELATIVE = 1e-20


def as_matrix(A, name: str, *, keep_float: bool = False) -> np.ndarray:
    """``A`` as a finite float64 (n, d) array; InputError naming ``name`` otherwise.

    ``keep_float=True`` keeps a floating array in its dtype (float32 data stay float32 in memory;
    the chunked similarity measures upcast one chunk at a time)."""
    try:
        arr = np.asarray(A)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise InputError(f"{name}: cannot be read as an array ({exc})") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a 2-D (rows, features) array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name}: empty array of shape {arr.shape}")
    if not (keep_float and np.issubdtype(arr.dtype, np.floating)):
        arr = np.asarray(arr, dtype=np.float64)
    check_finite(arr, name)
    return arr


def check_finite(arr: np.ndarray, name: str, row_offset: int = 0) -> None:
    """InputError naming the first row holding NaN or inf."""
    if np.isfinite(arr.sum()):  # one pass, no temporaries: a finite sum has only finite terms
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        kind = "NaN" if np.isnan(arr[row, col]) else "inf"
        n_bad = int(bad.any(axis=1).sum())
        raise InputError(
            f"{name}: {kind} at row {row + row_offset}, column {col} ({n_bad} row(s) with non-finite values)"
        )


def check_rows(n_x: int, n_y: int, names=("X", "Y")) -> None:
    """AlignmentError unless both spaces have the same number of rows."""
    if n_x != n_y:
        raise AlignmentError(
            f"{names[0]} has {n_x} rows but {names[1]} has {n_y}: rows must describe the same samples in the same order"
        )


def check_pair(X, Y, *, min_rows: int = 2, keep_float: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two aligned feature matrices (see :func:`as_matrix`) with the same rows, at least ``min_rows``."""
    X = as_matrix(X, "X", keep_float=keep_float)
    Y = as_matrix(Y, "Y", keep_float=keep_float)
    check_rows(X.shape[0], Y.shape[0])
    if X.shape[0] < min_rows:
        raise InputError(f"this measure needs at least {min_rows} rows, got {X.shape[0]}")
    return X, Y


def _as_index(idx, n: int, what: str) -> np.ndarray:
    arr = np.asarray(idx)
    if arr.ndim != 1:
        raise InputError(f"{what}: expected a 1-D array of row indices, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{what} is empty")
    if arr.dtype == bool:
        raise InputError(f"{what}: pass integer row indices, not a boolean mask")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InputError(f"{what}: expected integer row indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0 or arr.max() >= n:
        raise InputError(f"{what}: indices must lie in [0, {n}), got range [{arr.min()}, {arr.max()}]")
    if np.unique(arr).size != arr.size:
        raise InputError(f"{what} contains repeated row indices")
    return arr


def default_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-matter's default split: ``train_test_split(arange(n), test_size=0.5, train_size=0.5,
    random_state=0x5F3759DF, shuffle=True)`` (test = first ceil(n/2) of a seeded permutation)."""
    n_test = int(np.ceil(0.5 * n))
    n_train = int(np.floor(0.5 * n))
    perm = np.random.RandomState(SEED).permutation(n)
    return perm[n_test : n_test + n_train].astype(np.int64), perm[:n_test].astype(np.int64)


def resolve_split(n: int, train_idx=None, test_idx=None, *, min_train: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Fill missing indices like scikit-matter: both None -> seeded 50/50 split; one None -> the
    sorted complement of the other. Raises InputError for empty, out-of-range, repeated or
    overlapping indices, and for fewer than ``min_train`` training rows."""
    if n < 2:
        raise InputError(f"need at least 2 rows, got {n}")
    if train_idx is None and test_idx is None:
        train, test = default_split(n)
    elif train_idx is None:
        test = _as_index(test_idx, n, "test_idx")
        train = np.setdiff1d(np.arange(n), test)
        if train.size == 0:
            raise InputError("test_idx covers every row: no training rows are left")
    elif test_idx is None:
        train = _as_index(train_idx, n, "train_idx")
        test = np.setdiff1d(np.arange(n), train)
        if test.size == 0:
            raise InputError("train_idx covers every row: no test rows are left")
    else:
        train = _as_index(train_idx, n, "train_idx")
        test = _as_index(test_idx, n, "test_idx")
        overlap = np.intersect1d(train, test)
        if overlap.size:
            raise InputError(
                f"train_idx and test_idx overlap in {overlap.size} row(s) (first: {overlap[0]}); "
                "a reconstruction error must be measured on rows it was not fitted on"
            )
    if train.size < min_train:
        raise InputError(f"need at least {min_train} training rows, got {train.size}")
    return train, test


def kfold_halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The two folds of ``KFold(n_splits=2, shuffle=True, random_state=0x5F3759DF)``'s first split,
    as Ridge2FoldCV uses them: (fold1 = training part, fold2 = held-out part), both sorted."""
    perm = np.random.RandomState(SEED).permutation(n)
    n_first = n // 2 + (n % 2)
    mask = np.zeros(n, dtype=bool)
    mask[perm[:n_first]] = True
    idx = np.arange(n)
    return idx[~mask], idx[mask]


def check_k(k, n_max: int, *, minimum: int = 1, why: str = "", pool: str = "the training set") -> int:
    """The neighbour count ``k`` as an int in [minimum, n_max]; InputError saying what is wrong.

    ``pool`` names where the neighbours come from (``n_max`` rows), ``why`` explains the minimum."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise InputError(f"k (the number of neighbours) must be an integer, got {k!r}")
    k = int(k)
    if k < minimum:
        raise InputError(f"k must be at least {minimum}{why}, got {k}")
    if k > n_max:
        raise InputError(f"k={k} is larger than {pool} ({n_max} rows): choose fewer neighbours or more rows")
    return k


def check_variance(total_var: float, name: str, mean_square: float | None = None) -> None:
    """InputError when the training rows of ``name`` are constant.

    ``mean_square`` (total variance + squared norm of the column means) makes the test relative:
    scaling a space by any factor neither creates nor removes the error.
    """
    if mean_square is None:
        constant, limit = total_var < ZERO_VARIANCE, f"< {ZERO_VARIANCE:g}"
    else:
        constant = total_var <= 0.0 or total_var <= ZERO_VARIANCE_RELATIVE * mean_square
        limit = f"<= {ZERO_VARIANCE_RELATIVE:g} x the mean square {mean_square:.3g}"
    if not np.isfinite(total_var) or constant:
        raise InputError(
            f"{name}: the training rows have zero variance (total variance {total_var:.3g} {limit}); "
            "a constant feature space cannot be scaled or compared"
        )
