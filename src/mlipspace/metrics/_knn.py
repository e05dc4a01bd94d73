r"""Exact k nearest training rows by blocked partial selection, with deterministic ties.

Two passes over chunks of the training set, never an n_test x n_train matrix and never a full sort:

1. squared distances :math:`|t|^2 + |x|^2 - 2 x\cdot t` of a test batch against one training chunk
   (one GEMM), ``np.partition`` keeps the k smallest per row, merged across chunks -> the k-th
   smallest distance :math:`d_k` of every test row;
2. every training row with distance :math:`\le d_k + \tau` (:math:`\tau` covers the rounding of the
   expanded formula) becomes a candidate; candidates get their distance recomputed directly as
   :math:`\sum_j (t_j - x_j)^2` (bitwise equal for identical rows) and are ordered by
   (distance, tie key). The first k are the neighbours, nearest first.

The tie key is the caller's row index of each training row, so exactly tied neighbours (duplicated
rows: symmetry-equivalent atoms) are always taken lowest row index first, independent of the order
in which the training rows are listed.
"""

from __future__ import annotations

import numpy as np

#: Relative slack on the k-th distance that absorbs the rounding error of |t|^2 + |x|^2 - 2 x.t.
_SLACK = 1e-10


def knn_indices(X_train: np.ndarray, X_test: np.ndarray, k: int, tie_key: np.ndarray | None = None,
                *, train_sq: np.ndarray | None = None, chunk: int = 8192, train_f32: np.ndarray | None = None,
                extra: int = 32) -> np.ndarray:
    r"""Indices (n_test, k) into ``X_train`` of the k nearest rows of each test row, nearest first,
    exact ties broken by ascending ``tie_key`` (default: position in ``X_train``).

    With ``train_f32`` (``X_train`` as float32) one pass in float32 keeps the ``k + extra``
    smallest distances per row; every training row within the k-th distance plus a rigorous bound
    on the float32 rounding is a candidate, ranked exactly (same result as the float64 passes):
    by its float32 value where the per-pair bounds separate it from every other candidate, by its
    float64 distance and tie key within groups of overlapping bounds (:func:`_rank_intervals`).
    Rows whose candidate set may be incomplete (more than ``extra`` rows within the bound of the
    k-th distance, e.g. many duplicated rows) take the two float64 passes."""
    n_train = X_train.shape[0]
    if tie_key is None:
        tie_key = np.arange(n_train)
    if train_sq is None:
        train_sq = np.einsum("ij,ij->i", X_train, X_train)
    m = min(k + extra, n_train)
    if train_f32 is None or m >= n_train:
        return _knn_two_pass(X_train, X_test, k, tie_key, train_sq, chunk)
    test_sq = np.einsum("ij,ij->i", X_test, X_test)
    nt, d = X_test.shape
    bv, bi = _preselect32(train_f32, train_sq.astype(np.float32), X_test.astype(np.float32),
                          test_sq.astype(np.float32), m, chunk)
    bv = bv.astype(np.float64)
    kth = np.partition(bv, k - 1, axis=1)[:, k - 1]
    # |D32 - D| <= (2 d + 16) u (|t|^2 + |x|^2): rounding of the inputs and of the expanded formula
    tol = (2 * d + 16) * float(np.finfo(np.float32).eps) * (test_sq + train_sq.max()) + 1e-300
    thr = kth + tol
    complete = bv.max(axis=1) > thr  # everything dropped is >= the largest value kept
    out = np.empty((nt, k), dtype=np.int64)
    bad = np.flatnonzero(~complete)
    if bad.size:
        out[bad] = _knn_two_pass(X_train, X_test[bad], k, tie_key, train_sq, chunk)
    good = np.flatnonzero(complete)
    if good.size:
        bv, bi = bv[good], bi[good]
        # per-pair bound: the float32 value of each candidate is within ptol of its exact distance
        ptol = (2 * d + 16) * float(np.finfo(np.float32).eps) * (test_sq[good, None] + train_sq[bi])
        out[good] = _rank_intervals(X_train, X_test[good], bv, bi, ptol, bv <= thr[good, None], tie_key, k)
    return out


