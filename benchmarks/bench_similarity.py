"""Similarity measures: ours (chunked) vs straightforward dense N×N implementations, side by side.

Every measurement runs in its own child process, so its time and its peak memory (the peak of the
arrays it allocates, from ``tracemalloc``, which NumPy reports to; on CUDA plus torch's peak GPU
memory) are its own.

A dense N×N float64 matrix at 50,000 rows is 20 GB (and the references hold two or three of them), so
the dense references run on the first ``--ref-rows`` rows (default 10,000) of the same data and
settings; ours runs at both sizes. The printed ratio is dense/ours at the common size; ours at the full
size is printed beside it. RBF CKA uses one fixed bandwidth on both sides (so the values are
comparable); at the full size ours runs on its default ``max_rows`` subsample unless ``--rbf-all``.

    python benchmarks/bench_similarity.py                      # 50,000 rows, d = 128 and 512, CPU
    python benchmarks/bench_similarity.py --rows 20000 --dims 64 --devices cpu cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np

MEASURES = ["cka", "cka_debiased", "procrustes", "mknn", "rbf_cka"]
K_NN = 10


def make_data(n: int, d: int, seed: int = 0):
    """Two related float32 feature spaces of width d on the same n rows (latent width 32, noise)."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 32)).astype(np.float32)
    X = Z @ rng.normal(size=(32, d)).astype(np.float32) + 0.5 * rng.normal(size=(n, d)).astype(np.float32)
    Y = np.tanh(Z) @ rng.normal(size=(32, d)).astype(np.float32) + 0.5 * rng.normal(size=(n, d)).astype(
        np.float32
    )
    return X + 1.0, Y - 2.0


def fixed_sigma(A: np.ndarray) -> float:
    """Median-heuristic bandwidth from the first 2,000 rows (same for ours and the reference)."""
    from scipy.spatial.distance import pdist

    return float(math.sqrt(np.median(pdist(np.asarray(A[:2000], dtype=np.float64), "sqeuclidean"))))


# ---- dense references: build the N×N matrices, as one would without thinking about memory ----------


def _double_centre(K):
    r = K.mean(0)
    return K - r[None, :] - r[:, None] + r.mean()


def dense_cka(X, Y):
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    K = _double_centre(X @ X.T)
    L = _double_centre(Y @ Y.T)
    return float(np.sum(K * L) / math.sqrt(np.sum(K * K) * np.sum(L * L)))


def _song(K, L):
    n = K.shape[0]
    rk, rl = K.sum(1), L.sum(1)
    return (np.sum(K * L) + rk.sum() * rl.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * rk @ rl) / (n * (n - 3))


def dense_cka_debiased(X, Y):
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    K = X @ X.T
    np.fill_diagonal(K, 0.0)
    L = Y @ Y.T
    np.fill_diagonal(L, 0.0)
    return float(_song(K, L) / math.sqrt(_song(K, K) * _song(L, L)))


def _sqdist(A):
    """All squared distances, N×N, the usual BLAS way (|a|² + |b|² − 2 a·b)."""
    A = np.asarray(A, np.float64)
    sq = (A * A).sum(1)
    D = sq[:, None] + sq[None, :] - 2.0 * (A @ A.T)
    np.maximum(D, 0.0, out=D)
    np.fill_diagonal(D, 0.0)
    return D


def dense_rbf_cka(X, Y, sx, sy):
    K = _double_centre(np.exp(-_sqdist(X) / (2 * sx * sx)))
    L = _double_centre(np.exp(-_sqdist(Y) / (2 * sy * sy)))
    return float(np.sum(K * L) / math.sqrt(np.sum(K * K) * np.sum(L * L)))


def dense_mknn(X, Y, k):
    def knn(A):
        D = _sqdist(A)
        np.fill_diagonal(D, np.inf)
        return np.argpartition(D, k - 1, axis=1)[:, :k]

    nx, ny = knn(X), knn(Y)
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(nx, ny)]))


def dense_procrustes(X, Y):
    from scipy.linalg import orthogonal_procrustes

    X = np.asarray(X, np.float64) - np.asarray(X, np.float64).mean(0)
    Y = np.asarray(Y, np.float64) - np.asarray(Y, np.float64).mean(0)
    X /= np.linalg.norm(X)
    Y /= np.linalg.norm(Y)
    _, scale = orthogonal_procrustes(X, Y)  # equal widths here
    return float(math.acos(min(1.0, scale)))


# ---- one measurement per child process -------------------------------------------------------------


