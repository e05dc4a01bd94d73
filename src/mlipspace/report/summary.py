"""The study's four findings, checked against the numbers of a run and stated in words.

Each finding is a :class:`Finding` with a ``verdict`` that follows the 95 % intervals, not the point
estimates: *holds* when the intervals support it, *does not hold* when they contradict it,
*inconclusive* when they straddle the threshold, *not tested* when the run lacks the numbers.
``holds`` mirrors it (``True``/``False``/``None``); ``text`` quotes the intervals; ``numbers`` holds the
values used. Thresholds are stated in the text so a reader can disagree with them. The interval of a
mean over several records is the mean of their intervals (:func:`mlipspace.records.mean_interval`:
conservative).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mlipspace.records import mean_interval, off_diagonal, select
from mlipspace.report.trust import leakage_summary

#: "large" for finding (i): the mean cross-family GFRE exceeds this (the study reports 0.66).
LARGE_GFRE = 0.3
#: finding (iv): an order adds information when GFRE(lower -> higher) exceeds this.
ADDS_INFO_GFRE = 0.05

HOLDS, FAILS, INCONCLUSIVE, NOT_TESTED = "holds", "does not hold", "inconclusive", "not tested"


@dataclass
class Finding:
    key: str
    title: str
    verdict: str
    text: str
    numbers: dict = field(default_factory=dict)

    @property
    def holds(self) -> bool | None:
        return {HOLDS: True, FAILS: False}.get(self.verdict)


def ci_text(est: tuple[float, float, float]) -> str:
    """``"0.64 [0.60, 0.69]"``: a value and its 95 % interval."""
    v, lo, hi = est
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def above(est: tuple[float, float, float], threshold: float) -> str:
    """Verdict of "the quantity exceeds ``threshold``" from its interval."""
    _, lo, hi = est
    if not np.isfinite(lo):
        return NOT_TESTED
    return HOLDS if lo > threshold else FAILS if hi <= threshold else INCONCLUSIVE


def below(a: tuple[float, float, float], b: tuple[float, float, float]) -> str:
    """Verdict of "a is smaller than b" from their intervals (disjoint intervals decide)."""
    if not (np.isfinite(a[1]) and np.isfinite(b[1])):
        return NOT_TESTED
    return HOLDS if a[2] < b[1] else FAILS if a[1] > b[2] else INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """All must hold: any failure fails, else any inconclusive is inconclusive."""
    vs = [v for v in verdicts if v != NOT_TESTED]
    if not vs:
        return NOT_TESTED
    return FAILS if FAILS in vs else INCONCLUSIVE if INCONCLUSIVE in vs else HOLDS


def families(meta: Mapping) -> dict[str, str]:
    """``{model: family}`` from the results' meta (a model missing from it is its own family)."""
    return {name: str(info.get("family", name)) for name, info in (meta.get("models") or {}).items()}


def cross_family(records: Sequence[Mapping], meta: Mapping, metric: str = "gfre", level: str = "atom",
                 analysis: str = "cross-model") -> tuple[tuple[float, float, float], int]:
    """``((mean, low, high), n)`` over the ordered pairs of models of different families."""
    recs = off_diagonal(records, metric, level, analysis=analysis, families=families(meta), across_families=True)
    return mean_interval(recs), len(recs)


def finding_cross(records, meta) -> Finding:
    est, n = cross_family(records, meta, "gfre")
    lfre, n_lfre = cross_family(records, meta, "lfre")
    title = "(i) Different model families encode different information"
    if n == 0:
        return Finding("i", title, NOT_TESTED, "No pair of models from different families was compared.")
    verdict = above(est, LARGE_GFRE)
    text = (
        f"The mean GFRE between models of different families is {ci_text(est)} (95 % interval; {n} ordered "
        "pairs, test structures never seen in training"
        + (f"; LFRE {ci_text(lfre)}" if n_lfre else "")
        + "; study: 0.66 GFRE, 0.37 LFRE with a per-atom split). "
        + {HOLDS: f"The whole interval lies above {LARGE_GFRE}: a linear map recovers only part of one family's "
                  "features from another's.",
           FAILS: f"The whole interval lies at or below {LARGE_GFRE}: the families' features are largely linearly "
                  "interchangeable here.",
           INCONCLUSIVE: f"The interval straddles {LARGE_GFRE}: more structures are needed to decide."}[verdict]
        + _leakage_text(records, meta)
    )
    study = leakage_summary(records)
    return Finding("i", title, verdict, text, {"mean_gfre_across_families": est, "mean_lfre_across_families": lfre,
                                               "leakage": study})


