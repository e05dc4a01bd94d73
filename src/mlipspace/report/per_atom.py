"""Report sections "Where do models differ?" and "Hardest environments", from records and ``per_atom.npz``.

The records (``analysis="per-atom"``) give the RMS error per element, subset and coordination of
every pair; ``per_atom.npz`` (next to ``index.html``) gives each test atom's error, from which the
share of a pair's summed squared error carried by each element/subset and the hardest atoms come.
The environment pictures are drawn by ASE from ``structures.xyz``; nothing is fetched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mlipspace.records import select

#: File name of the raw per-atom errors (written by the study next to results.json).
NPZ_NAME = "per_atom.npz"
#: Hardest atoms shown, most elements in the heatmap, pairs drawn as rows.
N_HARDEST, MAX_ELEMENTS, MAX_PAIRS = 10, 30, 16
#: Radius (Å) of the environment drawn around a hard atom.
ENV_RADIUS = 4.0


def read_per_atom(path: str | os.PathLike) -> dict | None:
    """The arrays of ``per_atom.npz`` as a dict (``None`` when the file is absent)."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def families(results: Mapping) -> dict[str, str]:
    return {m: (info or {}).get("family") or m for m, info in (results.get("meta", {}).get("models") or {}).items()}


def cross_family(pairs: Sequence[Sequence[str]], fam: Mapping[str, str]) -> list[bool]:
    """Whether each (source, target) pair joins two families (every pair when no family differs)."""
    flags = [fam.get(s, s) != fam.get(t, t) for s, t in pairs]
    return flags if any(flags) else [True] * len(flags)


def atom_difficulty(data: Mapping, fam: Mapping[str, str]) -> np.ndarray:
    """Per test atom, the mean error over the cross-family pairs (NaN pairs skipped)."""
    E = np.asarray(data["errors"], dtype=np.float64)[np.asarray(cross_family(data["pairs"].tolist(), fam))]
    with np.errstate(invalid="ignore"):
        return np.nanmean(E, axis=0) if E.size else np.full(E.shape[1], np.nan)


