"""Benchmark: vectorised progressive cumulants vs the study's per-frame scipy.stats.moment loop.

Default size: 10,000 frames, 500,000 atoms, d = 128, order 8 (float32 features, as stored).
The loop (one ``scipy.stats.moment`` call per frame and order, then the explicit formulas) is timed on
``--loop-frames`` frames and extrapolated linearly to all frames (it is linear in the number of
frames: each frame costs the same work); both results are compared on those frames.

    python benchmarks/bench_cumulants.py [--frames 10000] [--atoms 500000] [--dim 128] [--order 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

from mlipspace.aggregate import cumulants


def study_loop(x: np.ndarray, frame_index: np.ndarray, order: int) -> np.ndarray:
    """The straightforward approach: per frame, scipy.stats.moment for each order, explicit formulas."""
    out = []
    for fid in np.unique(frame_index):
        xs = x[frame_index == fid].astype(np.float64)
        mu = [1.0, 0.0] + [stats.moment(xs, k, axis=0) for k in range(2, order + 1)]
        mu += [0.0] * (9 - len(mu))
        m2, m3, m4, m5, m6, m7, m8 = mu[2:9]
        kap = [
            xs.mean(axis=0),
            m2,
            m3,
            m4 - 3 * m2**2,
            m5 - 10 * m2 * m3,
            m6 - 15 * m2 * m4 - 10 * m3**2 + 30 * m2**3,
            m7 - 21 * m2 * m5 - 35 * m3 * m4 + 210 * m2**2 * m3,
            m8 - 28 * m2 * m6 - 56 * m3 * m5 - 35 * m4**2 + 420 * m2**2 * m4 + 560 * m2 * m3**2 - 630 * m2**4,
        ][:order]
        kap = [kap[0]] + [np.sign(k) * np.abs(k) ** (1.0 / (i + 2)) for i, k in enumerate(kap[1:])]
        out.append(np.concatenate(kap))
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--atoms", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--order", type=int, default=8)
    ap.add_argument("--loop-frames", type=int, default=500, help="frames timed for the loop (extrapolated)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    # frame sizes vary (multinomial around atoms/frames), every frame has >= 1 atom
    sizes = 1 + rng.multinomial(args.atoms - args.frames, np.full(args.frames, 1.0 / args.frames))
    frame_index = np.repeat(np.arange(args.frames, dtype=np.int64), sizes)
    x = rng.standard_gamma(2.0, size=(args.atoms, args.dim)).astype(np.float32)
    print(f"{args.frames} frames, {args.atoms} atoms, d = {args.dim}, order {args.order} (float32 in, float64 maths)")

    cumulants(x[: sizes[:50].sum()], frame_index[: sizes[:50].sum()], order=args.order)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = cumulants(x, frame_index, order=args.order)
        times.append(time.perf_counter() - t0)
    t_ours = min(times)

    n_loop = min(args.loop_frames, args.frames)
    n_rows = int(sizes[:n_loop].sum())
    t0 = time.perf_counter()
    ref = study_loop(x[:n_rows], frame_index[:n_rows], args.order)
    t_loop_part = time.perf_counter() - t0
    t_loop = t_loop_part * args.frames / n_loop

    err = np.max(np.abs(ours[:n_loop] - ref) / (1e-12 + np.abs(ref).max(axis=0)))
    print(f"vectorised cumulants (all frames, best of {args.repeats}): {t_ours:8.3f} s")
    if n_loop < args.frames:
        print(
            f"per-frame scipy.stats.moment loop: {t_loop_part:8.3f} s on {n_loop} frames, "
            f"extrapolated linearly to {args.frames} frames: {t_loop:8.1f} s"
        )
    else:
        print(f"per-frame scipy.stats.moment loop (all frames): {t_loop:8.3f} s")
    print(f"max relative difference on the compared frames: {err:.2e}")
    print(f"speed-up: {t_loop / t_ours:.1f}x")


if __name__ == "__main__":
    main()
