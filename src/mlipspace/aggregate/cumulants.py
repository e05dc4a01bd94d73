r"""Progressive cumulants: structure-level features from the per-atom features of each structure.

For structure :math:`A` with atoms :math:`i \in A` and feature column :math:`c`,

.. math::

    \kappa_1 = \bar x = \frac{1}{n_A}\sum_i x_{ic}, \qquad
    \mu_k = \frac{1}{n_A}\sum_i (x_{ic} - \bar x)^k \quad (k \ge 2,\ \text{population moments}),

and the cumulants :math:`\kappa_k` follow from the moments by the recursion (raw moments :math:`m`)

.. math::

    \kappa_n = m_n - \sum_{j=1}^{n-1} \binom{n-1}{j-1} \kappa_j\, m_{n-j},

which, applied to central moments (:math:`m_1 = \mu_1 = 0`), gives the cumulants of order
:math:`\ge 2` (they are shift invariant); e.g.
:math:`\kappa_8 = \mu_8 - 28\mu_2\mu_6 - 56\mu_3\mu_5 - 35\mu_4^2 + 420\mu_2^2\mu_4 + 560\mu_2\mu_3^2
- 630\mu_2^4`. With ``root=True`` every block gets the unit of the feature:
:math:`\kappa_k \mapsto \operatorname{sign}(\kappa_k)\,|\kappa_k|^{1/k}` for :math:`k \ge 2`.
The features of order :math:`K` are :math:`\varphi^{(K)} = [\kappa_1, \dots, \kappa_K]`
(order-major columns), so :math:`\varphi^{(j)}` is a column prefix of :math:`\varphi^{(k)}`, j < k.

Reference: Chorna et al., arXiv 2512.05717 (progressive cumulants). Their script swapped the
420/560 coefficients of :math:`\kappa_8`; the recursion above has no hand-written coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import comb

import numpy as np

from mlipspace.aggregate._segments import Segments, check_features, segment_indicator, segments_of
from mlipspace.errors import InputError


@dataclass(frozen=True)
class AggregateInfo:
    """What each row and column of a structure-level feature matrix means.

    ``frames``: frame id of each output row (the sorted unique values of ``frame_index``; ids may be
    non-contiguous, e.g. when frames were skipped). ``n_atoms``: atoms per frame.
    ``single_atom_frames``: frame ids with one atom (their cumulants of order >= 2 are 0 by
    definition, not measured). ``columns``: one tuple per output column, named by ``column_names``
    (``("order", "column")``, ``("order", "element", "column")`` or ``("stat", "column")``).
    ``elements``/``species_counts``/``presence`` are set with ``per_species=True``:
    ``species_counts[f, e]`` atoms of ``elements[e]`` in frame ``f``; ``presence = species_counts > 0``
    (absent elements have all-zero blocks).
    """

    method: str
    frames: np.ndarray
    n_atoms: np.ndarray
    single_atom_frames: np.ndarray
    n_features: int
    columns: tuple[tuple, ...]
    column_names: tuple[str, ...]
    order: int | None = None
    root: bool | None = None
    elements: tuple[int, ...] | None = None
    species_counts: np.ndarray | None = field(default=None, repr=False)

    @property
    def presence(self) -> np.ndarray | None:
        """(n_frames, n_elements) bool: element present in frame (``per_species=True`` only)."""
        return None if self.species_counts is None else self.species_counts > 0

    @property
    def block_width(self) -> int:
        """Columns per cumulant order (``d``, or ``n_elements * d`` per species)."""
        return self.n_features * (len(self.elements) if self.elements is not None else 1)

    def block(self, k: int) -> slice:
        """Columns of the order-``k`` cumulant block (1-based)."""
        self._check_order(k)
        w = self.block_width
        return slice((k - 1) * w, k * w)

    def prefix(self, k: int) -> slice:
        """Columns of the progressive features of order ``k``: kappa_1 .. kappa_k."""
        self._check_order(k)
        return slice(0, k * self.block_width)

    def _check_order(self, k: int) -> None:
        if self.order is None:
            raise InputError(f"{self.method!r} pooling has no cumulant orders")
        if not 1 <= k <= self.order:
            raise InputError(f"order {k} outside 1..{self.order} of these cumulants")

    def to_attrs(self) -> dict:
        """JSON-serialisable description (for the feature store)."""
        attrs = {
            "method": self.method,
            "n_features": int(self.n_features),
            "column_names": list(self.column_names),
            "layout": "order-major: [kappa_1 | kappa_2 | ...], each block ordered as column_names[1:]"
            if self.order is not None
            else "stat-major: [stat_1 | stat_2 | ...]",
            "frames": [int(f) for f in self.frames],
            "single_atom_frames": [int(f) for f in self.single_atom_frames],
        }
        if self.order is not None:
            attrs.update(order=int(self.order), root=bool(self.root))
        if self.elements is not None:
            attrs["elements"] = [int(z) for z in self.elements]
        return attrs


def moments_to_cumulants(moments: np.ndarray, axis: int = -1) -> np.ndarray:
    r"""Cumulants :math:`\kappa_1..\kappa_K` from raw moments :math:`m_1..m_K` along ``axis``.

    Uses :math:`\kappa_n = m_n - \sum_{j=1}^{n-1}\binom{n-1}{j-1}\kappa_j m_{n-j}`. Pass central
    moments with :math:`m_1 = 0` to get the shift-invariant cumulants of order >= 2 (and
    :math:`\kappa_1 = 0`).
    """
    m = np.moveaxis(np.asarray(moments, dtype=np.float64), axis, 0)
    k = np.empty_like(m)
    for n in range(1, len(m) + 1):
        acc = m[n - 1].copy()
        for j in range(1, n):
            acc -= comb(n - 1, j - 1) * k[j - 1] * m[n - j - 1]
        k[n - 1] = acc
    return np.moveaxis(k, 0, axis)


def root_cumulants(kappa: np.ndarray, axis: int = -1) -> np.ndarray:
    r"""Map :math:`\kappa_k \mapsto \operatorname{sign}(\kappa_k)|\kappa_k|^{1/k}` for k >= 2 along ``axis``."""
    out = np.moveaxis(np.array(kappa, dtype=np.float64), axis, 0)
    for k in range(2, len(out) + 1):
        v = out[k - 1]
        out[k - 1] = np.sign(v) * _ROOTS.get(k, lambda a, k=k: a ** (1.0 / k))(np.abs(v))
    return np.moveaxis(out, 0, axis)


# exact, faster k-th roots of non-negative arrays for the common orders (sqrt/cbrt vs pow)
_ROOTS = {
    2: np.sqrt,
    3: np.cbrt,
    4: lambda a: np.sqrt(np.sqrt(a)),
    6: lambda a: np.sqrt(np.cbrt(a)),
    8: lambda a: np.sqrt(np.sqrt(np.sqrt(a))),
}


def population_to_kstat(kappa: np.ndarray, n, axis: int = -1) -> np.ndarray:
    r"""Unbiased k-statistics (``scipy.stats.kstat``) from population cumulants, orders 1..4 (<= 4).

    With population moments :math:`\mu_k` of a sample of size n:
    :math:`k_2 = \frac{n}{n-1}\mu_2`, :math:`k_3 = \frac{n^2}{(n-1)(n-2)}\mu_3`,
    :math:`k_4 = \frac{n^2[(n+1)\mu_4 - 3(n-1)\mu_2^2]}{(n-1)(n-2)(n-3)}`. Needs n > order.
    ``kappa`` must be un-rooted (``root=False``); ``n`` (atoms per frame) broadcasts against
    ``kappa`` with the order axis removed.
    """
    kap = np.moveaxis(np.asarray(kappa, dtype=np.float64), axis, 0)
    order = len(kap)
    if order > 4:
        raise InputError("k-statistics are defined here for orders <= 4 only")
    n = np.asarray(n, dtype=np.float64)
    if np.any(n <= order):
        raise InputError(f"k-statistics of order {order} need more than {order} atoms per frame")
    out = kap.copy()
    if order >= 2:
        out[1] = n / (n - 1) * kap[1]
    if order >= 3:
        out[2] = n**2 / ((n - 1) * (n - 2)) * kap[2]
    if order >= 4:
        mu2, mu4 = kap[1], kap[3] + 3 * kap[1] ** 2
        out[3] = n**2 * ((n + 1) * mu4 - 3 * (n - 1) * mu2**2) / ((n - 1) * (n - 2) * (n - 3))
    return np.moveaxis(out, 0, axis)


def _segment_cumulants(x: np.ndarray, seg: Segments, order: int, keys_for_errors: np.ndarray) -> np.ndarray:
    """(n_segments, order, d) float64 cumulants of each segment; two-pass (centred) moments."""
    d = x.shape[1]
    out = np.empty((len(seg.starts), order, d), dtype=np.float64)
    for s_lo, s_hi, r_lo, r_hi in seg.blocks(d):
        xb = seg.take(x, r_lo, r_hi)
        counts = seg.counts[s_lo:s_hi]
        local = seg.starts[s_lo:s_hi] - r_lo
        inv_n = (1.0 / counts)[:, None]
        ind = segment_indicator(local, r_hi - r_lo)
        mean = (ind @ xb) * inv_n
        bad = ~np.isfinite(mean).all(axis=1)
        if bad.any():
            f = int(keys_for_errors[s_lo + int(np.flatnonzero(bad)[0])])
            raise InputError(f"frame {f}: features contain NaN or infinite values")
        if order == 1:
            out[s_lo:s_hi, 0] = mean
            continue
        c = xb
        c -= np.repeat(mean, counts, axis=0)  # xb is a private float64 copy: centre in place
        mom = np.zeros((order, s_hi - s_lo, d))  # m_1 = 0 (centred), m_2..m_K
        p = c * c
        mom[1] = (ind @ p) * inv_n
        for k in range(3, order + 1):
            p *= c
            mom[k - 1] = (ind @ p) * inv_n
        kap = moments_to_cumulants(mom, axis=0)
        kap[0] = mean
        out[s_lo:s_hi] = np.moveaxis(kap, 0, 1)
    bad = ~np.isfinite(out).all(axis=(1, 2))
    if bad.any():
        f = int(keys_for_errors[int(np.flatnonzero(bad)[0])])
        raise InputError(
            f"frame {f}: moments up to order {order} overflow float64 (features too large); "
            "rescale the features or lower the order"
        )
    return out


def _check_order(order) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 1:
        raise InputError(f"order must be an integer >= 1, got {order!r}")
    return int(order)


def _element_positions(species, n_rows: int, frame_index: np.ndarray, elements):
    """Column position of each row's element in ``elements`` (inferred sorted if None)."""
    if species is None:
        raise InputError("per_species=True needs `species` (the atomic number of every row, e.g. rows['Z'])")
    z = np.asarray(species)
    if z.shape != (n_rows,):
        raise InputError(f"species must have one entry per row ({n_rows}), got shape {z.shape}")
    z = z.astype(np.int64)
    if elements is None:
        el = np.unique(z)
    else:
        el = np.asarray([int(e) for e in elements], dtype=np.int64)
        if len(np.unique(el)) != len(el):
            raise InputError(f"elements contains duplicates: {list(el)}")
        if len(el) == 0:
            raise InputError("elements is empty")
    sorter = np.argsort(el)
    pos_sorted = np.searchsorted(el[sorter], z).clip(0, len(el) - 1)
    known = el[sorter][pos_sorted] == z
    if not known.all():
        i = int(np.flatnonzero(~known)[0])
        raise InputError(
            f"frame {int(frame_index[i])}: element Z={int(z[i])} is not in the element list {[int(e) for e in el]}"
        )
    return sorter[pos_sorted], tuple(int(e) for e in el)