def child(measure: str, impl: str, n: int, d: int, device: str, rbf_all: bool) -> dict:
    X, Y = make_data(n, d)
    sx, sy = fixed_sigma(X), fixed_sigma(Y)
    if impl == "ours":
        from mlipspace.metrics import similarity as sim

        if measure == "cka":
            f = lambda: sim.linear_cka(X, Y, device=device)  # noqa: E731
        elif measure == "cka_debiased":
            f = lambda: sim.linear_cka(X, Y, debiased=True, device=device)  # noqa: E731
        elif measure == "procrustes":
            f = lambda: sim.procrustes_distance(X, Y, device=device)  # noqa: E731
        elif measure == "mknn":
            f = lambda: sim.mutual_knn(X, Y, k=K_NN, device=device)  # noqa: E731
        else:
            max_rows = None if rbf_all else 10_000
            f = lambda: sim.rbf_cka(X, Y, sigma=(sx, sy), max_rows=max_rows, device=device)  # noqa: E731
    else:
        f = {
            "cka": lambda: dense_cka(X, Y),
            "cka_debiased": lambda: dense_cka_debiased(X, Y),
            "procrustes": lambda: dense_procrustes(X, Y),
            "mknn": lambda: dense_mknn(X, Y, K_NN),
            "rbf_cka": lambda: dense_rbf_cka(X, Y, sx, sy),
        }[measure]
    cuda = device.startswith("cuda") and impl == "ours"
    if impl == "ours" and device != "cpu":
        import torch

        f()  # warm-up outside the timing: torch import, CUDA context, cuBLAS handles
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
    tracemalloc.start()  # NumPy reports its buffers to tracemalloc: the peak is the measure's own arrays
    t0 = time.perf_counter()
    value = f()
    if cuda:
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    if cuda:
        peak += torch.cuda.max_memory_allocated()
    return {"value": value, "seconds": sec, "peak_mb": peak / 1e6}


def run_child(measure, impl, n, d, device, rbf_all) -> dict:
    cmd = [sys.executable, __file__, "--_child", measure, impl, str(n), str(d), device, str(int(rbf_all))]
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"rc {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--ref-rows", type=int, default=10_000, help="rows for the dense references")
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--measures", nargs="+", default=MEASURES, choices=MEASURES)
    ap.add_argument("--devices", nargs="+", default=["cpu"], help="devices for ours: cpu, cuda, torch-cpu")
    ap.add_argument("--rbf-all", action="store_true", help="RBF CKA on all rows at the full size")
    ap.add_argument("--json", help="also write the records to this file")
    ap.add_argument("--_child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        m, impl, n, d, dev, rbf_all = args._child
        print(json.dumps(child(m, impl, int(n), int(d), dev, bool(int(rbf_all)))))
        return

    ref_n = min(args.ref_rows, args.rows)
    print(f"rows {args.rows}; dense references (NumPy, CPU) on the first {ref_n} rows: one N×N float64 "
          f"matrix at {args.rows} rows is {8 * args.rows**2 / 1e9:.1f} GB. k = {K_NN} for mknn; float32 input.")
    print("MB = peak of the measure's own allocations (tracemalloc; on CUDA plus torch's peak GPU memory).")
    if args.rows > ref_n:
        print(f"NOTE: ratio = dense/ours time at the common size {ref_n}; ours at {args.rows} is listed beside it.")
    if "rbf_cka" in args.measures and not args.rbf_all and args.rows > 10_000:
        print(f"NOTE: rbf_cka at {args.rows} rows runs on its default max_rows=10,000 subsample "
              "(--rbf-all: all rows).")
    full = f"ours@{args.rows} s"
    header = (f"{'measure':<13}{'d':>5} {'device':<9}| {'dense s':>8}{'MB':>7} | {'ours s':>8}{'MB':>7} | "
              f"{'ratio':>7} | {'|diff|':>8} | {full:>13}{'MB':>7}")
    print(header)
    print("-" * len(header))
    records = []
    for d in args.dims:
        for m in args.measures:
            ref = run_child(m, "dense", ref_n, d, "cpu", False)
            for dev in args.devices:
                small = run_child(m, "ours", ref_n, d, dev, True)
                big = run_child(m, "ours", args.rows, d, dev, args.rbf_all) if args.rows > ref_n else small
                records.append({"measure": m, "d": d, "device": dev, "ref_rows": ref_n, "rows": args.rows,
                                "dense": ref, "ours_common": small, "ours_full": big})
                err = ref.get("error") or small.get("error") or big.get("error")
                if err:
                    print(f"{m:<13}{d:>5} {dev:<9}| error: {err}", flush=True)
                    continue
                print(f"{m:<13}{d:>5} {dev:<9}| {ref['seconds']:>8.2f}{ref['peak_mb']:>7.0f} | "
                      f"{small['seconds']:>8.2f}{small['peak_mb']:>7.0f} | "
                      f"{ref['seconds'] / small['seconds']:>6.1f}x | {abs(ref['value'] - small['value']):>8.1e} | "
                      f"{big['seconds']:>13.2f}{big['peak_mb']:>7.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=1)


if __name__ == "__main__":
    main()