def shares(data: Mapping, labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """``(labels, S)``: S[p, g] = share of pair p's summed squared error carried by the atoms of label g."""
    names, inv = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    E2 = np.nan_to_num(np.asarray(data["errors"], dtype=np.float64) ** 2)
    S = np.zeros((E2.shape[0], len(names)))
    for g in range(len(names)):
        S[:, g] = E2[:, inv == g].sum(axis=1)
    tot = S.sum(axis=1, keepdims=True)
    return names.tolist(), np.divide(S, tot, out=np.zeros_like(S), where=tot > 0)


def _structure_counts(data: Mapping) -> dict[tuple[str, str], int]:
    """``(field, label) -> number of test structures`` with atoms of that label (first split)."""
    from ase.data import chemical_symbols

    out = {}
    fields = {"element": np.asarray(chemical_symbols)[np.asarray(data["Z"])], "subset": data["subset"],
              "coordination": data["coordination"]}
    for field, lab in fields.items():
        lab = np.asarray(lab).astype(str)
        for value in np.unique(lab):
            out[(field, str(value))] = len(np.unique(np.asarray(data["frame"])[lab == value]))
    return out


def _group_table(recs: Sequence[Mapping], field: str, pairs, flags) -> list[tuple]:
    """``(label, mean RMS over cross-family pairs, n_test, n/a count)`` per label, hardest first."""
    keep = {tuple(p) for p, f in zip(pairs, flags) if f}
    by: dict = {}
    for r in recs:
        if r.get(field) is None or (r["source"], r["target"]) not in keep:
            continue
        row = by.setdefault(r[field], [[], r["n_test"], 0])
        if r.get("value") is None:
            row[2] += 1
        else:
            row[0].append(r["value"])
    out = [(k, float(np.mean(v)) if v else None, n, na) for k, (v, n, na) in by.items()]
    return sorted(out, key=lambda t: (t[1] is None, -(t[1] or 0.0)))


def section(page, results: Mapping) -> None:
    """Both sections (skipped without per-atom records)."""
    recs = select(results.get("records", []), analysis="per-atom")
    if not recs:
        return
    from mlipspace.report.html import _e, _fmt

    data = read_per_atom(page.out / NPZ_NAME)
    fam = families(results)
    pairs = list(dict.fromkeys((r["source"], r["target"]) for r in recs))
    flags = cross_family(pairs, fam)
    page.section("per-atom", "Where do models differ? Errors per element, subset and coordination")
    page.add('<p class="note">Pointwise GFRE of every test atom (grouped split, one seed): per group, the RMS '
             "error of its test atoms, with a 95 % interval from resampling the test structures that contain "
             "it; a group in fewer than 10 test structures has no number (n/a). Means are over the "
             f"{sum(flags)} pairs of models from different families.</p>")
    elements = _group_table(recs, "element", pairs, flags)
    _heatmap(page, recs, pairs, flags, [t[0] for t in elements if t[1] is not None][:MAX_ELEMENTS])
    if not any(t[1] is not None for t in elements):
        page.add('<p class="note">No element has a number: none is in 10 or more test structures of this run '
                 "(a larger <code>--size</code> gives numbers). The error shares and hardest atoms below describe "
                 "this one split.</p>")
    counts = _structure_counts(data) if data is not None else {}
    for field, title in (("element", "Elements"), ("subset", "Subsets"), ("coordination", "Coordination number")):
        rows = _group_table(recs, field, pairs, flags)
        if not rows:
            continue
        page.add(f"<h3>{title}, hardest first</h3>")
        page.table([field, "mean RMS GFRE (cross-family)", "test atoms", "test structures", "pairs n/a"],
                   [[_e(k), _fmt(v), str(n), str(counts.get((field, str(k)), "")), str(na)]
                    for k, v, n, na in rows[:15]])
    if data is not None:
        _share_table(page, data, flags if len(flags) == len(data["pairs"]) else None, fam)
    _hardest(page, results, data, fam)


def _heatmap(page, recs, pairs, flags, elements: Sequence[str]) -> None:
    from mlipspace.report import figures

    if not elements:
        return
    val = {(r["source"], r["target"], r["element"]): r["value"] for r in recs if r.get("element") is not None}
    cross = [p for p, f in zip(pairs, flags) if f]
    M = np.array([[np.nan if val.get((*p, e)) is None else val[(*p, e)] for e in elements] for p in cross])
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(M, axis=0) if len(cross) else np.full(len(elements), np.nan)
    top = sorted(range(len(cross)), key=lambda i: -np.nanmean(M[i]) if np.isfinite(M[i]).any() else 0)[:MAX_PAIRS]
    names = ["mean (cross-family)"] + [f"{cross[i][0]} → {cross[i][1]}" for i in top]
    grid = np.vstack([mean[None, :], M[top]]) if top else mean[None, :]
    page.figure(figures.heatmap(names, grid, page.fig_dir / "per_atom_elements", col_names=list(elements),
                                title="RMS GFRE per element (test atoms)", cbar_label="GFRE"),
                f"RMS GFRE of each element's test atoms: first row the mean over cross-family pairs, then the "
                f"{len(top)} cross-family pairs with the largest mean (rows = source → target); elements "
                "ordered hardest first, those without a number left out")


def _share_table(page, data: Mapping, flags, fam) -> None:
    from mlipspace.report.html import _e

    from ase.data import chemical_symbols

    el_names, el = shares(data, np.asarray(chemical_symbols)[np.asarray(data["Z"])])
    sub_names, sub = shares(data, data["subset"])
    rows = []
    for i, (s, t) in enumerate(data["pairs"].tolist()):
        if flags is not None and not flags[i]:
            continue
        if not np.isfinite(np.asarray(data["errors"][i], dtype=float)).any():
            rows.append([_e(f"{s} → {t}"), "n/a (fit outside its valid regime)", ""])
            continue
        tops = np.argsort(-el[i])[:3]
        top_sub = int(np.argmax(sub[i])) if sub.size else None
        rows.append([_e(f"{s} → {t}"), ", ".join(f"{_e(el_names[j])} {100 * el[i, j]:.0f} %" for j in tops),
                     "" if top_sub is None else f"{_e(sub_names[top_sub])} {100 * sub[i, top_sub]:.0f} %"])
    page.add("<h3>Which atoms carry each pair's error</h3>")
    page.add('<p class="note">Share of the pair\'s summed squared pointwise error carried by the test atoms of '
             "each element (top 3) and subset (top 1); compare with their share of the test atoms: "
             + ", ".join(f"{_e(el_names[j])} {100 * np.mean(np.asarray(chemical_symbols)[data['Z']] == el_names[j]):.0f} %"
                         for j in np.argsort(-el.mean(axis=0))[:3]) + ".</p>")
    page.add('<details class="sub"><summary>per pair</summary>')
    page.table(["pair (source → target)", "elements (share of squared error)", "subset"], rows)
    page.add("</details>")


def _hardest(page, results: Mapping, data: Mapping | None, fam) -> None:
    from mlipspace.report.html import _e, _fmt

    page.section("hardest", "Hardest environments")
    if data is None or not len(data["frame"]):
        page.add(f'<p class="note">No {NPZ_NAME} next to this report: the per-atom errors were not written.</p>')
        return
    from ase.data import chemical_symbols

    score = atom_difficulty(data, fam)
    order = [i for i in np.argsort(-np.nan_to_num(score, nan=-np.inf)) if np.isfinite(score[i])][:N_HARDEST]
    frames = _structures(page.out, results)
    page.add(f'<p class="note">The {len(order)} test atoms with the largest mean pointwise GFRE over the '
             f"cross-family pairs, with their surroundings within {ENV_RADIUS:g} Å (the atom itself drawn "
             "larger, at the centre).</p>")
    rows = []
    for rank, i in enumerate(order, 1):
        frame, atom = int(data["frame"][i]), int(data["atom"][i])
        pic = ""
        if frames is not None:
            pos = int(np.searchsorted(data["all_frames"], frame))
            if pos < len(frames) and atom < len(frames[pos]):
                name = environment_png(frames[pos], atom, page.fig_dir / f"hardest_{rank:02d}.png")
                pic = f'<img src="figures/{_e(name)}" alt="environment of atom {atom} of structure {frame}" width="160">'
        rows.append([str(rank), str(frame), str(atom), _e(chemical_symbols[int(data["Z"][i])]),
                     _e(data["subset"][i]), str(int(data["coordination"][i])), _fmt(score[i]), pic])
    page.table(["#", "structure", "atom", "element", "subset", "coordination", "mean GFRE", "environment"],
               rows, left=1)


def _structures(out: Path, results: Mapping):
    name = results.get("meta", {}).get("structures")
    if not name or not (out / name).is_file():
        return None
    from ase.io import read

    return read(str(out / name), index=":")


def environment_png(atoms, index: int, path: str | os.PathLike, *, radius: float = ENV_RADIUS,
                    title: str = "") -> str:
    """Draw atom ``index`` of ``atoms`` and its neighbours within ``radius`` (periodic images included)
    to ``path`` (PNG): a projection with the atom on top (red rim) and lines to its bonded neighbours
    (the coordination criterion, 1.2 x the sum of covalent radii). Returns the file name."""
    from ase.data import chemical_symbols, covalent_radii
    from ase.data.colors import jmol_colors
    from ase.neighborlist import neighbor_list

    from mlipspace.report.figures import _plt

    i, j, D = neighbor_list("ijD", atoms, radius)
    keep = i == index
    z0, zs, P = int(atoms.numbers[index]), atoms.numbers[j[keep]], D[keep]
    a, b = np.radians(25.0), np.radians(15.0)  # a fixed oblique view: rotate about y, then x
    rot = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]]) @ \
        np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    Q = P @ rot.T
    bonded = np.linalg.norm(P, axis=1) < 1.2 * (covalent_radii[z0] + covalent_radii[zs])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(2.2, 2.2))
    for k in np.flatnonzero(bonded):
        ax.plot([0, Q[k, 0]], [0, Q[k, 1]], color="#555", lw=1.2, zorder=1)
    for k in np.argsort(Q[:, 2]):  # back to front
        ax.scatter(Q[k, 0], Q[k, 1], s=260 * covalent_radii[zs[k]] ** 2, color=jmol_colors[zs[k]],
                   edgecolors="k", linewidths=0.5, alpha=0.85, zorder=2)
    ax.scatter(0, 0, s=420 * covalent_radii[z0] ** 2, color=jmol_colors[z0], edgecolors="#d1495b", linewidths=2.5,
               zorder=3)
    ax.set_xlim(-radius, radius)
    ax.set_ylim(-radius, radius)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title or f"{chemical_symbols[z0]}, {int(bonded.sum())} bonded", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path.name
