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
its ``k`` nearest training rows (in scaled X), centred on their means (``k=None``:
:func:`default_k`).

All computations run in float64 (scikit-matter keeps float32 input in float32, so compare with it
on float64 data). Exact neighbour-distance ties are broken by the lower row index (see
:mod:`mlipspace.metrics._knn`), so LFRE does not depend on the order of ``train_idx``.

.. [Goscinski2021] A. Goscinski, G. Fraux, G. Imbalzano, M. Ceriotti, "The role of feature space
   in atomistic learning", Mach. Learn.: Sci. Technol. 2, 025028 (2021).
"""

from __future__ import annotations

import math
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
from mlipspace.metrics._backend import get_backend
from mlipspace.metrics._config import effective_n_jobs, resolve
from mlipspace.metrics._global import global_measure
from mlipspace.metrics._gram import FastGramSource, GramSource, _torch_eigh
from mlipspace.metrics._knn import knn_indices
from mlipspace.metrics._local import LocalSource
from mlipspace.metrics._registry import Measure

__all__ = [
    "RECONSTRUCTION_MEASURES",
    "default_k",
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


def pointwise_gfre(X, Y, *, train_idx=None, test_idx=None, chunk_size: int = 32768,
                   engine: str | None = None) -> np.ndarray:
    r"""Per test row :math:`\|y_i - \hat y_i\|` of the global ridge reconstruction of Y from X.

    ``X``, ``Y``: (n, d) arrays, or array-likes with ``shape`` and row slicing (``np.memmap``,
    zarr, h5py), or re-iterables of row chunks: rows are streamed ``chunk_size`` at a time and only
    (d_X+d_Y)^2-sized R factors are kept, so data larger than memory work.
    ``engine``: "gram" or "svd" (None: :func:`mlipspace.metrics.get_config`).
    Returns one value per row of ``test_idx`` (in its order).
    """
    return global_measure(X, Y, train_idx, test_idx, kind="gfre", chunk_size=chunk_size,
                          engine=resolve(engine=engine)["engine"])[0]


def gfre(X, Y, *, train_idx=None, test_idx=None, chunk_size: int = 32768, engine: str | None = None) -> float:
    """Global feature reconstruction error: RMS over test rows of :func:`pointwise_gfre`."""
    return rms(pointwise_gfre(X, Y, train_idx=train_idx, test_idx=test_idx, chunk_size=chunk_size, engine=engine))


def pointwise_gfrd(X, Y, *, train_idx=None, test_idx=None, chunk_size: int = 32768) -> np.ndarray:
    r"""Per test row :math:`\|\hat y_i - x_i Q\|`: distance between the ridge reconstruction and the
    best orthogonal map of X onto it (both zero-padded to max(d_X, d_Y) columns)."""
    return global_measure(X, Y, train_idx, test_idx, kind="gfrd", chunk_size=chunk_size)[0]


def gfrd(X, Y, *, train_idx=None, test_idx=None, chunk_size: int = 32768) -> float:
    """Global feature reconstruction distortion: RMS over test rows of :func:`pointwise_gfrd`."""
    return rms(pointwise_gfrd(X, Y, train_idx=train_idx, test_idx=test_idx, chunk_size=chunk_size))


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


def default_k(d_x: int, d_y: int, n_train: int) -> int:
    """LFRE's neighbour count, the one policy of the package: the study's k = min(d_X, d_Y), capped
    at n_train // 4 so that the neighbourhoods stay local (the valid regime of LFRE: with k near
    n_train every local fit sees the whole training set and LFRE turns into GFRE).

    InputError when n_train // 4 < 2: the local 2-fold CV needs two rows, so LFRE needs 8 training
    rows at least."""
    cap = int(n_train) // 4
    if cap < 2:
        raise InputError(
            f"LFRE needs at least 8 training rows (k <= n_train // 4 and k >= 2), got {n_train}; "
            "use more training rows or GFRE"
        )
    return int(min(d_x, d_y, cap))


class LocalProblem:
    """A source space prepared for LFRE: scaled training/test rows of X, neighbours, batches.

    Built once per source and reused for every target (see :func:`mlipspace.metrics.pairwise`).
    """

    def __init__(self, Xtr, Xte, train, k, *, device="auto", mode="exact", batch_size=None, n_jobs=None,
                 settings=None):
        if mode not in ("exact", "fast"):
            raise InputError(f"unknown mode {mode!r}; use 'exact' or 'fast'")
        self.settings = settings = settings or resolve()
        self.bk = get_backend(device, driver=settings["svd_driver"])
        self.backend = "numpy" if self.bk.name == "numpy" else str(self.bk.device)
        self.engine = settings["engine"]
        self.mode = mode
        self.k = k
        self.Xtr, self.Xte = Xtr, Xte
        self.tie_key = np.asarray(train)
        f1, f2 = kfold_halves(k)
        self.n1 = f1.size
        self.fold_order = np.concatenate([f1, f2])  # neighbours gathered fold by fold
        self.n_jobs = effective_n_jobs(n_jobs) if self.backend == "numpy" else 1
        if batch_size is None:
            batch_size = 64 if self.backend == "numpy" else 512
        self.batch_size = int(batch_size)
        nt = Xte.shape[0]
        self.batches = [(a, min(a + self.batch_size, nt)) for a in range(0, nt, self.batch_size)]
        self._train_sq = np.einsum("ij,ij->i", Xtr, Xtr)
        # float32 copy for the one-pass neighbour pre-selection (exact re-ranking in float64)
        f32 = self.backend == "numpy" and settings["knn_precision"] == "float32"
        self._train_f32 = Xtr.astype(np.float32) if f32 else None
        self.fast_gram = (self.backend == "numpy" and mode == "fast" and settings["fast_precision"] == "mixed"
                          and self.engine == "gram" and k <= Xtr.shape[1])

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

            ns = self.bk
            engine = self.engine
            torch = _torch_eigh(self.Xte.shape[0]) if engine == "gram" else None
            fallbacks = []
            skipped = [0, 0]  # batches (not certifiable, Gram-certified)

            def work(bounds):
                a, b = bounds
                nbr = knn_indices(self.Xtr, self.Xte[a:b], self.k, self.tie_key, train_sq=self._train_sq,
                                  train_f32=self._train_f32)
                nbr = nbr[:, self.fold_order]
                if self.fast_gram:
                    src = FastGramSource(np.take(self.Xtr, nbr, axis=0), self.Xte[a:b], self.n1, ALPHAS, torch=torch)
                    for out, (Ytr, Yte) in zip(outs, targets):
                        out[a:b] = src.errors(np.take(Ytr, nbr, axis=0), Yte[a:b])
                        fallbacks.append(src.n_redo)
                    return
                src, svd = self._source(ns, np.take(self.Xtr, nbr, axis=0), self.Xte[a:b], skipped, torch)
                for out, (Ytr, Yte) in zip(outs, targets):
                    out[a:b] = src.errors(np.take(Ytr, nbr, axis=0), Yte[a:b])
                    fallbacks.append(b - a if svd and engine != "svd" else getattr(src, "n_fallback", 0))

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
            self.gram_batches = skipped[1]
            return outs
        return self._run_torch(targets, outs)

    def _source(self, ns, Xn, x, skipped, torch=None):
        """(X-side source of one batch, True when it is the SVD path): the Gram engine when
        ``engine="gram"`` (certified in exact mode), on the backend ``ns`` (NumPy or torch), else
        the SVD path. In exact mode, once most batches could not be certified (rank-deficient
        data; ``skipped`` counts [uncertifiable, certified] batches), the remaining ones go
        straight to the SVD path instead of trying the Gram one first."""
        if self.engine == "svd" or (self.mode == "exact" and skipped[0] >= 2 and skipped[0] > skipped[1]):
            return LocalSource(ns, Xn, x, self.n1, ALPHAS, self.mode), True
        src = GramSource(Xn, x, self.n1, ALPHAS, certify=self.mode == "exact", torch=torch, ns=ns)
        skipped[0 if src.skip else 1] += 1
        return src, False

    def _run_torch(self, targets, outs):
        """:meth:`run` on the torch backend's device: batches of ``batch_size`` test rows, the same
        engine choice as on the CPU (:meth:`_source`), float64 throughout."""
        from mlipspace.metrics._knn import knn_indices_torch

        ns = self.bk
        Xtr = ns.asarray(self.Xtr)
        Xte = ns.asarray(self.Xte)
        key = ns.index(self.tie_key)
        order = ns.index(self.fold_order)
        Ys = [(ns.asarray(a), ns.asarray(b)) for a, b in targets]
        skipped = [0, 0]  # batches (not certifiable, Gram-certified)
        fallbacks = []
        for a, b in self.batches:
            nbr = knn_indices_torch(Xtr, Xte[a:b], self.k, key)[:, order]
            src, svd = self._source(ns, Xtr[nbr], Xte[a:b], skipped)
            for out, (Ytr, Yte) in zip(outs, Ys):
                out[a:b] = ns.to_numpy(src.errors(Ytr[nbr], Yte[a:b]))
                fallbacks.append(b - a if svd and self.engine != "svd" else getattr(src, "n_fallback", 0))
        self.n_fallback = sum(fallbacks)
        self.gram_batches = skipped[1]
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


def _lfre_args(X, Y, k, train_idx, test_idx):
    X = as_matrix(X, "X")
    Y = as_matrix(Y, "Y")
    check_rows(X.shape[0], Y.shape[0])
    train, test = resolve_split(X.shape[0], train_idx, test_idx)
    k = default_k(X.shape[1], Y.shape[1], train.size) if k is None else check_lfre_k(k, train.size)
    return X, Y, train, test, k


def check_lfre_k(k, n_train: int) -> int:
    """LFRE's k: at least 2 (the local 2-fold CV), at most the training rows."""
    return check_k(k, n_train, minimum=2, why=" (the local 2-fold CV needs two rows)")


