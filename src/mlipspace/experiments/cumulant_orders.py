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

from collections.abc import Callable, Sequence

import numpy as np

from mlipspace.aggregate.cumulants import cumulants, frame_values
from mlipspace.errors import InputError
from mlipspace.intervals import (
    LFRE_ROWS_PER_NEIGHBOUR,
    Estimate,
    first_reason,
    lfre_regime,
    ridge_regime,
    test_regime,
)
from mlipspace.metrics import default_k
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
    k: int | None = None,
    *,
    test_fraction: float = 0.25,
    n_test: int | None = None,
    root: bool = True,
    model: str = "",
    layer: str = "last",
    dataset: str = "",
    lfre_max_test: int | None = None,
    progress: Callable[[], None] | None = None,
    compress: bool = True,
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
    k : LFRE neighbours; default :func:`mlipspace.metrics.default_k` per pair.
    test_fraction, n_test : size of the test side (structures).
    lfre_max_test : evaluate LFRE on at most this many test structures (seeded subsample).

    Returns tidy records (``analysis="cumulant-orders"``, ``level="structure"``) with
    ``source_order``, ``target_order``, ``metric``, ``value`` (mean over seeds), ``spread`` (sample
    std), ``seed_values`` (per seed), ``seeds``, ``n_train``, ``n_test``, ``model``,
    ``source_width``/``target_width`` (columns) and, for LFRE, ``k``.

    With ``compress`` (default) the atom features are first reduced to their leading principal
    components (fitted on each split's training structures; ``components`` in the record) so that
    the widest order still admits a ridge fit (n_train >= 2 x width): without it the fits
    interpolate and the reverse (high -> low) errors, ideally ~0, grow (0.16 on the default run).
    A pair outside the valid regime (:mod:`mlipspace.intervals`) gets ``value: None`` and a ``reason``.
    """
    from mlipspace.data.splits import structure_split
    from mlipspace.experiments._common import cumulant_features, structure_width

    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise InputError(f"unknown metric(s) {unknown or metrics!r}; choose from {', '.join(METRICS)}")
    if isinstance(max_order, bool) or not isinstance(max_order, (int, np.integer)) or max_order < 2:
        raise InputError(f"max_order must be an integer >= 2 (an order table needs two orders), got {max_order!r}")
    if len(seeds) == 0:
        raise InputError("no seeds given")
    X = np.asarray(features, dtype=np.float64)
    frame_index = np.asarray(frame_index)
    n_frames = len(np.unique(frame_index))
    if n_frames < 4:
        raise InputError(f"an order table needs at least 4 structures, got {n_frames}")
    labels = _subsets(subsets_per_frame, frame_index, n_frames)
    rows = {"frame": frame_index}
    splits = []
    for s in seeds:
        train, test = structure_split(list(labels), n_test=n_test, test_fraction=test_fraction, seed=int(s))
        train, test = np.sort(np.asarray(train)), np.sort(np.asarray(test))
        m = max(1, structure_width(len(train), max_order, X.shape[1]) if compress else X.shape[1])
        phi = cumulant_features(X, rows, int(max_order), n_components=m, train=train, root=root)
        splits.append((train, test, phi, phi.shape[1] // int(max_order)))
    pairs = [(j, k) for j in range(1, max_order + 1) for k in range(1, max_order + 1) if j != k]
    out = []
    for metric in metrics:
        for j, t in pairs:
            out.append(_order_record(metric, j, t, splits, seeds, k, lfre_max_test, model=model,
                                     layer=layer, dataset=dataset, max_order=int(max_order), root=bool(root)))
            if progress is not None:
                progress()
    return out


def _order_record(metric, j, t, splits, seeds, k, lfre_max_test, **fields) -> dict:
    """One record of the order table: ``metric`` of order j -> order k over the splits (or a reason)."""
    from mlipspace import metrics as fre_metrics
    from mlipspace.experiments._common import subsample

    est, why, ks, n_tests = Estimate("rms"), None, [], []
    for seed, (train, test, phi, w) in zip(seeds, splits, strict=True):
        X, Y = phi[:, : j * w], phi[:, : t * w]
        if metric == "lfre":
            test = subsample(test, lfre_max_test, int(seed))
            kk = int(k) if k is not None else default_k(X.shape[1], Y.shape[1], max(len(train), 2 * LFRE_ROWS_PER_NEIGHBOUR))
            ks.append(kk)
            why = first_reason(test_regime(len(test)), lfre_regime(len(train), kk))
        else:
            why = first_reason(test_regime(len(test)), ridge_regime(len(train), X.shape[1], rows="training structures"))
        n_tests.append(len(test))
        if why:
            break
        if metric == "gfre":
            pw = fre_metrics.pointwise_gfre(X, Y, train_idx=train, test_idx=test)
        else:
            pw = fre_metrics.pointwise_lfre(X, Y, k=ks[-1], train_idx=train, test_idx=test)
        est.add(pw, np.arange(len(test)), int(seed))
    w0 = splits[0][3]
    extra = {"k": int(ks[0])} if ks else {}
    f = {"reason": why} if why else est.fields()
    values = f.pop("values", [])
    return record(
        ANALYSIS, fields["model"], fields["model"], metric, values, level="structure", layer=fields["layer"],
        n_train=len(splits[0][0]), n_test=int(n_tests[0]), dataset=fields["dataset"], model=fields["model"],
        source_order=int(j), target_order=int(t), seed_values=values, seeds=[int(s) for s in seeds],
        max_order=fields["max_order"], source_width=int(j * w0), target_width=int(t * w0), components=int(w0),
        root=fields["root"], **f, **extra,
    )


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
        v = r.get(field)
        M[pos[int(r["source_order"])], pos[int(r["target_order"])]] = np.nan if v is None else float(v)
    return M, orders