def _rank_intervals(X_train, X_test, approx, cols, tol, cand, tie_key, k):
    r"""The k first candidates of each row by (exact distance, tie key), computing exact distances
    only where the float32 values cannot decide the order.

    Each candidate's exact squared distance lies in :math:`[a - \tau, a + \tau]` (``approx``,
    ``tol``; all (n, m)). Sorted by lower bound, a row splits into groups at every candidate whose
    lower bound exceeds the upper bounds of all before it (connected components of overlapping
    intervals): every member of an earlier group is then strictly nearer than every member of a
    later one, so only groups of two or more need their exact distances (well-separated
    neighbours, the usual case, cost nothing). Non-candidates (``cand`` False) sort last."""
    n, m = approx.shape
    lo = np.where(cand, approx - tol, np.inf)
    order = np.argsort(lo, axis=1, kind="stable")
    lo = np.take_along_axis(lo, order, 1)
    hi = np.take_along_axis(np.where(cand, approx + tol, np.inf), order, 1)
    cols = np.take_along_axis(cols, order, 1)
    start = np.ones((n, m), dtype=bool)  # first member of its group
    start[:, 1:] = lo[:, 1:] > np.maximum.accumulate(hi, axis=1)[:, :-1]
    single = start.copy()
    single[:, :-1] &= start[:, 1:]  # next one starts a new group too
    need = ~single & np.isfinite(lo)
    exact = np.zeros((n, m))
    r, c = np.nonzero(need)
    if r.size:
        exact[r, c] = _exact_sq(X_train, X_test, r, cols[r, c])
    group = np.cumsum(start, axis=1) + (np.arange(n) * (m + 1))[:, None]
    key = np.where(need, tie_key[cols], 0)
    final = np.lexsort((key.ravel(), exact.ravel(), group.ravel())).reshape(n, m)
    final -= (np.arange(n) * m)[:, None]  # each row's entries stay in the row: group leads the sort
    return np.take_along_axis(cols, final[:, :k], 1)


def _preselect32(train_f32, s32, T32, t32, m, chunk):
    """(values, indices), both (n_test, m): the m smallest float32 expanded squared distances of
    each row of ``T32`` to the rows of ``train_f32`` (squared norms ``s32``, ``t32``), in no order."""
    n_train = train_f32.shape[0]
    Tm2 = T32 * np.float32(-2.0)  # exact scaling: D = |x|^2 - 2 x.t in one product and one add
    bv = bi = None
    for a in range(0, n_train, chunk):
        D = Tm2 @ train_f32[a : a + chunk].T
        D += s32[None, a : a + chunk]
        if D.shape[1] > m:
            idx = np.argpartition(D, m - 1, axis=1)[:, :m]
            vals = np.take_along_axis(D, idx, 1)
        else:
            idx = np.broadcast_to(np.arange(D.shape[1]), D.shape)
            vals = D
        idx = idx + a
        if bv is None:
            bv, bi = vals, idx
        else:
            bv, bi = np.concatenate([bv, vals], 1), np.concatenate([bi, idx], 1)
            if bv.shape[1] > m:
                sel = np.argpartition(bv, m - 1, axis=1)[:, :m]
                bv, bi = np.take_along_axis(bv, sel, 1), np.take_along_axis(bi, sel, 1)
    return bv + t32[:, None], bi  # |t|^2 does not change the order within a row: added last


def _rank(X_train, X_test, rows, cols, tie_key, k, nt):
    """The k first candidates of each test row by (exact distance, tie key)."""
    exact = _exact_sq(X_train, X_test, rows, cols)
    order = np.lexsort((tie_key[cols], exact, rows))
    rows, cols = rows[order], cols[order]
    counts = np.bincount(rows, minlength=nt)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = starts[:, None] + np.arange(k)[None, :]
    return cols[take]


def _exact_sq(X_train, X_test, rows, cols):
    r"""Squared distances :math:`\sum_j (t_j - x_j)^2` of the pairs (``X_test[rows]``,
    ``X_train[cols]``), computed directly: bitwise equal for identical rows."""
    diff = np.take(X_train, cols, axis=0)  # np.take: ~2x faster than fancy indexing here
    diff -= np.take(X_test, rows, axis=0)
    return np.einsum("ij,ij->i", diff, diff)


def _knn_two_pass(X_train, X_test, k, tie_key, train_sq, chunk):
    """The two float64 passes described in the module docstring."""
    n_train = X_train.shape[0]
    test_sq = np.einsum("ij,ij->i", X_test, X_test)
    nt = X_test.shape[0]

    # pass 1: k-th smallest (expanded) squared distance per test row
    best = None
    for a in range(0, n_train, chunk):
        D = _sqdist(X_test, X_train[a : a + chunk], test_sq, train_sq[a : a + chunk])
        part = np.partition(D, k - 1, axis=1)[:, :k] if D.shape[1] > k else D
        best = part if best is None else np.concatenate([best, part], axis=1)
        if best.shape[1] > k:
            best = np.partition(best, k - 1, axis=1)[:, :k]
    kth = best.max(axis=1)
    tol = _SLACK * (test_sq + train_sq.max()) + 1e-300
    thr = (kth + tol)[:, None]

    # pass 2: all candidates within the threshold, exact distances, ordered by (distance, key)
    rows, cols = [], []
    for a in range(0, n_train, chunk):
        D = _sqdist(X_test, X_train[a : a + chunk], test_sq, train_sq[a : a + chunk])
        r, c = np.nonzero(D <= thr)
        rows.append(r)
        cols.append(c + a)
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    return _rank(X_train, X_test, rows, cols, tie_key, k, nt)


