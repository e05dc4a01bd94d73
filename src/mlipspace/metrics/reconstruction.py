r"""Feature reconstruction measures GFRE, GFRD and LFRE with scikit-matter semantics.

Reconstruct a target space :math:`Y` from a source space :math:`X` (rows = the same samples, same
order) [Goscinski2021]_. Defaults are scikit-matter 0.4's, reimplemented with our own linear algebra:

* split: both indices None -> ``train_test_split(arange(n), test_size=0.5, train_size=0.5,
  random_state=0x5F3759DF, shuffle=True)``; one given -> the other is its sorted complement;
* scaling: per space, centre the columns and divide by one global scale so that the training rows
  have total variance 1 (``StandardFlexibleScaler(column_wise=False)`` fitted on the training rows);
* regression: ``Ridge2FoldCV(alphas=geomspace(1e-9, 0.9, 20), alpha_type="relative",
  regularization_method="cutoff", random_state=0x5F3759DF, shuffle=True,
  scoring="neg_root_mean_squared_error")``: truncated SVD with cutoff :math:`\alpha s_{max}`,
  :math:`\alpha` chosen by 2-fold CV on the training rows (first best), refit on all of them.

Measures (:math:`\hat y_i` the ridge prediction of test row :math:`i`):

.. math::
    \mathrm{GFRE} = \sqrt{\tfrac1{n_{test}}\textstyle\sum_i \|y_i - \hat y_i\|^2},\qquad
    \mathrm{GFRD} = \sqrt{\tfrac1{n_{test}}\textstyle\sum_i \|\hat y_i - x_i Q\|^2},

with :math:`Q` the orthogonal (Procrustes) map of the training rows onto their ridge predictions,
both zero-padded to :math:`m=\max(d_X, d_Y)` columns. scikit-matter pads the same way but fails
when :math:`d_X > d_Y` (its issue #269); with the padding the per-row distortion is well defined
for any widths (for :math:`d_X > d_Y` it includes the part of :math:`x_i` that :math:`Q` must send
to the padding columns). LFRE replaces the global ridge by one local ridge per test row, fitted on
its ``n_local_points`` nearest training rows (in scaled X), centred on their means.

All computations run in float64 (scikit-matter keeps float32 input in float32, so compare with it
on float64 data). Exact neighbour-distance ties are broken by the lower row index (see
:mod:`mlipspace.metrics._knn`), so LFRE does not depend on the order of ``train_idx``.

.. [Goscinski2021] A. Goscinski, G. Fraux, G. Imbalzano, M. Ceriotti, "The role of feature space
   in atomistic learning", Mach. Learn.: Sci. Technol. 2, 025028 (2021).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from mlipspace.errors import InputError
from mlipspace.metrics._checks import (
    ALPHAS,
    as_matrix,
    check_k,
    check_rows,
    check_variance,
    kfold_halves,
    resolve_split,
)
from mlipspace.metrics._global import global_measure
from mlipspace.metrics._gram import FastGramSource, GramSource, _torch_eigh
from mlipspace.metrics._knn import knn_indices
from mlipspace.metrics._local import LocalSource, namespace

__all__ = [
    "gfrd",
    "gfre",
    "lfre",
    "pointwise_gfrd",
    "pointwise_gfre",
    "pointwise_lfre",
    "rms",
]


def rms(values: np.ndarray) -> float:
    """Root mean square of pointwise errors: the aggregate of every measure here."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.linalg.norm(values) / np.sqrt(len(values)))


# --------------------------------------------------------------------------------------- global


def pointwise_gfre(X, Y, train_idx=None, test_idx=None, *, chunk_size: int = 32768) -> np.ndarray:
    r"""Per test row :math:`\|y_i - \hat y_i\|` of the global ridge reconstruction of Y from X.

    ``X``, ``Y``: (n, d) arrays, or array-likes with ``shape`` and row slicing (``np.memmap``,
    zarr, h5py), or re-iterables of row chunks: rows are streamed ``chunk_size`` at a time and only
    (d_X+d_Y)^2-sized R factors are kept, so data larger than memory work.
    Returns one value per row of ``test_idx`` (in its order).
    """
    return global_measure(X, Y, train_idx, test_idx, kind="gfre", chunk_size=chunk_size)[0]


