"""The study's four findings, checked against the numbers of a run and stated in words.

Each finding is a :class:`Finding`: ``holds`` is ``True``/``False`` (``None`` when the run lacks the
numbers to decide), ``text`` is a sentence built from the numbers, ``numbers`` the values used.
Thresholds are stated in the text so a reader can disagree with them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mlipspace.records import select

#: "large" for finding (i): the mean cross-family GFRE exceeds this (the study reports 0.66).
LARGE_GFRE = 0.3
#: finding (iv): an order adds information when GFRE(lower -> higher) exceeds this.
ADDS_INFO_GFRE = 0.05


@dataclass
class Finding:
    key: str
    title: str
    holds: bool | None
    text: str
    numbers: dict = field(default_factory=dict)


def _mean(vals):
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def families(meta: Mapping) -> dict[str, str]:
    """``{model: family}`` from the results' meta (a model missing from it is its own family)."""
    return {name: str(info.get("family", name)) for name, info in (meta.get("models") or {}).items()}


def cross_family(records: Sequence[Mapping], meta: Mapping, metric: str = "gfre", level: str = "atom"):
    """``(mean over pairs of different families, mean over all off-diagonal pairs, n pairs)``."""
    fam = families(meta)
    recs = [r for r in select(records, analysis="cross-model", metric=metric, level=level) if r["source"] != r["target"]]
    across = [r["value"] for r in recs if fam.get(r["source"], r["source"]) != fam.get(r["target"], r["target"])]
    return _mean(across), _mean([r["value"] for r in recs]), len(across)


def finding_cross(records, meta) -> Finding:
    across, overall, n = cross_family(records, meta, "gfre")
    lfre_across, lfre_all, _ = cross_family(records, meta, "lfre")
    study_split, _, n_study = cross_family(records, meta, "gfre", level="atom-ungrouped")
    title = "(i) Different model families encode different information"
    if n == 0:
        return Finding("i", title, None, "No pair of models from different families was compared.")
    holds = bool(across > LARGE_GFRE)
    text = (
        f"The mean off-diagonal GFRE between models of different families is {across:.2f} "
        f"({n} ordered pairs; all pairs {overall:.2f}"
        + (f"; LFRE {lfre_across:.2f}" if np.isfinite(lfre_across) else "")
        + f"; study: 0.66 GFRE, 0.37 LFRE"
        + (f"; with the study's per-atom split, where a test atom's structure-mates train, {study_split:.2f}"
           if n_study else "")
        + "). "
        + ("That is large (above " if holds else "That is not large (at most ")
        + f"{LARGE_GFRE}): "
        + ("a linear map recovers only part of one family's features from another's."
           if holds else "the families' features are largely linearly interchangeable here.")
    )
    return Finding("i", title, holds, text, {"mean_gfre_across_families": across, "mean_gfre_all": overall,
                                             "mean_lfre_across_families": lfre_across,
                                             "mean_gfre_across_families_study_split": study_split})


def finding_variants(records, meta) -> Finding:
    title = "(ii) Same-architecture variants are closer to each other"
    var = select(records, analysis="variants", metric="gfre", level="atom")
    across, _, n = cross_family(records, meta, "gfre")
    if not var or n == 0:
        return Finding("ii", title, None, "Not enough models for a variant vs cross-family comparison.")
    groups: dict[str, list[float]] = {}
    for r in var:
        groups.setdefault(r["group"], []).append(r["value"])
    means = {g: _mean(v) for g, v in groups.items()}
    mv = _mean(list(means.values()))
    closer = sum(v < across for v in means.values())
    holds = bool(mv < across and closer > len(means) / 2)
    detail = "; ".join(f"{g}: {v:.2f}" for g, v in means.items())
    exceptions = [g for g, v in means.items() if v >= across]
    text = (
        f"Mean GFRE within same-architecture variants is {mv:.2f} versus {across:.2f} across families "
        f"({closer} of {len(means)} variant pairs are closer than the cross-family mean; {detail}). "
        + ("Variants are closer on average, as in the study (0.28–0.59 by family)" if holds
           else "Variants are not closer than models of different families here")
        + (f"; exception(s): {', '.join(exceptions)}." if exceptions and holds else ".")
    )
    return Finding("ii", title, holds, text, {"mean_gfre_variants": mv, "groups": means})


