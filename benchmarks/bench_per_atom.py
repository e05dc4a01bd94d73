"""Cost of the study's per-atom stage next to the cross-model GFRE stage it mirrors, side by side.

The per-atom stage (:func:`mlipspace.experiments.per_atom.per_atom`: one GFRE ``pairwise`` call over
all ordered pairs on seed 0, coordination numbers, grouped bootstrap records) against the atom-level
cross-model GFRE of the same features on the study's 3 seeds. Features: synthetic spaces shaped
like 10 bundled models' last layers on ``builtin:mad-mini`` (default 200 structures, ~4300 atoms).
Usage: ``python benchmarks/bench_per_atom.py [--size N]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from mlipspace.data import builtin
from mlipspace.data.rows import row_table
from mlipspace.experiments.cross_model import cross_model
from mlipspace.experiments.per_atom import per_atom

WIDTHS = (64, 64, 64, 128, 128, 128, 128, 256, 256, 512)


def spaces(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 24))
    return {f"m{i}-{d}": np.tanh(latent @ rng.normal(size=(24, d)) / 3) + 0.1 * rng.normal(size=(n, d))
            for i, d in enumerate(WIDTHS)}


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=200)
    args = ap.parse_args()
    frames = builtin("mad-mini", size=args.size)
    rows = row_table(frames)
    feats = spaces(len(rows["frame"]))
    with threadpool_limits(limits=1):  # as the study (mlipspace.experiments.study.blas_threads)
        t_pa, res = timed(lambda: per_atom(feats, rows, frames))
        t_cm, _ = timed(lambda: cross_model(feats, rows, metrics=("gfre",), seeds=(0, 1, 2)))
    print(f"{len(frames)} structures, {len(rows['frame'])} atoms, {len(feats)} models, "
          f"{len(res['pairs'])} pairs, {len(res['records'])} per-atom records")
    print(f"per-atom stage (seed 0):            {t_pa:7.2f} s")
    print(f"cross-model GFRE, atom (3 seeds):   {t_cm:7.2f} s")
    print(f"ratio per-atom / cross-model GFRE:  {t_pa / t_cm:7.2f}")


if __name__ == "__main__":
    main()