def _leakage_text(records, meta) -> str:
    """What the study's per-atom split does to the cross-family numbers, and how much of it is twins."""
    parts = []
    for m in ("gfre", "lfre"):
        split, n = cross_family(records, meta, m, level="atom-ungrouped")
        clean, _ = cross_family(records, meta, m, level="atom-ungrouped", analysis="leakage")
        if n:
            parts.append(f"{m.upper()} {ci_text(split)}" + (f" ({ci_text(clean)} without twins)"
                                                             if np.isfinite(clean[0]) else ""))
    if not parts:
        return ""
    twins = leakage_summary(records)["twin_share"]
    return (" With the study's per-atom split the same means are " + ", ".join(parts)
            + (f"; {100 * twins[0]:.0f} % [{100 * twins[1]:.0f}, {100 * twins[2]:.0f}] of its test atoms have a "
               "symmetry twin among the training atoms" if np.isfinite(twins[0]) else "")
            + ": the difference from the grouped numbers is leakage between atoms of one structure.")


def finding_variants(records, meta) -> Finding:
    title = "(ii) Same-architecture variants are closer to each other"
    var = [r for r in select(records, analysis="variants", metric="gfre", level="atom") if r["value"] is not None]
    across, n = cross_family(records, meta, "gfre")
    if not var or n == 0:
        return Finding("ii", title, NOT_TESTED, "Not enough models for a variant vs cross-family comparison.")
    groups: dict[str, list[Mapping]] = {}
    for r in var:
        groups.setdefault(r["group"], []).append(r)
    means = {g: mean_interval(v) for g, v in groups.items()}
    mv = mean_interval(var)
    per_group = {g: below(v, across) for g, v in means.items()}
    verdict = below(mv, across)
    detail = "; ".join(f"{g}: {ci_text(v)} ({per_group[g]})" for g, v in means.items())
    text = (
        f"Mean GFRE within same-architecture variants is {ci_text(mv)} versus {ci_text(across)} across families "
        f"(95 % intervals; {detail}). "
        + {HOLDS: "The intervals do not overlap: variants are closer, as in the study (0.28–0.59 by family).",
           FAILS: "The intervals do not overlap, the wrong way: variants are farther apart than families here.",
           INCONCLUSIVE: "The intervals overlap: this run cannot tell the two apart."}[verdict]
    )
    return Finding("ii", title, verdict, text, {"mean_gfre_variants": mv, "groups": means})


