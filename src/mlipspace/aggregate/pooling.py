"""Plain pooling of atom features into structure features: the baselines cumulants are compared to.

``mean`` is kappa_1 alone; ``mean+std`` is [kappa_1, sqrt(kappa_2)] (population std), i.e. the
rooted cumulants of order 2; ``max`` is the column-wise maximum over the atoms of each frame.
"""

from __future__ import annotations

import numpy as np

from mlipspace.aggregate._segments import check_features, segment_sum, segments_of
from mlipspace.aggregate.cumulants import AggregateInfo
from mlipspace.errors import InputError

POOLINGS = ("mean", "mean+std", "max")


def pool(features, frame_index, how: str = "mean", *, return_info: bool = False):
    """Pool per-atom ``features`` (n_atoms, d) per frame with ``how`` in ``"mean"``, ``"mean+std"``, ``"max"``.

    Returns (n_frames, d) — (n_frames, 2d) for ``mean+std``, columns ``[mean | std]`` — in float64,
    rows = sorted unique ``frame_index`` (as :func:`mlipspace.aggregate.cumulants`); with
    ``return_info`` also an :class:`AggregateInfo`.
    """
    if how not in POOLINGS:
        raise InputError(f"unknown pooling {how!r}; choose one of {', '.join(POOLINGS)}")
    x, f = check_features(features, frame_index)
    seg = segments_of(f)
    d = x.shape[1]
    n_stats = 2 if how == "mean+std" else 1
    out = np.empty((len(seg.keys), n_stats * d))
    for s_lo, s_hi, r_lo, r_hi in seg.blocks(d):
        xb = seg.take(x, r_lo, r_hi)
        local = seg.starts[s_lo:s_hi] - r_lo
        counts = seg.counts[s_lo:s_hi]
        if how == "max":
            res = np.maximum.reduceat(xb, local, axis=0)
        else:
            inv_n = (1.0 / counts)[:, None]
            mean = segment_sum(xb, local, r_hi - r_lo) * inv_n
            res = mean
            if how == "mean+std":
                xb -= np.repeat(mean, counts, axis=0)
                xb *= xb
                res = np.hstack([mean, np.sqrt(segment_sum(xb, local, r_hi - r_lo) * inv_n)])
        out[s_lo:s_hi] = res
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise InputError(f"frame {int(seg.keys[np.flatnonzero(bad)[0]])}: features contain NaN or infinite values")
    if not return_info:
        return out
    stats = {"mean": ("mean",), "mean+std": ("mean", "std"), "max": ("max",)}[how]
    info = AggregateInfo(
        method=how,
        frames=seg.keys.copy(),
        n_atoms=seg.counts.copy(),
        single_atom_frames=seg.keys[seg.counts == 1],
        n_features=d,
        columns=tuple((s, c) for s in stats for c in range(d)),
        column_names=("stat", "column"),
    )
    return out, info