def pointwise_lfre(X, Y, *, k: int | None = None, train_idx=None, test_idx=None, device: str = "auto",
                   mode: str = "exact", batch_size: int | None = None, n_jobs: int | None = None,
                   engine: str | None = None, fast_precision: str | None = None,
                   knn_precision: str | None = None, svd_driver: str | None = None) -> np.ndarray:
    r"""Per test row error of the local ridge reconstruction of Y from X (one value per test row).

    For each test row: its ``k`` nearest training rows in scaled X (None: :func:`default_k`),
    nearest first and exact ties by lower row index; both neighbourhoods centred on their means;
    ``Ridge2FoldCV`` fitted on them; :math:`\|y_i - \bar y - (x_i-\bar x)W_i\|`.

    ``device``: ``"cpu"`` (NumPy, batched LAPACK on ``n_jobs`` threads), ``"cuda"`` (torch) or
    ``"auto"``. ``mode="fast"`` uses Gram-matrix eigendecompositions (approximation, see
    :mod:`mlipspace.metrics._local`). ``engine``, ``fast_precision``, ``knn_precision``,
    ``svd_driver``: see :mod:`mlipspace.metrics._config` (None: :func:`mlipspace.metrics.get_config`).
    """
    settings = resolve(engine=engine, fast_precision=fast_precision, knn_precision=knn_precision,
                       svd_driver=svd_driver)
    X, Y, train, test, k = _lfre_args(X, Y, k, train_idx, test_idx)
    with ThreadPoolExecutor(1) as pool:  # Y is scaled while X is, and while the first neighbours are found
        target = pool.submit(_scaled, Y, train, test, "Y")
        try:
            Xtr, Xte = _scaled(X, train, test, "X")
            prob = LocalProblem(Xtr, Xte, train, k, device=device, mode=mode, batch_size=batch_size,
                                n_jobs=n_jobs, settings=settings)
        except BaseException:
            target.cancel()
            raise
        return prob.run([target])[0]


