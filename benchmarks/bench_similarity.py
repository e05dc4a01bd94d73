"""Similarity measures: ours (chunked) vs straightforward dense N×N implementations, side by side.

Every measurement runs in its own child process, so its time and its peak memory (extra resident
memory over the process after the input is built, from ``getrusage``'s ``ru_maxrss``) are its own.

A dense N×N float64 matrix at 50,000 rows is 20 GB (and the references hold two or three of them), so
the dense references run on the first ``--ref-rows`` rows (default 10,000) of the same data and
settings; ours runs at both sizes. The printed ratio is dense/ours at the common size; ours at the full
size is printed beside it. RBF CKA uses one fixed bandwidth on both sides (so the values are
comparable); at the full size ours runs on its default ``max_rows`` subsample unless ``--rbf-all``.

    python benchmarks/bench_similarity.py                      # 50,000 rows, d = 128 and 512, CPU
    python benchmarks/bench_similarity.py --rows 20000 --dims 64 --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

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


def dense_rbf_cka(X, Y, sx, sy):
    from scipy.spatial.distance import cdist

    K = _double_centre(np.exp(-cdist(X, X, "sqeuclidean") / (2 * sx * sx)))
    L = _double_centre(np.exp(-cdist(Y, Y, "sqeuclidean") / (2 * sy * sy)))
    return float(np.sum(K * L) / math.sqrt(np.sum(K * K) * np.sum(L * L)))


def dense_mknn(X, Y, k):
    from scipy.spatial.distance import cdist

    def knn(A):
        D = cdist(A, A, "sqeuclidean")
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
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if impl == "ours":
        from mlipspace.metrics import similarity as sim

        if measure == "cka":
            f = lambda: sim.linear_cka(X, Y, device=device)  # noqa: E731
        elif measure == "cka_debiased":
            f = lambda: sim.linear_cka(X, Y, debiased=True, device=device)  # noqa: E731
        elif measure == "procrustes":
            f = lambda: sim.procrustes_distance(X, Y, device=device)  # noqa: E731
        elif measure == "mknn":
            f = lambda: sim.mutual_knn(X, Y, K_NN, device=device)  # noqa: E731
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
    if device.startswith("cuda") and impl == "ours":
        f()  # warm-up: CUDA context and kernels
    t0 = time.perf_counter()
    value = f()
    if device.startswith("cuda") and impl == "ours":
        import torch

        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"value": value, "seconds": sec, "extra_peak_mb": max(0, peak - base) / 1024.0}


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
    ap.add_argument("--device", default="cpu", help="device for ours: cpu, cuda, torch-cpu, auto")
    ap.add_argument("--rbf-all", action="store_true", help="RBF CKA on all rows at the full size")
    ap.add_argument("--json", help="also write the records to this file")
    ap.add_argument("--_child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        m, impl, n, d, dev, rbf_all = args._child
        print(json.dumps(child(m, impl, int(n), int(d), dev, bool(int(rbf_all)))))
        return

    ref_n = min(args.ref_rows, args.rows)
    dense_gb = 8 * args.rows**2 / 1e9
    print(f"rows {args.rows}, dense references on the first {ref_n} rows "
          f"(one N×N float64 matrix at {args.rows} rows = {dense_gb:.1f} GB); device for ours: {args.device}; "
          f"k = {K_NN} for mknn; float32 input; 'extra' = peak resident memory above the input")
    if args.rows > ref_n:
        print(f"NOTE: the dense/ours ratio is measured at the common size {ref_n}; "
              f"ours at {args.rows} is listed beside it.")
    if "rbf_cka" in args.measures and not args.rbf_all and args.rows > 10_000:
        print(f"NOTE: rbf_cka at {args.rows} rows runs on its default max_rows=10,000 subsample "
              "(use --rbf-all for all rows).")
    header = (f"{'measure':<13}{'d':>5} | {'dense s':>9}{'dense MB':>10} | {'ours s':>8}{'ours MB':>9}"
              f" | {'ratio':>7} | {'|Δvalue|':>9} | {'ours@' + str(args.rows) + ' s':>14}{'MB':>8}")
    print(header)
    print("-" * len(header))
    records = []
    for d in args.dims:
        for m in args.measures:
            ref = run_child(m, "dense", ref_n, d, "cpu", False)
            ours_small = run_child(m, "ours", ref_n, d, args.device, True)
            ours_full = (run_child(m, "ours", args.rows, d, args.device, args.rbf_all)
                         if args.rows > ref_n else ours_small)
            rec = {"measure": m, "d": d, "ref_rows": ref_n, "rows": args.rows, "dense": ref,
                   "ours_common": ours_small, "ours_full": ours_full, "device": args.device}
            records.append(rec)
            if "error" in ref or "error" in ours_small or "error" in ours_full:
                print(f"{m:<13}{d:>5} | error: {ref.get('error') or ours_small.get('error') or ours_full.get('error')}")
                continue
            ratio = ref["seconds"] / ours_small["seconds"]
            dv = abs(ref["value"] - ours_small["value"])
            print(f"{m:<13}{d:>5} | {ref['seconds']:>9.2f}{ref['extra_peak_mb']:>10.0f} | "
                  f"{ours_small['seconds']:>8.2f}{ours_small['extra_peak_mb']:>9.0f} | {ratio:>6.1f}x | "
                  f"{dv:>9.1e} | {ours_full['seconds']:>14.2f}{ours_full['extra_peak_mb']:>8.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=1)


if __name__ == "__main__":
    main()
