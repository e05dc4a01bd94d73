"""Report pieces of "does feature similarity predict behaviour?": scatter figure and section.

Built from ``agreement`` and ``agreement-correlation`` records alone (see
:mod:`mlipspace.experiments.agreement`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from mlipspace.records import select
from mlipspace.report.figures import _plt, save

_LABEL = {"gfre": "GFRE (mean of both directions)", "cka": "linear CKA"}


def scatter(correlations: Sequence[Mapping], stem: str | os.PathLike) -> tuple[str, str]:
    """One panel per feature metric: feature distance (x) vs energy disagreement (y) of every model pair."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(correlations), figsize=(4.6 * len(correlations), 3.9), squeeze=False)
    for ax, c in zip(axes[0], correlations):
        pts = c.get("points") or []
        x = [p[2] for p in pts]
        y = [p[3] for p in pts]
        ax.scatter(x, y, s=22, color="#4c72b0")
        for a, b, xi, yi in pts:
            ax.annotate(f"{a}/{b}", (xi, yi), fontsize=5.5, xytext=(3, 2), textcoords="offset points")
        metric = c.get("feature_metric", c["source"])
        ax.set_xlabel(_LABEL.get(metric, metric))
        ax.set_ylabel("energy disagreement (meV/atom, RMS)")
        ax.set_title(f"Spearman ρ = {c['value']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}], p = {c['p_value']:.3f}",
                     fontsize=8)
        ax.grid(alpha=0.3)
    return save(fig, stem)


def verdict(c: Mapping) -> str:
    """One sentence on a correlation record: the rho, its interval, the p-value and what they say."""
    metric = _LABEL.get(c.get("feature_metric", ""), c.get("feature_metric", ""))
    if c.get("value") is None:
        return f"{metric}: no correlation computed ({c.get('reason', 'no value')})."
    sign = "closer features go with closer energies" if (c["value"] > 0) == (c.get("feature_metric") != "cka") \
        else "closer features go with larger energy disagreement"
    test = ("exact test over all" if c.get("exact") else "test over") + f" {c['n_permutations']} relabellings of the models"
    strength = ("the evidence for a relation is strong" if c["p_value"] < 0.01 else "some evidence for a relation"
                if c["p_value"] < 0.05 else "not distinguishable from no relation with this many models")
    return (f"{metric}: Spearman ρ = {c['value']:.2f} (95 % interval {c['ci_low']:.2f} to {c['ci_high']:.2f}, "
            f"conditional on these models) over {c['n_pairs']} pairs of {c['n_models']} models; p = "
            f"{c['p_value']:.3f} ({test}): {strength}; in the ordering, {sign}.")


def section(page, results: Mapping) -> None:
    """The folded "Feature similarity vs energy agreement" section (nothing without records)."""
    from mlipspace.report.html import _cell, _e, _fmt

    recs = results["records"]
    pairs = select(recs, analysis="agreement")
    corr = select(recs, analysis="agreement-correlation")
    if not pairs and not corr:
        return
    page.section("agreement", "Does feature similarity predict behaviour?")
    page.add('<p class="note">Each model\'s own readout turns its stored last-layer features into energies. '
             "After removing each model's composition offset (its energy per atom fitted on the element "
             "fractions: models trained on different references differ by such offsets), the RMS over structures "
             "of the difference of two models' energies per atom is their <i>energy disagreement</i>. The rank "
             "correlation across model pairs with the feature distance asks whether models that represent atoms "
             "alike also predict alike. p-value: the models' labels are permuted (Mantel test: pairs sharing a "
             "model are not independent). Interval: structures resampled and feature distances drawn from their "
             "intervals; it does not cover the choice of models, which only the p-value addresses.</p>")
    for c in corr:
        page.add(f"<p>{_e(verdict(c))}</p>")
    ok = [c for c in corr if c.get("value") is not None]
    if ok:
        page.figure(scatter(ok, page.fig_dir / "agreement_scatter"),
                    "Energy disagreement against feature distance, one point per model pair")
    page.table(["model A", "model B", "energy disagreement, RMS (meV/atom)", "median |difference| (meV/atom)"],
               [[_e(r["source"]), _e(r["target"]), _cell(r, nd=1), _fmt(r.get("median_abs"), 1)] for r in pairs],
               left=2)
    page.add('<p class="note">The RMS is dominated by a few far-from-equilibrium structures (compare the '
             "median). The composition offset is a ridge fit of each pair's energy difference on the element "
             "fractions: where two models' per-element references differ a lot, its shrinkage leaves part of "
             "that difference in the residual.</p>")
