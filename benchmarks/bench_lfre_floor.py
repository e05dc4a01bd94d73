"""Benchmark: the LFRE's local fits against their own arithmetic floor on this CPU.

Each test row of the LFRE fits a 2-fold-CV ridge with cutoff regularisation on its k neighbours.
Spectral truncation has no cheaper exact form than an eigendecomposition, so every row needs those
of its two fold Gram matrices (k/2 x k/2; float64: the CV must resolve cutoffs down to 1e-9 s_max)
and of its whole neighbourhood's Gram matrix (k x k; the refit, float32 at best), plus the matrix
products that carry the target columns through the CV. This script times, in one process on one
core, on the benchmark's own data (bench_metrics.py: 20,000 x 128 -> 256, k = 128):

- scikit-matter's pointwise LFRE (n_jobs = 1) on a subset of the test rows: CPU ms per row;
- ours, ``mode="fast"`` and ``mode="exact"`` (n_jobs = 1), on all test rows: CPU ms per row;
- the floor, on real neighbourhoods of the same data: the three eigendecompositions with the
  fastest batched driver available (torch's MKL ``eigh`` when torch is installed), and the fewest
  matrix products (Gram matrix, cross-fold designs, CV products at the target width, distance GEMM);

then prints the largest speed-up over scikit-matter that any implementation of this algorithm could
reach here (scikit-matter / floor), next to what each mode reaches.

    python benchmarks/bench_lfre_floor.py            # the issue's setting
    python benchmarks/bench_lfre_floor.py --small    # 5,000 rows, 300 test rows (quick)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

# beside this script: the same data as the main benchmark
from bench_metrics import correlated


def cpu_per_call(f, *a, repeat: int = 3, **kw) -> float:
    """Best CPU seconds of ``repeat`` calls (single-threaded work: CPU time is the work done)."""
    best = float("inf")
    for _ in range(repeat):
        c = time.process_time()
        f(*a, **kw)
        best = min(best, time.process_time() - c)
    return best


def neighbourhoods(X, Y, train, test, k, rows):
    """Centred (rows, k, d) neighbourhoods of ``rows`` test points in scaled X, and their Y."""
    from mlipspace.metrics._knn import knn_indices
    from mlipspace.metrics.reconstruction import _scaled

    Xtr, Xte = _scaled(X, train, test, "X")
    Ytr, _ = _scaled(Y, train, test, "Y")
    nbr = knn_indices(Xtr, Xte[:rows], k, train)
    Xn, Yn = Xtr[nbr], Ytr[nbr]
    return Xn - Xn.mean(1, keepdims=True), Yn - Yn.mean(1, keepdims=True), Xtr, Xte


def floor_ms(Xn, Yn, Xtr, Xte, torch) -> dict:
    """CPU ms per row of the unavoidable pieces, each timed on the whole stack (of the engine's
    batch size: larger stacks fall out of cache and only look slower)."""
    B, k, _ = Xn.shape
    h = k // 2
    K = Xn @ Xn.mT
    F1 = np.ascontiguousarray(K[:, :h, :h])
    F2 = np.ascontiguousarray(K[:, h:, h:])
    K32 = K.astype(np.float32)
    if torch is not None:
        eig = lambda A: torch.linalg.eigh(torch.from_numpy(A))
    else:
        eig = np.linalg.eigh
    U = np.linalg.eigh(F1)[1]
    C = np.ascontiguousarray(K[:, :h, h:])
    Yf = np.ascontiguousarray(Yn[:, :h])
    T32 = Xte[:64].astype(np.float32)
    train32 = Xtr.astype(np.float32)

    def cross_fold_designs():  # per fold: A^T = U^T C^T once, then its Gram A^T A
        for _ in range(2):
            At = U @ C
            At @ At.mT

    def cv_products():  # per fold: U^T Y_f, G B, A^T Y_o (two folds)
        for _ in range(2):
            Bm = U @ Yf
            S = U @ Bm
            S += U @ Yf

    out = {
        "eigh 2 folds (float64)": cpu_per_call(lambda: (eig(F1), eig(F2)), repeat=5),
        "eigh refit (float32)": cpu_per_call(lambda: eig(K32), repeat=5),
        "Gram product": cpu_per_call(lambda: Xn @ Xn.mT, repeat=5),
        "cross-fold designs": cpu_per_call(cross_fold_designs, repeat=5),
        "CV products": cpu_per_call(cv_products, repeat=5),
    }
    out = {key: 1e3 * v / B for key, v in out.items()}
    # distance GEMM of the neighbour search: float32, one test row against every training row
    out["kNN distance GEMM"] = 1e3 * cpu_per_call(lambda: T32 @ train32.T, repeat=5) / T32.shape[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="5,000 rows, 300 test rows (quick)")
    ap.add_argument("--sk-rows", type=int, default=150, help="test rows timed with scikit-matter")
    args = ap.parse_args()
    n, n_test, k, dx, dy = (5000, 300, 128, 128, 256) if args.small else (20000, 1000, 128, 128, 256)

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        sys.exit("threadpoolctl is needed (pip install threadpoolctl)")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        torch = None
    from mlipspace.metrics import pointwise_lfre

    X, Y = correlated(n, dx, dy)
    rng = np.random.default_rng(1)
    test = np.sort(rng.choice(n, n_test, replace=False))
    train = np.setdiff1d(np.arange(n), test)
    print(f"data: {n} rows, X {dx} -> Y {dy}, {n_test} test rows, k = {k}; one core; eigensolver: "
          f"{'torch (MKL) eigh' if torch is not None else 'NumPy eigh'}; load {os.getloadavg()[0]:.1f}", flush=True)

    res = {}
    with threadpool_limits(limits=1):
        pointwise_lfre(X[:3000], Y[:3000], k=k, test_idx=np.arange(50), mode="fast", n_jobs=1)  # warm up
        for mode in ("fast", "exact"):
            res[mode] = 1e3 * cpu_per_call(pointwise_lfre, X, Y, k, train, test, mode=mode, n_jobs=1,
                                           repeat=2) / n_test
        try:
            import skmatter.metrics as skm
        except ImportError:
            skm = None
            print("scikit-matter not importable: no reference timing")
        if skm is not None:
            sub = test[: args.sk_rows]
            res["skmatter"] = 1e3 * cpu_per_call(skm.pointwise_local_reconstruction_error, X, Y, k,
                                                 train_idx=train, test_idx=sub, n_jobs=1, repeat=1) / sub.size
        Xn, Yn, Xtr, Xte = neighbourhoods(X, Y, train, test, k, 64)
        parts = floor_ms(Xn, Yn, Xtr, Xte, torch)

    print("\nfloor, CPU ms per test row:")
    for key, v in parts.items():
        print(f"  {key:<24}{v:8.3f}")
    eig = parts["eigh 2 folds (float64)"] + parts["eigh refit (float32)"]
    floor = sum(parts.values())
    print(f"  {'eigendecompositions':<24}{eig:8.3f}")
    print(f"  {'all of the above':<24}{floor:8.3f}")
    print(f"\n{'':<12}{'CPU ms/row':>11}{'vs skmatter':>13}")
    for key in ("fast", "exact"):
        ratio = f"{res['skmatter'] / res[key]:12.1f}x" if "skmatter" in res else ""
        print(f"{'ours ' + key:<12}{res[key]:>11.3f}{ratio}")
    if "skmatter" in res:
        sk = res["skmatter"]
        print(f"{'skmatter':<12}{sk:>11.3f}")
        print(f"\nlargest possible speed-up here: {sk / eig:.1f}x with only the eigendecompositions, "
              f"{sk / floor:.1f}x with the products too; a 15x goal leaves {sk / 15:.3f} ms per row "
              f"({sk / 15 - floor:+.3f} ms beyond the floor for gathers, centring, neighbour selection)")


if __name__ == "__main__":
    main()