def gfre(X, Y, train_idx=None, test_idx=None, *, chunk_size: int = 32768) -> float:
    """Global feature reconstruction error: RMS over test rows of :func:`pointwise_gfre`."""
    return rms(pointwise_gfre(X, Y, train_idx, test_idx, chunk_size=chunk_size))


def pointwise_gfrd(X, Y, train_idx=None, test_idx=None, *, chunk_size: int = 32768) -> np.ndarray:
    r"""Per test row :math:`\|\hat y_i - x_i Q\|`: distance between the ridge reconstruction and the
    best orthogonal map of X onto it (both zero-padded to max(d_X, d_Y) columns)."""
    return global_measure(X, Y, train_idx, test_idx, kind="gfrd", chunk_size=chunk_size)[0]


def gfrd(X, Y, train_idx=None, test_idx=None, *, chunk_size: int = 32768) -> float:
    """Global feature reconstruction distortion: RMS over test rows of :func:`pointwise_gfrd`."""
    return rms(pointwise_gfrd(X, Y, train_idx, test_idx, chunk_size=chunk_size))


# ---------------------------------------------------------------------------------------- local


def _scale(A: np.ndarray, train: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, float]:
    """StandardFlexibleScaler fitted on the training rows: (scaled training rows, mean, scale)."""
    C = np.take(A, train, axis=0)
    mean = C.mean(axis=0)
    C -= mean
    var = float(np.einsum("ij,ij->", C, C)) / C.shape[0]
    check_variance(var, name, var + float(np.dot(mean, mean)))
    scale = np.sqrt(var)
    C /= scale
    return C, mean, scale


def resolve_backend(device: str) -> str:
    """``"numpy"`` for the CPU path, else a torch device string. ``"auto"`` picks CUDA if visible.

    ``"torch-cpu"`` runs the torch implementation on the CPU (for testing the GPU code path)."""
    if device == "auto":
        import sys

        if "torch" not in sys.modules and not os.path.exists("/proc/driver/nvidia/version"):
            return "numpy"  # no NVIDIA driver: skip the (slow) torch import
        from mlipspace._device import resolve_device

        device = resolve_device("auto")
    if device == "cpu":
        return "numpy"
    if device == "torch-cpu":
        return "cpu"
    if str(device).startswith("cuda"):
        try:
            import torch
        except ImportError as exc:
            raise InputError(f"device={device!r} needs torch, which is not installed") from exc
        if not torch.cuda.is_available():
            raise InputError(f"device={device!r} requested but no CUDA GPU is visible")
        return str(device)
    raise InputError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'")


def _n_workers(n_jobs: int | None) -> int:
    if n_jobs is not None and n_jobs > 0:
        return int(n_jobs)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


#: CPU engine of the LFRE: "gram" (Gram eigendecompositions, rows certified and the rest refitted by
#: SVD in exact mode; see :mod:`._gram`) or "svd" (three SVDs per row, :class:`._local.LocalSource`).
CPU_ENGINE = "gram"
#: Pre-select neighbours in float32 (one pass, exact float64 re-ranking; see :mod:`._knn`).
KNN_FLOAT32 = True
#: ``mode="fast"`` CPU engine when k <= d: "mixed" (:class:`._gram.FastGramSource`: float64 CV,
#: float32 refit where well conditioned, torch's eigensolver when torch is installed) or "float64"
#: (the Gram engine without certificate).
FAST_ENGINE = "mixed"