def finding_finetune(records, meta) -> Finding:
    title = "(iii) Fine-tuned models stay close to their parent"
    ft = select(records, analysis="finetune", metric="gfre")
    rel: dict[str, list[float]] = {}
    who: dict[str, str] = {}
    for r in ft:
        rel.setdefault(r["relation"], []).append(r["value"])
        who[r["relation"]] = r["target"] if r["source"] == "chgnet-r2scan" else r["source"]
    means = {k: _mean(v) for k, v in rel.items()}
    parent = next((v for k, v in means.items() if k.startswith("parent")), None)
    others = {k: v for k, v in means.items() if not k.startswith("parent")}
    parts, holds = [], None
    if parent is not None and not others:
        parts.append(f"CHGNet-r2SCAN sits at GFRE {parent:.2f} from its parent CHGNet 0.3.0 (mean of both "
                     "directions); no independently trained reference was compared.")
    if parent is not None and others:
        holds = bool(all(parent < v for v in others.values()))
        parts.append(
            f"CHGNet-r2SCAN sits at GFRE {parent:.2f} from its parent CHGNet 0.3.0 (mean of both directions), "
            + ", ".join(f"{v:.2f} from {who.get(k, '?')} ({k})" for k, v in others.items())
            + "."
        )
    track = select(records, analysis="finetune-track", metric="gfre")
    if track:
        last = max(r["epoch"] for r in track)
        ftp = _mean([r["value"] for r in track if r["run"] == "finetune" and r["epoch"] == last])
        scp = _mean([r["value"] for r in track if r["run"] == "scratch" and r["epoch"] == last])
        if np.isfinite(ftp):
            s = f"Live fine-tuning: after {last} epoch(s) the fine-tuned CHGNet is at GFRE {ftp:.2f} from the pre-trained model"
            if np.isfinite(scp):
                s += f", the from-scratch control at {scp:.2f}"
                ok = ftp < scp
                holds = ok if holds is None else (holds and ok)
            parts.append(s + ".")
    if not parts:
        return Finding("iii", title, None, "No fine-tuning comparison was run (needs chgnet-r2scan and references).")
    if holds is not None:
        parts.append("The parent is the closest, as in the study (0.03–0.07 vs 0.13–0.20)." if holds
                 else "The parent is not the closest reference here.")
    return Finding("iii", title, holds, " ".join(parts), {"relations": means})


def finding_orders(records, meta) -> Finding:
    title = "(iv) Each cumulant order adds information"
    recs = select(records, analysis="cumulant-orders", metric="gfre")
    fwd: dict[tuple[int, int], list[float]] = {}
    back = []
    for r in recs:
        a, b = r.get("source_order"), r.get("target_order")
        if a is None or b is None:
            continue
        if b == a + 1:
            fwd.setdefault((int(a), int(b)), []).append(r["value"])
        elif a == b + 1:
            back.append(r["value"])
    if not fwd:
        return Finding("iv", title, None, "No cumulant order comparison was run.")
    means = {k: _mean(v) for k, v in sorted(fwd.items())}
    holds = bool(min(means.values()) > ADDS_INFO_GFRE)
    n_models = max(len(v) for v in fwd.values())
    detail = ", ".join(f"{a}→{b}: {v:.2f}" for (a, b), v in means.items())
    text = (
        f"Reconstructing the cumulants up to order k+1 from those up to order k leaves a GFRE of {detail} "
        f"(mean over {n_models} model(s); study: 0.24–0.42)"
        + (f"; the reverse direction gives {_mean(back):.2f} on average (ideally ~0: higher orders contain "
           "the lower ones, so larger values mean too few structures for the cumulant widths)" if back else "")
        + ". "
        + (f"Every order adds information (all above {ADDS_INFO_GFRE})." if holds
           else f"Some order adds little (mean GFRE at most {ADDS_INFO_GFRE}).")
    )
    return Finding("iv", title, holds, text, {"forward": {f"{a}->{b}": v for (a, b), v in means.items()},
                                              "mean_backward": _mean(back)})


def findings(results: Mapping) -> list[Finding]:
    """The four findings of the study, evaluated on ``results`` (see :mod:`mlipspace.report.results`)."""
    recs, meta = results.get("records", []), results.get("meta", {})
    return [finding_cross(recs, meta), finding_variants(recs, meta), finding_finetune(recs, meta),
            finding_orders(recs, meta)]
