"""Same-architecture variants: how far apart are models that share an architecture?

The study found that variants of one architecture trained on different data sit closer to each other
(mean GFRE ~0.28–0.59 by family) than models of different families (~0.66). The bundled models give
four such comparisons; each is computed in both directions, atom level, over seeded grouped splits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from mlipspace.errors import InputError
from mlipspace.records import select
from mlipspace.experiments.cross_model import check_features, level_features, pair_errors

#: (label, model A, model B): the same-architecture comparisons the bundled models allow.
VARIANT_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("SevenNet-0: 22May2024 vs 11Jul2024", "sevennet-0-22may2024", "sevennet-0"),
    ("SevenNet: l3i5 vs SevenNet-0", "sevennet-l3i5", "sevennet-0"),
    ("SevenNet-MF-0: PBE vs R2SCAN head", "sevennet-mf-0-pbe", "sevennet-mf-0-r2scan"),
    ("CHGNet: 0.2.0 vs 0.3.0", "chgnet-0.2.0", "chgnet-0.3.0"),
)


def available_pairs(models: Sequence[str], pairs=VARIANT_PAIRS) -> list[tuple[str, str, str]]:
    """The variant pairs whose two models are both in ``models``."""
    have = set(models)
    return [p for p in pairs if p[1] in have and p[2] in have]


def variants(
    features: Mapping[str, np.ndarray],
    rows: Mapping[str, np.ndarray],
    *,
    pairs: Sequence[tuple[str, str, str]] = VARIANT_PAIRS,
    metrics: Sequence[str] = ("gfre", "lfre"),
    level: str = "atom",
    order: int = 3,
    seeds: Sequence[int] = (0, 1, 2),
    n_test: int | None = None,
    layer: str = "last",
    dataset: str = "",
    fingerprints: Mapping[str, Mapping] | None = None,
    lfre_max_test: int | None = 500,
) -> list[dict]:
    """Records (``analysis="variants"``, field ``group``) for each available pair, both directions.

    Pairs whose models are not in ``features`` are left out; if none is left, the result is empty.
    """
    todo = available_pairs(list(features), pairs)
    if not todo:
        return []
    used = sorted({m for _, a, b in todo for m in (a, b)})
    sub = {m: features[m] for m in used}
    check_features(sub, rows)
    feats, splits, groups = level_features(sub, rows, level=level, order=order, seeds=seeds, n_test=n_test)
    ordered, extra = [], {}
    for label, a, b in todo:
        for s, t in ((a, b), (b, a)):
            ordered.append((s, t))
            extra[(s, t)] = {"group": label} | ({"order": int(order)} if level == "structure" else {})
    return pair_errors(
        feats, ordered, splits, groups=groups, metrics=metrics, analysis="variants", level=level, layer=layer,
        dataset=dataset, fingerprints=fingerprints, lfre_max_test=lfre_max_test, extra=extra,
    )


def group_means(records: Sequence[Mapping], metric: str = "gfre", level: str = "atom") -> dict[str, float]:
    """Mean of both directions for each variant group: ``{group label: mean value}``."""
    out: dict[str, list[float]] = {}
    for r in select(records, analysis="variants", metric=metric, level=level):
        if r["value"] is not None:
            out.setdefault(r["group"], []).append(r["value"])
    if not out and select(records, analysis="variants"):
        raise InputError(f"no variant records for metric {metric!r} at level {level!r}")
    return {k: float(np.mean(v)) for k, v in out.items()}
