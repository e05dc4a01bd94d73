r"""Does each cumulant order add information? GFRE/LFRE between progressive-cumulant orders.

With :math:`\varphi^{(k)} = [\kappa_1, \dots, \kappa_k]` the structure features of order k (see
:func:`mlipspace.aggregate.cumulants`), the table holds the reconstruction error of
:math:`\varphi^{(k)}` from :math:`\varphi^{(j)}` for every ordered pair j != k. Forward (j < k):
well above 0 when the added orders carry information the lower ones lack (study, PET-MAD:
0.24–0.42 for consecutive orders). Backward (j > k): ~0, since :math:`\varphi^{(k)}` is a column
subset of :math:`\varphi^{(j)}`.

Splits are over structures, stratified by subset (:func:`mlipspace.data.splits.structure_split`),
one per seed; each record reports the mean and the sample standard deviation over seeds.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from mlipspace.aggregate.cumulants import cumulants, frame_values
from mlipspace.errors import InputError
from mlipspace.records import record

ANALYSIS = "cumulant-orders"
METRICS = ("gfre", "lfre")


def _subsets(subsets_per_frame, frame_index, n_frames: int) -> np.ndarray:
    s = np.asarray(subsets_per_frame)
    if s.shape == (n_frames,):
        return s.astype(str)
    if s.shape == np.shape(frame_index):
        return np.asarray(frame_values(s, frame_index)).astype(str)
    raise InputError(
        f"subsets_per_frame has {s.size} entries: expected one per frame ({n_frames}, sorted frame ids) "
        f"or one per atom row ({np.size(frame_index)})"
    )


def order_table(
    features,
    frame_index,
    subsets_per_frame,
    max_order: int = 8,
    seeds: Sequence[int] = (0, 1, 2),
    metrics: Sequence[str] = METRICS,
    n_local_points: int | None = None,
    *,
    test_fraction: float = 0.25,
    n_test: int | None = None,
    root: bool = True,
    model: str = "",
    layer: str = "last",
    dataset: str = "",
    lfre_max_test: int | None = None,
    progress: Callable[[], None] | None = None,
) -> list[dict]:
    """GFRE/LFRE of order j -> order k progressive cumulants, all j != k in 1..``max_order``.

    Parameters
    ----------
    features, frame_index : per-atom features (n_atoms, d) of one model and the frame id of each row.
    subsets_per_frame : subset tag per frame (in sorted frame-id order) or per atom row; the test
        structures are drawn stratified by it.
    max_order : highest order K; the table is K x K without the diagonal.
    seeds : one structure split per seed.
    metrics : any of ``"gfre"``, ``"lfre"``.
    n_local_points : LFRE neighbours; default :func:`mlipspace.metrics.default_k` per pair (must not
        exceed the training structures).
    test_fraction, n_test : size of the test side (structures).
    lfre_max_test : evaluate LFRE on at most this many test structures (seeded subsample).

    Returns tidy records (``analysis="cumulant-orders"``, ``level="structure"``) with
    ``source_order``, ``target_order``, ``metric``, ``value`` (mean over seeds), ``spread`` (sample
    std), ``seed_values`` (per seed), ``seeds``, ``n_train``, ``n_test``, ``model``,
    ``source_width``/``target_width`` (columns) and, for LFRE, ``n_local_points``.

    Warns when an order's width reaches 90 % of the training structures: the ridge fits then
    interpolate and the table loses its meaning for those orders (see ``docs/cumulants.md``).
    """
    from mlipspace import metrics as fre_metrics
    from mlipspace.data.splits import structure_split

    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise InputError(f"unknown metric(s) {unknown or metrics!r}; choose from {', '.join(METRICS)}")
    if isinstance(max_order, bool) or not isinstance(max_order, (int, np.integer)) or max_order < 2:
        raise InputError(f"max_order must be an integer >= 2 (an order table needs two orders), got {max_order!r}")
    if len(seeds) == 0:
        raise InputError("no seeds given")
    phi, info = cumulants(features, frame_index, order=int(max_order), root=root, return_info=True)
    n_frames = len(info.frames)
    if n_frames < 4:
        raise InputError(f"an order table needs at least 4 structures, got {n_frames}")
    labels = _subsets(subsets_per_frame, frame_index, n_frames)
    splits = [
        structure_split(list(labels), n_test=n_test, test_fraction=test_fraction, seed=int(s)) for s in seeds
    ]
    w = info.block_width
    n_train_min = min(len(tr) for tr, _ in splits)
    # near width ~ n_train the ridge fits interpolate (double-descent peak): flag from 90 % on
    wide = [k for k in range(1, max_order + 1) if k * w >= 0.9 * n_train_min]
    if wide:
        warnings.warn(
            f"cumulants of order >= {wide[0]} have {wide[0] * w}+ columns for {n_train_min} training structures: "
            "ridge fits there interpolate, so reverse (high -> low) errors are no longer ~0 and forward errors "
            "into or out of those orders are inflated; use more structures or a lower max_order",
            stacklevel=2,
        )
    pairs = [(j, k) for j in range(1, max_order + 1) for k in range(1, max_order + 1) if j != k]
    out = []
    for metric in metrics:
        for j, k in pairs:
            X, Y = phi[:, : j * w], phi[:, : k * w]
            values, n_tests, ks = [], [], []
            for seed, (train, test) in zip(seeds, splits, strict=True):
                if metric == "gfre":
                    values.append(float(fre_metrics.gfre(X, Y, train_idx=train, test_idx=test)))
                    n_tests.append(len(test))
                else:
                    if lfre_max_test is not None and len(test) > lfre_max_test:
                        rng = np.random.default_rng(int(seed))
                        test = np.sort(rng.choice(test, size=int(lfre_max_test), replace=False))
                    kk = fre_metrics.default_k(X.shape[1], Y.shape[1], len(train)) if n_local_points is None \
                        else int(n_local_points)
                    if kk > len(train):
                        raise InputError(
                            f"n_local_points={kk} exceeds the {len(train)} training structures; choose at most "
                            f"{len(train)} (default: mlipspace.metrics.default_k)"
                        )
                    values.append(float(fre_metrics.lfre(X, Y, k=kk, train_idx=train, test_idx=test)))
                    n_tests.append(len(test))
                    ks.append(kk)
            extra = {"n_local_points": int(ks[0])} if ks else {}
            out.append(
                record(
                    ANALYSIS,
                    model,
                    model,
                    metric,
                    values,
                    level="structure",
                    layer=layer,
                    n_train=len(splits[0][0]),
                    n_test=int(n_tests[0]),
                    dataset=dataset,
                    model=model,
                    source_order=int(j),
                    target_order=int(k),
                    seed_values=values,
                    seeds=[int(s) for s in seeds],
                    max_order=int(max_order),
                    source_width=int(j * w),
                    target_width=int(k * w),
                    root=bool(root),
                    **extra,
                )
            )
            if progress is not None:
                progress()
    return out


def order_matrix(records: Sequence[dict], metric: str = "gfre", model: str | None = None,
                 field: str = "value") -> tuple[np.ndarray, list[int]]:
    """The K x K table (source order rows, target order columns; NaN on the diagonal) of ``records``."""
    sel = [r for r in records if r.get("metric") == metric and r.get("analysis", ANALYSIS) == ANALYSIS
           and (model is None or r.get("model") == model)]
    if not sel:
        raise InputError(f"no {metric} records" + (f" for model {model!r}" if model else ""))
    orders = sorted({int(r["source_order"]) for r in sel} | {int(r["target_order"]) for r in sel})
    pos = {o: i for i, o in enumerate(orders)}
    M = np.full((len(orders), len(orders)), np.nan)
    for r in sel:
        M[pos[int(r["source_order"])], pos[int(r["target_order"])]] = float(r[field])
    return M, orders