def finding_finetune(records, meta) -> Finding:
    title = "(iii) Fine-tuned models stay close to their parent"
    ft = [r for r in select(records, analysis="finetune", metric="gfre") if r["value"] is not None]
    rel: dict[str, list[Mapping]] = {}
    who: dict[str, str] = {}
    for r in ft:
        rel.setdefault(r["relation"], []).append(r)
        who[r["relation"]] = r["target"] if r["source"] == "chgnet-r2scan" else r["source"]
    means = {k: mean_interval(v) for k, v in rel.items()}
    parent = next((v for k, v in means.items() if k.startswith("parent")), None)
    others = {k: v for k, v in means.items() if not k.startswith("parent")}
    parts, verdicts = [], []
    if parent is not None:
        parts.append(f"CHGNet-r2SCAN sits at GFRE {ci_text(parent)} from its parent CHGNet 0.3.0 (mean of both "
                     "directions, 95 % interval)" + ("; no independently trained reference was compared." if not others
                                                      else ", " + ", ".join(f"{ci_text(v)} from {who.get(k, '?')} ({k})"
                                                                            for k, v in others.items()) + "."))
        verdicts += [below(parent, v) for v in others.values()]
    track = [r for r in select(records, analysis="finetune-track", metric="gfre") if r["value"] is not None]
    if track:
        last = max(r["epoch"] for r in track)
        ftp = mean_interval([r for r in track if r["run"] == "finetune" and r["epoch"] == last])
        scp = mean_interval([r for r in track if r["run"] == "scratch" and r["epoch"] == last])
        if np.isfinite(ftp[0]):
            s = f"Live fine-tuning: after {last} epoch(s) the fine-tuned CHGNet is at GFRE {ci_text(ftp)} from the pre-trained model"
            if np.isfinite(scp[0]):
                s += f", the from-scratch control at {ci_text(scp)}"
                verdicts.append(below(ftp, scp))
            parts.append(s + ".")
    if not parts:
        return Finding("iii", title, NOT_TESTED, "No fine-tuning comparison was run (needs chgnet-r2scan and references).")
    verdict = combine(verdicts)
    if verdict != NOT_TESTED:
        parts.append({HOLDS: "The parent's interval lies below every other's: the parent is the closest, as in the "
                             "study (0.03–0.07 vs 0.13–0.20).",
                      FAILS: "Some reference's interval lies wholly below the parent's: the parent is not the closest.",
                      INCONCLUSIVE: "Some intervals overlap the parent's: this run cannot rank them all."}[verdict])
    return Finding("iii", title, verdict, " ".join(parts), {"relations": means})


def finding_orders(records, meta) -> Finding:
    title = "(iv) Each cumulant order adds information"
    recs = [r for r in select(records, analysis="cumulant-orders", metric="gfre") if r["value"] is not None]
    skipped = [r for r in select(records, analysis="cumulant-orders", metric="gfre") if r["value"] is None]
    fwd: dict[tuple[int, int], list[Mapping]] = {}
    back = []
    for r in recs:
        a, b = r.get("source_order"), r.get("target_order")
        if a is None or b is None:
            continue
        if b == a + 1:
            fwd.setdefault((int(a), int(b)), []).append(r)
        elif a == b + 1:
            back.append(r)
    if not fwd:
        why = f" ({skipped[0]['reason']})" if skipped else ""
        return Finding("iv", title, NOT_TESTED, "No cumulant order comparison was run" + why + ".")
    means = {k: mean_interval(v) for k, v in sorted(fwd.items())}
    verdict = combine([above(v, ADDS_INFO_GFRE) for v in means.values()])
    n_models = max(len(v) for v in fwd.values())
    detail = ", ".join(f"{a}→{b}: {ci_text(v)}" for (a, b), v in means.items())
    mb = mean_interval(back)
    text = (
        f"Reconstructing the cumulants up to order k+1 from those up to order k leaves a GFRE of {detail} "
        f"(95 % intervals, mean over {n_models} model(s); study: 0.24–0.42)"
        + (f"; the reverse direction gives {ci_text(mb)} on average (ideally ~0: higher orders contain the lower "
           "ones; larger values mean too few structures for the cumulant widths)" if back else "")
        + ". "
        + {HOLDS: f"Every interval lies above {ADDS_INFO_GFRE}: every order adds information.",
           FAILS: f"Some interval lies at or below {ADDS_INFO_GFRE}: some order adds little.",
           INCONCLUSIVE: f"Some interval straddles {ADDS_INFO_GFRE}: more structures are needed to decide."}[verdict]
    )
    return Finding("iv", title, verdict, text, {"forward": {f"{a}->{b}": v for (a, b), v in means.items()},
                                                "mean_backward": mb})


def findings(results: Mapping) -> list[Finding]:
    """The four findings of the study, evaluated on ``results`` (see :mod:`mlipspace.report.results`)."""
    recs, meta = results.get("records", []), results.get("meta", {})
    return [finding_cross(recs, meta), finding_variants(recs, meta), finding_finetune(recs, meta),
            finding_orders(recs, meta)]
