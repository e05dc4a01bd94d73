"""Figures of the report (matplotlib, Agg backend): each saved as PNG and SVG, names returned.

Every function takes plain arrays or records and a destination stem, so figures can be rebuilt
from ``results.json`` alone. SVGs are written without dates or random ids (``svg.hashsalt`` fixed,
no ``Date`` metadata) so reruns give identical files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "mlipspace"
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: editable for a paper, and ~25 % faster to write
    plt.rcParams["font.size"] = 9
    return plt


def save(fig, stem: str | os.PathLike) -> tuple[str, str]:
    """Save ``fig`` as ``stem.png`` and ``stem.svg``; returns the two file names (no directory)."""
    plt = _plt()
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.svg"  # names may hold dots
    fig.savefig(png, dpi=110, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(svg, bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return png.name, svg.name


def heatmap(
    names: Sequence[str],
    M: np.ndarray,
    stem: str | os.PathLike,
    *,
    title: str = "",
    S: np.ndarray | None = None,
    col_names: Sequence[str] | None = None,
    vmax: float | None = None,
    cbar_label: str = "",
    H: np.ndarray | None = None,
    wide: float = 0.05,
) -> tuple[str, str]:
    """Heatmap of ``M`` (rows = source, columns = target) with each value printed in its cell.

    With ``H`` (half-width of the 95 % interval) cells read ``value±half-width`` and cells whose
    half-width exceeds ``wide`` are boxed in red (their number is uncertain); otherwise, with ``S``
    (spread over seeds), ``value±spread``. NaN cells (the diagonal, or no number) are blank.
    """
    plt = _plt()
    M = np.asarray(M, dtype=float)
    cols = list(col_names) if col_names is not None else list(names)
    n, m = M.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * m, 1.0 + 0.6 * n))
    finite = M[np.isfinite(M)]
    top = vmax if vmax is not None else (max(1.0, float(finite.max())) if finite.size else 1.0)
    im = ax.imshow(np.ma.masked_invalid(M), cmap="viridis", vmin=0.0, vmax=top, aspect="auto")
    ax.set_xticks(range(m), cols, rotation=45, ha="right")
    ax.set_yticks(range(n), list(names))
    ax.set_xlabel("target (reconstructed)")
    ax.set_ylabel("source (input)")
    small = max(n, m) > 8
    for i in range(n):
        for j in range(m):
            if not np.isfinite(M[i, j]):
                continue
            txt = f"{M[i, j]:.2f}"
            if H is not None and np.isfinite(H[i, j]):
                txt += f"\n±{H[i, j]:.2f}"
                if H[i, j] > wide:
                    ax.add_patch(plt.Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="red", lw=1.2))
            elif S is not None and np.isfinite(S[i, j]) and not small:
                txt += f"\n±{S[i, j]:.2f}"
            colour = "black" if M[i, j] > 0.6 * top else "white"
            ax.text(j, i, txt, ha="center", va="center", fontsize=5.5 if small else 8, color=colour)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if cbar_label:
        cb.set_label(cbar_label)
    if H is not None:  # in the title block, where the tick labels cannot cover it
        title = (title + "\n" if title else "") + f"±: half-width of the 95 % interval; red box: wider than ±{wide:g}"
    if title:
        ax.set_title(title, fontsize=9 if H is not None else None)
    return save(fig, stem)


def lines(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    stem: str | os.PathLike,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    errors: Mapping[str, Sequence[float]] | None = None,
    ylim: tuple[float, float] | None = None,
) -> tuple[str, str]:
    """Line plot: ``series[label] = (x, y)`` (with optional error bars ``errors[label]``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, (x, y) in series.items():
        yerr = None if errors is None else errors.get(label)
        ax.errorbar(list(x), list(y), yerr=None if yerr is None else list(yerr), marker="o", ms=3.5,
                    capsize=2, label=label, lw=1.3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7, loc="best", ncol=1 if len(series) < 7 else 2)
    if title:
        ax.set_title(title)
    return save(fig, stem)


def bars(
    labels: Sequence[str],
    values: Sequence[float],
    stem: str | os.PathLike,
    *,
    spreads: Sequence[float] | None = None,
    title: str = "",
    ylabel: str = "",
) -> tuple[str, str]:
    """Horizontal bar chart with the value printed at the end of each bar."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.42 * len(labels)))
    y = np.arange(len(labels))
    ax.barh(y, list(values), xerr=None if spreads is None else list(spreads), color="#4c72b0", capsize=2)
    ax.set_yticks(y, list(labels))
    ax.invert_yaxis()
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    ax.set_xlabel(ylabel)
    ax.set_xlim(0, max(1.0, 1.15 * max(values, default=0)))
    if title:
        ax.set_title(title)
    return save(fig, stem)


def scatter_maps(
    maps: Mapping[str, np.ndarray],
    stem: str | os.PathLike,
    *,
    colour: np.ndarray | None = None,
    colour_label: str = "",
    title: str = "",
    xlabel: str = "component 1",
    ylabel: str = "component 2",
) -> tuple[str, str]:
    """A grid of 2-D maps (one panel per model), points coloured by ``colour`` (e.g. energy)."""
    plt = _plt()
    names = list(maps)
    ncol = min(4, max(1, len(names)))
    nrow = int(np.ceil(len(names) / ncol)) or 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.0 * ncol, 2.8 * nrow), squeeze=False)
    sc = None
    for ax, name in zip(axes.ravel(), names):
        T = np.asarray(maps[name], dtype=float)
        if T.ndim != 2 or T.shape[1] < 2:
            T = np.column_stack([T.reshape(len(T), -1)[:, 0], np.zeros(len(T))])
        sc = ax.scatter(T[:, 0], T[:, 1], c=colour, s=10, cmap="coolwarm" if colour is not None else None)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    if colour is not None and sc is not None:
        cb = fig.colorbar(sc, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
        cb.set_label(colour_label)
    if title:
        fig.suptitle(title)
    return save(fig, stem)