def nearest_distance(Q: np.ndarray, R: np.ndarray, q_groups=None, r_groups=None, *, chunk: int = 512) -> np.ndarray:
    """Euclidean distance of each row of ``Q`` to its nearest row of ``R`` (blocks of ``chunk`` rows of
    ``Q``, the expanded formula of :func:`knn_indices`' first pass); with ``q_groups``/``r_groups``
    (e.g. the structure of each row) rows of the same group are not neighbours (inf when no other
    group is left). Used for symmetry twins and the training coverage of test atoms."""
    Q = np.asarray(Q, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    r_sq = np.einsum("ij,ij->i", R, R)
    out = np.empty(len(Q))
    for a in range(0, len(Q), chunk):
        q = Q[a:a + chunk]
        d2 = _sqdist(q, R, np.einsum("ij,ij->i", q, q), r_sq)
        if q_groups is not None:
            d2[np.asarray(q_groups[a:a + chunk])[:, None] == np.asarray(r_groups)[None, :]] = np.inf
        out[a:a + chunk] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def _sqdist(A: np.ndarray, B: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    D = A @ B.T
    D *= -2.0
    D += a_sq[:, None]
    D += b_sq[None, :]
    return D


def knn_indices_torch(X_train, X_test, k: int, tie_key, *, chunk: int = 16384):
    """torch twin of :func:`knn_indices` (same two passes; ``topk`` instead of ``partition``).

    Tensors on any device; returns an int64 tensor (n_test, k) on that device."""
    import torch

    n_train = X_train.shape[0]
    train_sq = (X_train * X_train).sum(1)
    test_sq = (X_test * X_test).sum(1)
    nt = X_test.shape[0]
    best = None
    for a in range(0, n_train, chunk):
        D = test_sq[:, None] + train_sq[None, a : a + chunk] - 2.0 * (X_test @ X_train[a : a + chunk].T)
        part = torch.topk(D, min(k, D.shape[1]), dim=1, largest=False, sorted=False).values
        best = part if best is None else torch.cat([best, part], dim=1)
        if best.shape[1] > k:
            best = torch.topk(best, k, dim=1, largest=False, sorted=False).values
    kth = best.max(dim=1).values
    thr = (kth + _SLACK * (test_sq + train_sq.max()) + 1e-300)[:, None]
    rows, cols = [], []
    for a in range(0, n_train, chunk):
        D = test_sq[:, None] + train_sq[None, a : a + chunk] - 2.0 * (X_test @ X_train[a : a + chunk].T)
        r, c = torch.nonzero(D <= thr, as_tuple=True)
        rows.append(r)
        cols.append(c + a)
    rows = torch.cat(rows)
    cols = torch.cat(cols)
    diff = X_train[cols] - X_test[rows]
    exact = (diff * diff).sum(1)
    # lexicographic (row, exact, key) by successive stable sorts, least significant key first
    order = torch.sort(tie_key[cols], stable=True).indices
    order = order[torch.sort(exact[order], stable=True).indices]
    order = order[torch.sort(rows[order], stable=True).indices]
    rows, cols = rows[order], cols[order]
    counts = torch.bincount(rows, minlength=nt)
    starts = torch.cumsum(counts, 0) - counts
    take = starts[:, None] + torch.arange(k, device=rows.device)[None, :]
    return cols[take]


def knn_self(X, k: int, *, backend, block: int | None = None, knn_precision: str = "float32") -> np.ndarray:
    """Indices (n, k) of each row's ``k`` nearest *other* rows of ``X`` (float64), nearest first.

    The same exact search and tie rule as :func:`knn_indices` (exact distance, then lower row index),
    on blocks of ``block`` query rows: each row asks for k + 1 neighbours among all rows and drops
    itself; when it is not among them (more than k rows coincide with it at lower indices), the
    first k are the answer. ``backend``: a :mod:`._backend` object (torch: :func:`knn_indices_torch`).
    """
    n = X.shape[0]
    step = int(block) if block else max(1, min(n, backend.block_elements // min(n, 8192)))
    out = np.empty((n, k), dtype=np.int64)
    if backend.name == "torch":
        Xd = backend.asarray(X)
        key = backend.index(np.arange(n))
        for s in range(0, n, step):
            e = min(n, s + step)
            out[s:e] = _drop_self(backend.to_numpy(knn_indices_torch(Xd, Xd[s:e], k + 1, key)), s)
        return out
    sq = np.einsum("ij,ij->i", X, X)
    f32 = X.astype(np.float32) if knn_precision == "float32" else None
    for s in range(0, n, step):
        e = min(n, s + step)
        out[s:e] = _drop_self(knn_indices(X, X[s:e], k + 1, train_sq=sq, train_f32=f32), s)
    return out


def _drop_self(nbr: np.ndarray, first: int) -> np.ndarray:
    """(b, k+1) neighbours of rows first, first+1, ... without the row itself (else the last one)."""
    drop = nbr == (first + np.arange(nbr.shape[0]))[:, None]
    drop[~drop.any(axis=1), -1] = True
    return nbr[~drop].reshape(nbr.shape[0], nbr.shape[1] - 1)