def cumulants(
    features,
    frame_index,
    order: int = 8,
    root: bool = True,
    *,
    per_species: bool = False,
    species=None,
    elements: Sequence[int] | None = None,
    return_info: bool = False,
):
    r"""Progressive cumulants :math:`[\kappa_1, \dots, \kappa_K]` of each frame's atom features.

    Parameters
    ----------
    features : (n_atoms, d) array
        Per-atom features (any float dtype; computed in float64).
    frame_index : (n_atoms,) int array
        Frame id of each row (the row table's ``frame``); rows may come in any order and ids may be
        non-contiguous. Output row ``i`` is frame ``np.unique(frame_index)[i]``.
    order : int
        Highest cumulant order K (>= 1).
    root : bool
        Map :math:`\kappa_k \to \operatorname{sign}(\kappa_k)|\kappa_k|^{1/k}` for k >= 2.
    per_species : bool
        Cumulants over the atoms of each element separately; blocks of absent elements are zero
        (see ``info.presence``). Needs ``species``; ``elements`` fixes the element list and order
        (default: sorted elements present), which must be shared to compare datasets.
    return_info : bool
        Also return an :class:`AggregateInfo` (frames, single-atom frames, column layout).

    Returns
    -------
    X : (n_frames, K * d) float64 array, or (n_frames, K * n_elements * d) per species; columns are
        order-major (``X[:, info.prefix(k)]`` are the order-k features). With ``return_info``:
        ``(X, info)``.

    Frames with one atom (or, per species, one atom of an element) have :math:`\kappa_k = 0`,
    k >= 2, and are listed in ``info.single_atom_frames`` (per species: ``species_counts == 1``).
    """
    x, f = check_features(features, frame_index)
    order = _check_order(order)
    d = x.shape[1]
    if not per_species:
        seg = segments_of(f)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported as InputError
            kap = _segment_cumulants(x, seg, order, seg.keys)
        frames, n_atoms = seg.keys, seg.counts
        values = kap.reshape(len(frames), order * d)
        el = None
        species_counts = None
        columns = tuple((k, c) for k in range(1, order + 1) for c in range(d))
        column_names = ("order", "column")
    else:
        frames, values, species_counts, el = _per_species(x, f, species, elements, order)
        n_atoms = species_counts.sum(axis=1)
        columns = tuple((k, z, c) for k in range(1, order + 1) for z in el for c in range(d))
        column_names = ("order", "element", "column")
    if root and order >= 2:
        v = values.reshape(len(frames), order, -1)
        v[:] = root_cumulants(v, axis=1)
    if not return_info:
        return values
    info = AggregateInfo(
        method="cumulants",
        frames=np.asarray(frames, dtype=np.int64),
        n_atoms=np.asarray(n_atoms, dtype=np.int64),
        single_atom_frames=np.asarray(frames, dtype=np.int64)[np.asarray(n_atoms) == 1],
        n_features=d,
        columns=columns,
        column_names=column_names,
        order=order,
        root=bool(root),
        elements=el,
        species_counts=species_counts,
    )
    return values, info


