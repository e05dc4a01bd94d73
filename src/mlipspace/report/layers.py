"""Report pieces of the layer correspondence across models: matched-depth figure and section.

Built from ``layer-correspondence`` and ``layer-match`` records alone (see
:func:`mlipspace.experiments.layers.layer_correspondence`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from mlipspace.records import select
from mlipspace.report.figures import _plt, heatmap, save

_METRIC_LABEL = {"gfre": "GFRE (both directions)", "cka": "linear CKA"}


def matched_depths(matches: Sequence[Mapping], stem: str | os.PathLike, *, title: str = "") -> tuple[str, str]:
    """Relative depth of each layer (x) against the depth of its best match in the other model (y), one
    series per direction and criterion (nudged apart vertically by 0.012 so coincident matches stay
    visible); ambiguous matches (overlapping intervals) drawn hollow."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 5.2))
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="same relative depth")
    markers = {"gfre": "o", "cka": "s"}
    for k, (src, tgt, metric) in enumerate(dict.fromkeys((r["source"], r["target"], r["metric"]) for r in matches)):
        sel = sorted((r for r in matches if (r["source"], r["target"], r["metric"]) == (src, tgt, metric)
                      and r.get("value") is not None), key=lambda r: r["source_depth"])
        if not sel:
            continue
        x = [r["source_depth"] for r in sel]
        y = [r["best_depth"] + 0.012 * (k - 1.5) for r in sel]
        colour = f"C{k}"
        ax.plot(x, y, lw=1.0, color=colour, alpha=0.6)
        amb = np.array([bool(r.get("ambiguous")) for r in sel])
        ax.scatter(np.asarray(x)[~amb], np.asarray(y)[~amb], marker=markers.get(metric, "o"), color=colour, s=30,
                   label=f"{src} → {tgt}, {_METRIC_LABEL.get(metric, metric)}")
        ax.scatter(np.asarray(x)[amb], np.asarray(y)[amb], marker=markers.get(metric, "o"), facecolors="none",
                   edgecolors=colour, s=30)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("relative depth of the layer (0 = first, 1 = last)")
    ax.set_ylabel("relative depth of its best match in the other model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    if title:
        ax.set_title(title)
    return save(fig, stem)


def section(page, results: Mapping) -> None:
    """The folded "Layer correspondence" section of the HTML report (nothing without records)."""
    from mlipspace.report.html import _cell, _e, _fmt, _safe

    recs = results["records"]
    matches = select(recs, analysis="layer-match")
    if not matches:
        return
    page.section("layer-correspondence", "Layer correspondence across models")
    page.add('<p class="note">For each layer of one model, the layer of the other model it matches best: '
             "lowest mean GFRE of both directions (each layer reconstructs the other and back) or highest linear "
             "CKA. <i>Ambiguous</i>: the 95 % intervals of the best and second-best candidates overlap, so the data "
             "do not single out the match (hollow markers in the figure). A layer that is an exact copy of the "
             "match (SevenNet's <code>last</code> is its <code>interaction.4</code>) is shown as <i>= copy</i> and is "
             "no rival.</p>")
    for a, b in dict.fromkeys(tuple(sorted((r["source"], r["target"]))) for r in matches):
        pair = [r for r in matches if {r["source"], r["target"]} == {a, b}]
        page.add(f"<h3>{_e(a)} ↔ {_e(b)}</h3>")
        page.figure(matched_depths(pair, page.fig_dir / f"layer_match_{_safe(a)}_{_safe(b)}",
                                   title=f"Matched depths: {a} ↔ {b}"),
                    f"Relative depth of each layer and of its best match in the other model ({a} ↔ {b}); "
                    "hollow = ambiguous, series nudged apart vertically so coincident matches stay visible")
        rows = [[_e(r["source"]), f"{_e(r['source_layer'])} ({_fmt(r['source_depth'], 2)})",
                 _e(_METRIC_LABEL.get(r["metric"], r["metric"])),
                 "n/a" if r.get("value") is None else f"{_e(r['best_layer'])} ({_fmt(r['best_depth'], 2)})"
                 + "".join(f" = {_e(t)}" for t in r.get("same_as") or ()),
                 _cell(r), _e(r.get("second_layer") or "–"), "yes" if r.get("ambiguous") else "no"]
                for r in pair]
        page.table(["model", "layer (depth)", "criterion", "best match (depth)", "value", "second best",
                    "ambiguous"], rows, left=3)
        grid = select(recs, analysis="layer-correspondence", source=a, target=b)
        for metric in ("gfre", "cka"):
            sel = select(grid, metric=metric)
            if not sel:
                continue
            names_a = list(dict.fromkeys(r["source_layer"] for r in sel))
            names_b = list(dict.fromkeys(r["target_layer"] for r in sel))
            M = np.full((len(names_a), len(names_b)), np.nan)
            for r in sel:
                if r.get("value") is not None:
                    M[names_a.index(r["source_layer"]), names_b.index(r["target_layer"])] = r["value"]
            label = "GFRE" if metric == "gfre" else "linear CKA"
            page.figure(heatmap(names_a, M, page.fig_dir / f"layer_corr_{_safe(a)}_{_safe(b)}_{metric}",
                                col_names=names_b, title=f"{label}: layers of {a} (rows) vs {b} (columns)",
                                cbar_label=label, vmax=1.0 if metric == "cka" else None),
                        f"{label} between every layer of {a} (source) and every layer of {b}")