class LocalProblem:
    """A source space prepared for LFRE: scaled training/test rows of X, neighbours, batches.

    Built once per source and reused for every target (see :func:`mlipspace.metrics.pairwise`).
    """

    def __init__(self, Xtr, Xte, train, k, *, device="auto", mode="exact", batch_size=None, n_jobs=None):
        if mode not in ("exact", "fast"):
            raise InputError(f"unknown mode {mode!r}; use 'exact' or 'fast'")
        self.backend = resolve_backend(device)
        self.mode = mode
        self.k = k
        self.Xtr, self.Xte = Xtr, Xte
        self.tie_key = np.asarray(train)
        f1, f2 = kfold_halves(k)
        self.n1 = f1.size
        self.fold_order = np.concatenate([f1, f2])  # neighbours gathered fold by fold
        self.n_jobs = _n_workers(n_jobs) if self.backend == "numpy" else 1
        if batch_size is None:
            batch_size = 64 if self.backend == "numpy" else 512
        self.batch_size = int(batch_size)
        nt = Xte.shape[0]
        self.batches = [(a, min(a + self.batch_size, nt)) for a in range(0, nt, self.batch_size)]
        self._train_sq = np.einsum("ij,ij->i", Xtr, Xtr)
        # float32 copy for the one-pass neighbour pre-selection (exact re-ranking in float64)
        self._train_f32 = Xtr.astype(np.float32) if self.backend == "numpy" and KNN_FLOAT32 else None
        self.fast_gram = (self.backend == "numpy" and mode == "fast" and FAST_ENGINE == "mixed"
                       and CPU_ENGINE == "gram" and k <= Xtr.shape[1])

    def run(self, targets: list) -> list[np.ndarray]:
        """Pointwise LFRE for each target given as (scaled Y train, scaled Y test), or as a
        :class:`~concurrent.futures.Future` of that pair (still being prepared while the first
        neighbourhoods are searched)."""
        nt = self.Xte.shape[0]
        outs = [np.empty(nt) for _ in targets]
        targets = _LazyTargets(targets)
        if self.backend == "numpy":
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:  # pragma: no cover - threadpoolctl is a dependency; stay usable without
                from contextlib import nullcontext

                def threadpool_limits(limits=None):
                    return nullcontext()

            ns = namespace("numpy")
            torch = _torch_eigh(self.Xte.shape[0]) if CPU_ENGINE == "gram" else None
            fallbacks = []
            skipped = [0, 0]  # batches (not certifiable, Gram-certified)

            def work(bounds):
                a, b = bounds
                nbr = knn_indices(self.Xtr, self.Xte[a:b], self.k, self.tie_key, train_sq=self._train_sq,
                                  train_f32=self._train_f32)
                nbr = nbr[:, self.fold_order]
                # exact mode: once most batches could not be certified (rank-deficient data), the
                # remaining ones go straight to the SVD engine instead of trying the Gram one first
                if self.fast_gram:
                    src = FastGramSource(np.take(self.Xtr, nbr, axis=0), self.Xte[a:b], self.n1, ALPHAS, torch=torch)
                    for out, (Ytr, Yte) in zip(outs, targets):
                        out[a:b] = src.errors(np.take(Ytr, nbr, axis=0), Yte[a:b])
                        fallbacks.append(src.n_redo)
                    return
                svd = CPU_ENGINE == "svd" or (self.mode == "exact" and skipped[0] >= 2 and skipped[0] > skipped[1])
                if svd:
                    src = LocalSource(ns, np.take(self.Xtr, nbr, axis=0), self.Xte[a:b], self.n1, ALPHAS, self.mode)
                else:
                    src = GramSource(np.take(self.Xtr, nbr, axis=0), self.Xte[a:b], self.n1, ALPHAS,
                                     certify=self.mode == "exact", torch=torch)
                    skipped[0 if src.skip else 1] += 1
                for out, (Ytr, Yte) in zip(outs, targets):
                    out[a:b] = src.errors(np.take(Ytr, nbr, axis=0), Yte[a:b])
                    fallbacks.append(b - a if svd and CPU_ENGINE != "svd" else getattr(src, "n_fallback", 0))

            torch_threads = torch.get_num_threads() if torch is not None else None
            try:
                if torch is not None:
                    torch.set_num_threads(1)
                with threadpool_limits(limits=1):
                    if self.n_jobs == 1 or len(self.batches) == 1:
                        for bounds in self.batches:
                            work(bounds)
                    else:
                        with ThreadPoolExecutor(self.n_jobs) as pool:
                            list(pool.map(work, self.batches))
            finally:
                if torch is not None:
                    torch.set_num_threads(torch_threads)
            self.n_fallback = sum(fallbacks)
            return outs
        return self._run_torch(targets, outs)

    def _run_torch(self, targets, outs):
        from mlipspace.metrics._knn import knn_indices_torch

        ns = namespace(self.backend)
        Xtr = ns.asarray(self.Xtr)
        Xte = ns.asarray(self.Xte)
        key = ns.index(self.tie_key)
        order = ns.index(self.fold_order)
        Ys = [(ns.asarray(a), ns.asarray(b)) for a, b in targets]
        for a, b in self.batches:
            nbr = knn_indices_torch(Xtr, Xte[a:b], self.k, key)[:, order]
            src = LocalSource(ns, Xtr[nbr], Xte[a:b], self.n1, ALPHAS, self.mode)
            for out, (Ytr, Yte) in zip(outs, Ys):
                out[a:b] = ns.to_numpy(src.errors(Ytr[nbr], Yte[a:b]))
        return outs