def _per_species(x, f, species, elements, order):
    """Cumulants per (frame, element): ``(frames, values (n_frames, order*n_el*d), species counts, elements)``."""
    d = x.shape[1]
    pos, el = _element_positions(species, len(x), f, elements)
    frames, frame_rank = np.unique(f, return_inverse=True)
    n_el = len(el)
    seg = segments_of(frame_rank.astype(np.int64) * n_el + pos)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported as InputError
        kap = _segment_cumulants(x, seg, order, frames[seg.keys // n_el])
    full = np.zeros((len(frames), order, n_el, d))
    full[seg.keys // n_el, :, seg.keys % n_el, :] = kap
    species_counts = np.zeros((len(frames), n_el), dtype=np.int64)
    species_counts[seg.keys // n_el, seg.keys % n_el] = seg.counts
    return frames, full.reshape(len(frames), order * n_el * d), species_counts, el


def frame_values(values, frame_index) -> np.ndarray:
    """One value per frame (sorted unique frame ids) from a per-row field such as ``rows['subset']``.

    Raises :class:`InputError` if the rows of one frame disagree.
    """
    v = np.asarray(values)
    f = np.asarray(frame_index)
    if v.shape[:1] != f.shape:
        raise InputError(f"values has {len(v)} entries but frame_index has {len(f)}")
    seg = segments_of(f)
    vs = v if seg.perm is None else v[seg.perm]
    first = vs[seg.starts]
    bad = np.flatnonzero(vs != np.repeat(first, seg.counts))
    if bad.size:
        i = int(np.searchsorted(seg.starts, bad[0], side="right") - 1)
        raise InputError(f"frame {int(seg.keys[i])}: its rows carry different values ({first[i]!r} vs {vs[bad[0]]!r})")
    return first