def lfre(X, Y, *, k: int | None = None, train_idx=None, test_idx=None, **options) -> float:
    """Local feature reconstruction error: RMS over test rows of :func:`pointwise_lfre` (same options)."""
    return rms(pointwise_lfre(X, Y, k=k, train_idx=train_idx, test_idx=test_idx, **options))


_FRE_INVARIANT = frozenset({"rotation_of_source", "isotropic_scale", "shift", "permutation_of_features"})
_FRE_NOT = frozenset({"invertible_linear"})

#: The reconstruction measures: asymmetric (X reconstructs Y), lower is better; invariant to
#: isotropic scale and shift of either side (global scaling on the training rows), to reordering
#: features, and to rotations of X. A rotation of Y can change the CV's cutoff choice (its score
#: averages the RMSE per column of Y, a basis-dependent quantity): LFRE shows it on random data,
#: GFRE only when its one global choice flips, so neither declares Y rotations.
RECONSTRUCTION_MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure("gfre", gfre, False, (0.0, math.inf), 0.0, False, "global feature reconstruction error",
                None, _FRE_INVARIANT, _FRE_NOT),
        Measure("gfrd", gfrd, False, (0.0, math.inf), 0.0, False, "global feature reconstruction distortion",
                None, _FRE_INVARIANT, _FRE_NOT),
        Measure("lfre", lfre, False, (0.0, math.inf), 0.0, False, "local feature reconstruction error",
                None, _FRE_INVARIANT, _FRE_NOT | {"rotation"}),
    )
}