class _LazyTargets:
    """The targets of :meth:`LocalProblem.run` as (Y train, Y test) pairs, a pending Future waited
    for once, by the first thread that needs it."""

    def __init__(self, targets):
        self._items = list(targets)
        self._lock = threading.Lock()

    def __iter__(self):
        for i in range(len(self._items)):
            yield self[i]

    def __getitem__(self, i):
        with self._lock:
            item = self._items[i]
            if isinstance(item, Future):
                item = self._items[i] = item.result()
            return item


def _scaled(A: np.ndarray, train: np.ndarray, test: np.ndarray, name: str):
    """(scaled training rows, scaled test rows) of one space, the scaler fitted on the training rows."""
    Atr, mean, scale = _scale(A, train, name)
    return Atr, (A[test] - mean) / scale


def _lfre_args(X, Y, n_local_points, n_neighbors, train_idx, test_idx):
    if n_local_points is None:
        n_local_points = n_neighbors
    elif n_neighbors is not None and n_neighbors != n_local_points:
        raise InputError(f"n_local_points={n_local_points} and n_neighbors={n_neighbors} disagree")
    if n_local_points is None:
        raise InputError("lfre needs n_local_points (the number of neighbours k)")
    X = as_matrix(X, "X")
    Y = as_matrix(Y, "Y")
    check_rows(X.shape[0], Y.shape[0])
    train, test = resolve_split(X.shape[0], train_idx, test_idx)
    k = check_k(n_local_points, train.size)
    return X, Y, train, test, k


def pointwise_lfre(X, Y, n_local_points=None, train_idx=None, test_idx=None, *, n_neighbors=None,
                   device: str = "auto", mode: str = "exact", batch_size: int | None = None,
                   n_jobs: int | None = None) -> np.ndarray:
    r"""Per test row error of the local ridge reconstruction of Y from X (one value per test row).

    For each test row: its ``n_local_points`` (alias ``n_neighbors``) nearest training rows in scaled
    X, nearest first and exact ties by lower row index; both neighbourhoods centred on their means;
    ``Ridge2FoldCV`` fitted on them; :math:`\|y_i - \bar y - (x_i-\bar x)W_i\|`.

    ``device``: ``"cpu"`` (NumPy, batched LAPACK on ``n_jobs`` threads), ``"cuda"`` (torch) or
    ``"auto"``. ``mode="fast"`` uses Gram-matrix eigendecompositions (approximation, see
    :mod:`mlipspace.metrics._local`).
    """
    X, Y, train, test, k = _lfre_args(X, Y, n_local_points, n_neighbors, train_idx, test_idx)
    with ThreadPoolExecutor(1) as pool:  # Y is scaled while X is, and while the first neighbours are found
        target = pool.submit(_scaled, Y, train, test, "Y")
        try:
            Xtr, Xte = _scaled(X, train, test, "X")
            prob = LocalProblem(Xtr, Xte, train, k, device=device, mode=mode, batch_size=batch_size,
                                n_jobs=n_jobs)
        except BaseException:
            target.cancel()
            raise
        return prob.run([target])[0]


def lfre(X, Y, n_local_points=None, train_idx=None, test_idx=None, *, n_neighbors=None,
         device: str = "auto", mode: str = "exact", batch_size: int | None = None,
         n_jobs: int | None = None) -> float:
    """Local feature reconstruction error: RMS over test rows of :func:`pointwise_lfre`."""
    return rms(pointwise_lfre(X, Y, n_local_points, train_idx, test_idx, n_neighbors=n_neighbors,
                              device=device, mode=mode, batch_size=batch_size, n_jobs=n_jobs))
