"""How far to trust the cross-model numbers: leakage under the study's split, and values above 1.

Reads only records (analyses ``cross-model``, ``leakage``, ``coverage``; see
:class:`mlipspace.experiments.cross_model.TestSubsets`) and writes one folded report section.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mlipspace.records import mean_interval, select


def _by_pair(records, **where) -> dict[tuple[str, str], Mapping]:
    return {(r["source"], r["target"]): r for r in select(records, **where) if r.get("value") is not None}


def leakage_summary(records) -> dict:
    """Mean (and interval) over pairs of the twin share and of GFRE/LFRE under the grouped split, the
    study's per-atom split, and the per-atom split without the test atoms that have a twin."""
    out = {"twin_share": mean_interval([r for r in select(records, analysis="leakage", metric="twin_share")
                                        if r.get("value") is not None])}
    for metric in ("gfre", "lfre"):
        for name, where in (("grouped", dict(analysis="cross-model", level="atom")),
                            ("study split", dict(analysis="cross-model", level="atom-ungrouped")),
                            ("study split without twins", dict(analysis="leakage", level="atom-ungrouped"))):
            recs = [r for r in select(records, metric=metric, **where) if r.get("value") is not None
                    and r["source"] != r["target"]]
            out[f"{metric} {name}"] = mean_interval(recs)
    return out


def _ci(est) -> str:
    v, lo, hi = est
    return "–" if not np.isfinite(v) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def trust_section(page, results: Mapping, fmt_cell) -> None:
    """The "Leakage and coverage" section (nothing when the run has neither analysis)."""
    recs = results["records"]
    if not select(recs, analysis="leakage") and not select(recs, analysis="coverage"):
        return
    page.section("trust", "Leakage and values above 1")
    s = leakage_summary(recs)
    page.add("<h3>The study's per-atom split leaks</h3>")
    page.add('<p class="note">With the study\'s split, test atoms are drawn one by one, so their structure-mates '
             "train; symmetry-equivalent atoms of one structure then sit on both sides (a <b>twin</b>: a training "
             "atom within 1e-6 of the test atom in the source's scaled feature space). Their error is ~0 and "
             "pulls the mean down. The grouped split (whole test structures, the default) has no twins. "
             f"Share of test atoms with a twin under the study's split: {_ci(s['twin_share'])} (mean over "
             "models, 95 % interval).</p>")
    rows = [[m.upper()] + [_ci(s[f"{m} {name}"]) for name in ("grouped", "study split", "study split without twins")]
            for m in ("gfre", "lfre") if np.isfinite(s[f"{m} grouped"][0]) or np.isfinite(s[f"{m} study split"][0])]
    page.table(["mean over pairs", "grouped split", "study's per-atom split", "per-atom split, twins left out"], rows)
    page.add('<p class="note">Read: the gap between the first two columns is what the study\'s protocol hides; '
             "the third column says how much of it comes from exact twins (the rest from near neighbours of one "
             "structure).</p>")
    _coverage(page, recs, fmt_cell)


def _coverage(page, recs, fmt_cell) -> None:
    share = {r["source"]: r for r in select(recs, analysis="coverage", metric="outside_share")}
    page.add("<h3>Values above 1: can't reconstruct, or never saw this chemistry?</h3>")
    page.add('<p class="note">An FRE above 1 means the fitted map predicts the test atoms worse than their mean. '
             "Two causes: (a) test atoms outside the training coverage — their nearest training atom is farther "
             "than 99 % of training atoms are from their own nearest neighbour in another structure — on which "
             "any fit extrapolates; (b) a target that is not linearly recoverable from the source at all. Below, "
             "each pair above 1 with the source's share of uncovered test atoms and the FRE recomputed on the "
             "covered atoms only. If it drops below 1 there, the data lack that chemistry: add training "
             "structures like the uncovered ones (or more structures: <code>--size</code>). If it stays above 1, "
             "the two models genuinely disagree there.</p>")
    rows = []
    for metric in ("gfre", "lfre"):
        covered = _by_pair(recs, analysis="coverage", metric=metric, level="atom")
        for (a, b), r in _by_pair(recs, analysis="cross-model", metric=metric, level="atom").items():
            if a != b and r["value"] > 1:
                rows.append([metric.upper(), a, b, fmt_cell(r, 2), fmt_cell(share.get(a), 3),
                             fmt_cell(covered.get((a, b)), 2)])
    if rows:
        page.table(["metric", "source", "target", "all test atoms", "uncovered share (source)",
                    "covered atoms only"], rows, left=3)
    else:
        page.add('<p class="note">No cross-model value above 1 at atom level in this run.</p>')
    if share:
        page.table(["source model", "uncovered share of test atoms"],
                   [[m, fmt_cell(r, 3)] for m, r in share.items()])
