"""Benchmark of the study's analysis choices, measured side by side in one run.

1. Cross-model matrix through ``metrics.pairwise`` (scaling and LFRE neighbour search shared per
   source) versus one ``gfre``/``lfre`` call per ordered pair (what a naive loop does).
2. The same matrix with one BLAS thread versus the library default (all cores).

Features: synthetic spaces shaped like the bundled models' last layers (64, 64, 128, 128, 512 wide)
on a grouped split of ~1200 atoms. Usage: ``python benchmarks/bench_study.py [--atoms N]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from mlipspace.experiments._common import fre
from mlipspace.experiments.cross_model import pair_errors


def spaces(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 24))
    return {f"m{i}-{d}": np.tanh(latent @ rng.normal(size=(24, d)) / 3) + 0.1 * rng.normal(size=(n, d))
            for i, d in enumerate((64, 64, 128, 128, 512))}


def per_pair(feats, pairs, splits, metrics, lfre_max_test):
    out = {}
    for s, t in pairs:
        for m in metrics:
            out[(s, t, m)] = [fre(m, feats[s], feats[t], tr, te, lfre_max_test=lfre_max_test, seed=k)[0]
                              for k, (tr, te) in enumerate(splits)]
    return out


def timed(fn, repeat=2):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, default=1200)
    ap.add_argument("--lfre-max-test", type=int, default=50)
    args = ap.parse_args()
    feats = spaces(args.atoms)
    names = list(feats)
    pairs = [(a, b) for a in names for b in names if a != b]
    n = args.atoms
    rng = np.random.default_rng(1)
    splits = []
    for _ in range(2):
        perm = rng.permutation(n)
        splits.append((np.sort(perm[n // 4:]), np.sort(perm[: n // 4])))
    metrics = ("gfre", "lfre")
    print(f"{len(pairs)} ordered pairs x {len(splits)} splits x {metrics}, {n} atoms, "
          f"LFRE on {args.lfre_max_test} test rows")
    with threadpool_limits(limits=1):
        t_pairwise = timed(lambda: pair_errors(feats, pairs, splits, metrics=metrics,
                                               lfre_max_test=args.lfre_max_test))
        t_loop = timed(lambda: per_pair(feats, pairs, splits, metrics, args.lfre_max_test))
    t_default = timed(lambda: pair_errors(feats, pairs, splits, metrics=metrics, lfre_max_test=args.lfre_max_test))
    print(f"pairwise (shared per source), 1 BLAS thread : {t_pairwise:7.2f} s")
    print(f"one call per pair,            1 BLAS thread : {t_loop:7.2f} s   ratio {t_loop / t_pairwise:.2f}x")
    print(f"pairwise, default BLAS threads               : {t_default:7.2f} s   ratio {t_default / t_pairwise:.2f}x")


if __name__ == "__main__":
    main()
