"""``index.html``: the self-contained report of a study run, built from ``results.json`` alone.

The page opens with the summary (the study's four findings) and one overview figure (the cross-model
GFRE matrix, atom level), then a table of contents; every other section is folded in
``<details>`` so the first screen answers the study's questions and the rest is one click away.
Self-contained: inline CSS, no scripts, no network; figures are PNG files next to it (``figures/``,
referenced by relative paths, with an SVG twin linked under each). The interactive viewer is a
separate page, ``explore.html`` (:mod:`mlipspace.report.explore`).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mlipspace.records import COMPARE_METRICS, SIMILARITY_METRICS, matrix, select
from mlipspace.report import figures, per_atom
from mlipspace.report.results import matrix_names
from mlipspace.report.summary import findings

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1150px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}
.finding{border-left:5px solid #999;padding:.4em .8em;margin:.6em 0;background:#fafafa}
.finding.yes{border-color:#2a9d4b}.finding.no{border-color:#d1495b}.finding.na{border-color:#aaa}
.tag{font-weight:bold;font-size:.8em;padding:.1em .4em;border-radius:3px;color:#fff;margin-right:.4em}
.yes .tag{background:#2a9d4b}.no .tag{background:#d1495b}.na .tag{background:#888}
figure{margin:.8em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.note{color:#666;font-size:.9em}
code{background:#f3f3f3;padding:0 .2em}
details.sec{border-top:2px solid #ddd;margin-top:.6em}details.sec>summary{cursor:pointer;list-style-position:outside}
details.sec>summary h2{display:inline-block;border:0;margin:.5em 0;font-size:1.3em}
details.sub>summary{cursor:pointer;color:#444;font-size:.9em}
nav.toc{background:#f7f7f7;border:1px solid #e3e3e3;padding:.4em 1em;margin:1em 0;font-size:.92em}
nav.toc ol{margin:.2em 0;padding-left:1.4em}.links span{margin-right:1.4em}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v, nd=3) -> str:
    if v is None:
        return "n/a"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return _e(v)
    return "–" if not np.isfinite(v) else f"{v:.{nd}f}"


class _Page:
    def __init__(self, out_dir: Path):
        self.out = out_dir
        self.fig_dir = out_dir / "figures"
        self.parts: list[str] = []
        self.sections: list[tuple[str, str]] = []  # (anchor, title) of the folded sections, in order
        self._open = False
        self._figures: dict[str, tuple[str, str]] = {}

    def add(self, s: str):
        self.parts.append(s)

    def section(self, anchor: str, title: str):
        """Start a folded section (closing the previous one); listed in the table of contents."""
        self.close()
        self.sections.append((anchor, title))
        self.add(f'<details class="sec" id="{_e(anchor)}"><summary><h2>{_e(title)}</h2></summary>')
        self._open = True

    def close(self):
        if self._open:
            self.add("</details>")
            self._open = False

    def once(self, stem: str, draw) -> tuple[str, str]:
        """The figure files of ``stem``, drawn by ``draw()`` the first time only (shared by two sections)."""
        if stem not in self._figures:
            self._figures[stem] = draw()
        return self._figures[stem]

    def figure(self, names: tuple[str, str], caption: str):
        png, svg = names
        self.add(
            f'<figure><img src="figures/{_e(png)}" alt="{_e(caption)}">'
            f'<figcaption>{_e(caption)} (<a href="figures/{_e(svg)}">SVG</a>)</figcaption></figure>'
        )

    def table(self, header: Sequence[str], rows: Sequence[Sequence], left: int = 1, cls: str = ""):
        h = "".join(f'<th class="{"l" if i < left else ""}">{_e(c)}</th>' for i, c in enumerate(header))
        body = "".join(
            "<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
            for r in rows
        )
        attr = f' class="{_e(cls)}"' if cls else ""
        self.add(f"<table{attr}><tr>{h}</tr>{body}</table>")


def _ok(recs: Sequence[Mapping]) -> list[Mapping]:
    """The records with a number (a fit outside its valid regime has ``value: null`` and a reason)."""
    return [r for r in recs if r.get("value") is not None and np.isfinite(r["value"])]


def _cell(r: Mapping | None, nd: int = 3) -> str:
    """One table cell of a record: value ± spread [95 % interval], or n/a (with the reason on hover)."""
    if r is None:
        return "–"
    if r.get("value") is None:  # "not enough data (need N, have M)" shown; the full reason on hover
        reason = str(r.get("reason", "no value"))
        return f'<span class="nd" title="{_e(reason)}">{_e(reason.split(":")[0])}</span>'
    txt = _fmt(r["value"], nd)
    if r.get("spread") is not None:
        txt += f" ± {_fmt(r['spread'], nd)}"
    if r.get("ci_low") is not None and r.get("ci_high") is not None:
        txt += f" [{_fmt(r['ci_low'], nd)}, {_fmt(r['ci_high'], nd)}]"
    return txt


def _trust_section(page: _Page, results: Mapping) -> None:
    from mlipspace.report.trust import trust_section

    trust_section(page, results, _cell)


def _cross_records(results: Mapping, metric: str, level: str) -> tuple[list[Mapping], list[str]]:
    """Cross-model records of ``metric`` at ``level`` and their model order (rows = columns)."""
    sel = select(results["records"], analysis="cross-model", metric=metric, level=level)
    names, _, _ = matrix(sel, metric, level, names=matrix_names(results, sel))
    return sel, names


def _cross_figure(page: _Page, results: Mapping, metric: str, level: str, title: str) -> tuple[str, str]:
    sel, names = _cross_records(results, metric, level)
    _, M, S, lo, hi = matrix(_ok(sel), metric, level, names=names, fields=("value", "spread", "ci_low", "ci_high"))
    short = title if len(title) < 60 else f"{metric.upper()} — {level}"
    return page.once(f"cross_{metric}_{level}", lambda: figures.heatmap(
        names, M, page.fig_dir / f"cross_{metric}_{level}", title=short, S=S, H=(hi - lo) / 2,
        cbar_label=metric.upper()))


def _matrix_table(page: _Page, results: Mapping, metric: str, level: str, *, folded: bool = True):
    """The numbers of a cross-model matrix as an HTML table (rows = source, columns = target)."""
    sel, names = _cross_records(results, metric, level)
    by = {(r["source"], r["target"]): r for r in sel}
    ci = any(r.get("ci_low") is not None for r in sel)
    rows = [[_e(a)] + ["" if a == b else _cell(by.get((a, b))) for b in names] for a in names]
    if folded:
        page.add(f'<details class="sub"><summary>{metric.upper()} values (mean ± spread over seeds'
                 + (", [95 % interval]" if ci else "") + ")</summary>")
    page.table(["source \\ target"] + names, rows, cls=f"matrix {metric} {level}")
    if folded:
        page.add("</details>")


_LEVELS = {
    "atom": "atom level, test structures held out whole (grouped split)",
    "atom-ungrouped": "atom level, the study's per-atom split (a test atom's structure-mates train: "
                      "optimistic, shown for comparison)",
    "structure": "structure level",
}


def _cross_title(sel: Sequence[Mapping], metric: str, level: str) -> str:
    extra = ""
    if level == "structure" and sel and sel[0].get("order") is not None:
        extra = f", cumulants up to order {sel[0]['order']}"
    return f"{metric.upper()} — {_LEVELS[level]}{extra}"


def _overview(page: _Page, results) -> None:
    """The one figure under the summary: the cross-model GFRE matrix at atom level (else the first one)."""
    recs = select(results["records"], analysis="cross-model")
    have = {(r["metric"], r["level"]) for r in recs}
    pick = next(((m, lv) for lv in _LEVELS for m in COMPARE_METRICS if (m, lv) in have), None)
    page.add('<h2 id="overview">Overview</h2>')
    if pick is None:
        page.add('<p class="note">No cross-model comparison in this run (needs at least two models).</p>')
        return
    metric, level = ("gfre", "atom") if ("gfre", "atom") in have else pick
    sel = select(recs, metric=metric, level=level)
    title = _cross_title(sel, metric, level)
    page.figure(_cross_figure(page, results, metric, level, title),
                f"{title}: error of reconstructing each target model's features (columns) from each source "
                "model's (rows); 0 = fully recoverable, ~1 = nothing recoverable")
    _matrix_table(page, results, metric, level)


def _cross_section(page: _Page, results):
    recs = results["records"]
    page.section("cross-model", "Cross-model comparison")
    page.add('<p class="note">Error of reconstructing the target\'s last-layer features from the source\'s '
             "(0 = fully recoverable, ~1 = nothing recoverable). Mean ± spread over grouped splits (seeds).</p>")
    any_ = False
    for level in _LEVELS:
        for metric in COMPARE_METRICS:
            sel = select(recs, analysis="cross-model", metric=metric, level=level)
            if not sel:
                continue
            any_ = True
            names, M, _ = matrix(_ok(sel), metric, level, names=_cross_records(results, metric, level)[1])
            off = M[np.isfinite(M)]
            title = _cross_title(sel, metric, level)
            n_na = len(sel) - len(_ok(sel))
            page.add(f'<h3 id="cross-{_e(metric)}-{_e(level)}">{_e(title)}</h3>')
            page.add(f"<p>Mean off-diagonal {metric.upper()}: <b>{_fmt(off.mean() if off.size else float('nan'))}</b> "
                     f"({len(off)} ordered pairs; n_train = {sel[0]['n_train']}, n_test = {sel[0]['n_test']})"
                     + (f"; {n_na} pair(s) n/a (fit outside its valid regime)" if n_na else "") + ".</p>")
            page.figure(_cross_figure(page, results, metric, level, title), f"{title}: rows = source, columns = target")
            _matrix_table(page, results, metric, level)
            nulls = [r["null_mean"] for r in sel if r.get("null_mean") is not None]
            if nulls:
                page.add(f'<p class="note">{metric}: similarity measure computed on the test rows; chance level '
                         f"(target rows shuffled) averages {_fmt(float(np.mean(nulls)))}.</p>")
            if metric not in SIMILARITY_METRICS and off.size and np.mean(off > 1) > 0.1:
                page.add(f'<p class="note">{int(np.sum(off > 1))} of {off.size} values exceed 1: on the test '
                         "structures the reconstruction does worse than predicting the mean. With few, diverse "
                         "training structures (elements and environments the test side has but the training side "
                         "lacks) a linear map does not carry over; a larger <code>--size</code> or a homogeneous "
                         "dataset lowers these numbers.</p>")
    if not any_:
        page.add('<p class="note">Not run (needs at least two models).</p>')
    _rank_agreement(page, _ok(select(recs, analysis="cross-model", level="atom")))


def _rank_agreement(page, recs: Sequence[Mapping]) -> None:
    """Do the metrics order the model pairs the same way? (Spearman/Kendall between metrics.)"""
    metrics = sorted({r["metric"] for r in recs})
    if len(metrics) < 2:
        return
    from mlipspace.metrics.similarity import rank_agreement

    table = rank_agreement(recs, metrics=metrics, a_key="source", b_key="target")
    page.add("<h3>Do the metrics agree? Rank agreement over model pairs (atom level)</h3>")
    page.add('<p class="note">Each metric oriented so that larger = more similar; +1 = the two metrics order '
             "the model pairs identically.</p>")
    page.table(["metric A", "metric B", "pairs", "Spearman", "Kendall"],
               [[_e(t["metric_a"]), _e(t["metric_b"]), str(t["n_pairs"]), _fmt(t["spearman"]), _fmt(t["kendall"])]
                for t in table], left=2)


def _variants_section(page: _Page, results):
    recs = select(results["records"], analysis="variants")
    page.section("variants", "Same-architecture variants")
    if not recs:
        page.add('<p class="note">No variant pair among the models of this run.</p>')
        return
    rows = []
    for r in recs:
        rows.append([_e(r["group"]), _e(r["source"]), _e(r["target"]), _e(r["metric"].upper()),
                     _fmt(r["value"]), _fmt(r["spread"])])
    page.table(["group", "source", "target", "metric", "value", "spread"], rows, left=4)
    g = _ok(select(recs, metric="gfre"))
    if g:
        labels = [f"{r['source']} → {r['target']}" for r in g]
        page.figure(figures.bars(labels, [r["value"] for r in g], page.fig_dir / "variants_gfre",
                                 spreads=[r["spread"] for r in g], title="GFRE between variants", ylabel="GFRE"),
                    "GFRE between same-architecture variants (both directions)")


def _finetune_section(page: _Page, results):
    recs = results["records"]
    page.section("finetune", "Fine-tuning bias")
    bundled = select(recs, analysis="finetune")
    if bundled:
        page.add("<h3>Bundled: CHGNet-r2SCAN (fine-tuned from CHGNet 0.3.0)</h3>")
        rows = [[_e(r["relation"]), _e(r["source"]), _e(r["target"]), _e(r["metric"].upper()), _fmt(r["value"]),
                 _fmt(r["spread"])] for r in bundled]
        page.table(["relation", "source", "target", "metric", "value", "spread"], rows, left=4)
        g = _ok(select(bundled, metric="gfre"))
        if g:
            page.figure(figures.bars([f"{r['source']} → {r['target']}" for r in g], [r["value"] for r in g],
                                     page.fig_dir / "finetune_bundled", spreads=[r["spread"] for r in g],
                                     title="Fine-tuned vs parent and independent models", ylabel="GFRE"),
                        "GFRE of CHGNet-r2SCAN against its parent and independently trained models")
    else:
        page.add('<p class="note">Bundled comparison not run (needs chgnet-r2scan and chgnet-0.3.0).</p>')
    track = select(recs, analysis="finetune-track")
    if track:
        page.add("<h3>Live fine-tuning trajectory</h3>")
        for metric in sorted({r["metric"] for r in track}):
            series, errs = {}, {}
            for r in _ok(select(track, metric=metric)):
                label = f"{r['source']} → {r['target']}"
                x, y = series.setdefault(label, ([], []))
                x.append(r["epoch"])
                y.append(r["value"])
                errs.setdefault(label, []).append(r["spread"])
            for label, (x, y) in series.items():
                o = np.argsort(x)
                series[label] = (list(np.asarray(x)[o]), list(np.asarray(y)[o]))
                errs[label] = list(np.asarray(errs[label])[o])
            page.figure(figures.lines(series, page.fig_dir / f"finetune_track_{metric}", errors=errs,
                                      title=f"{metric.upper()} along the training trajectory",
                                      xlabel="epoch (checkpoint of that epoch; 0 = start)", ylabel=metric.upper()),
                        f"{metric.upper()} of every checkpoint against the pre-trained model and the control")
    else:
        page.add('<p class="note">Live fine-tuning curves: run <code>mlipspace finetune-track DATA --out ft</code> '
                 "on labelled data, then <code>mlipspace report --results OUT/results.json --merge "
                 "ft/results.json</code>.</p>")


def _layers_section(page: _Page, results):
    recs = results["records"]
    lay = select(recs, analysis="layers")
    cross = select(recs, analysis="layers-cross")
    if not lay and not cross:
        return
    page.section("layers", "Layers")
    for model in dict.fromkeys(r["source"] for r in lay):
        for metric in sorted({r["metric"] for r in lay if r["source"] == model}):
            sel = select(lay, source=model, metric=metric)
            names = list(dict.fromkeys([r["source_layer"] for r in sel] + [r["target_layer"] for r in sel]))
            names.sort(key=lambda n: next((r.get("source_depth", 0) for r in sel if r["source_layer"] == n),
                                          next((r.get("target_depth", 0) for r in sel if r["target_layer"] == n), 0)))
            idx = {n: i for i, n in enumerate(names)}
            M = np.full((len(names), len(names)), np.nan)
            for r in _ok(sel):
                M[idx[r["source_layer"]], idx[r["target_layer"]]] = r["value"]
            page.figure(figures.heatmap(names, M, page.fig_dir / f"layers_{_safe(model)}_{metric}",
                                        title=f"{model}: {metric.upper()} between layers", cbar_label=metric.upper()),
                        f"{model}: {metric.upper()} between every pair of layers (rows = source layer)")
    if cross:
        for metric in sorted({r["metric"] for r in cross}):
            series: dict[str, tuple[list, list]] = {}
            for src in dict.fromkeys(r["source"] for r in cross):
                sel = select(cross, source=src, metric=metric)
                by: dict[float, list[float]] = {}
                for r in _ok(sel):
                    by.setdefault(r["source_depth"], []).append(r["value"])
                xs = sorted(by)
                series[src] = (xs, [float(np.mean(by[x])) for x in xs])
            page.figure(figures.lines(series, page.fig_dir / f"layers_cross_{metric}",
                                      title=f"{metric.upper()} from each layer to the other models' last layer",
                                      xlabel="relative depth of the source layer (0 = first, 1 = last)",
                                      ylabel=f"mean {metric.upper()}"),
                        "Cross-model per layer: mean over target models of the error of reconstructing their "
                        "last-layer features from each layer of the source")


def _orders_section(page: _Page, results):
    recs = select(results["records"], analysis="cumulant-orders")
    if not recs:
        return
    page.section("cumulant-orders", "Cumulant orders")
    page.add('<p class="note">GFRE of reconstructing the cumulants up to the target order from those up to the '
             "source order (structure level; each cell: mean ± spread over seeds [95 % interval]). Forward "
             "(low → high) well above 0 means the higher order adds information; the reverse is ~0 because "
             "higher orders contain the lower ones. Each model's atom features are first compressed to a few "
             "principal components so that the widest order still has twice as many training structures as "
             "columns; a fit that cannot meet that rule reads \"not enough data\".</p>")
    for model in dict.fromkeys(r.get("model", r["source"]) for r in recs):
        sel = [r for r in recs if r.get("model", r["source"]) == model]
        orders = sorted({r.get("source_order") for r in sel} | {r.get("target_order") for r in sel}
                        - {None})
        for metric in sorted({r["metric"] for r in sel}):
            M = {(r.get("source_order"), r.get("target_order")): r for r in sel if r["metric"] == metric}
            rows = []
            for a in orders:
                rows.append([f"≤ {a}"] + [("" if a == b else _cell(M[(a, b)], 2) if (a, b) in M else "–")
                                           for b in orders])
            page.add(f"<h3>{_e(model)} — {metric.upper()}</h3>")
            page.table(["source \\ target"] + [f"≤ {b}" for b in orders], rows)


def _probe_section(page: _Page, results):
    recs = select(results["records"], analysis="probe")
    meta = results.get("meta", {})
    page.section("probe", "Energy probe and structure maps")
    if not recs:
        page.add(f'<p class="note">{_e(meta.get("probe_note", "Not run: the dataset has no energy labels."))}</p>')
    else:
        page.add('<p class="note">Cross-validated RMSE (meV/atom) of the DFT energy per atom from a linear '
                 "composition baseline plus a ridge regression on the features (atom level: summed atom "
                 "features; structure level: cumulants). <code>composition</code> = baseline alone.</p>")
        levels = list(dict.fromkeys(r["level"] for r in recs))
        models = list(dict.fromkeys(r["source"] for r in recs))
        rows = []
        for m in models:
            row = [_e(m)]
            for lv in levels:
                sel = select(recs, source=m, level=lv)
                row.append(_cell(sel[0] if sel else None, nd=1))
            rows.append(row)
        page.table(["model"] + [f"RMSE, {lv} level" for lv in levels], rows)
    maps = results.get("maps") or {}
    colour = meta.get("map_colour")
    for kind, label in (("pcovr", "PCovR (α = 0.5) maps against the residual energy per atom"),
                        ("pca", "PCA maps of the structure features")):
        sel = {m: np.asarray(v[kind]) for m, v in maps.items() if v.get(kind)}
        if sel:
            page.figure(figures.scatter_maps(sel, page.fig_dir / f"maps_{kind}",
                                             colour=None if colour is None else np.asarray(colour, dtype=float),
                                             colour_label=meta.get("map_colour_label", ""), title=label),
                        label)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _links(out: Path, meta: Mapping) -> str:
    links = []
    if meta.get("chemiscope") and (out / "explore.html").is_file():
        links.append('<a href="explore.html"><b>Explore interactively</b></a> (structures and every model\'s map, '
                     "offline)")
    links.append('<a href="results.json">results.json</a>')
    if (out / "results.csv").is_file():
        links.append('<a href="results.csv">results.csv</a>')
    if meta.get("chemiscope"):
        links.append(f'<a href="{_e(meta["chemiscope"])}">{_e(meta["chemiscope"])}</a>')
    return '<p class="links">' + "".join(f"<span>{x}</span>" for x in links) + "</p>"


def _summary(page: _Page, results: Mapping) -> None:
    page.add('<h2 id="summary">Summary</h2>')
    for f in findings(results):
        cls = {True: "yes", False: "no", None: "na"}[f.holds]
        tag = f.verdict
        page.add(f'<div class="finding {cls}"><span class="tag">{tag}</span><b>{_e(f.title)}</b><br>{_e(f.text)}</div>')
    for note in results.get("meta", {}).get("notes", []):
        page.add(f'<p class="note">{_e(note)}</p>')


def _models_section(page: _Page, results: Mapping, timing: Mapping | None) -> None:
    meta = results.get("meta", {})
    page.section("models", "Models, data and files")
    rows = [[_e(m), _e(info.get("family", "")), _e(info.get("fingerprint_id", "")),
             _e(", ".join(info.get("layers", [])))] for m, info in (meta.get("models") or {}).items()]
    page.table(["model", "family", "fingerprint", "layers"], rows, left=4)
    links = ['<a href="results.json">results.json</a> (every number, one record each; '
             "<code>mlipspace.Results.load(folder)</code> reads it into pandas)"]
    if (page.out / "results.csv").is_file():
        links.append('<a href="results.csv">results.csv</a> (the same records, one row each)')
    if meta.get("chemiscope"):
        links.append(f'<a href="{_e(meta["chemiscope"])}">{_e(meta["chemiscope"])}</a> (structures with their maps; '
                     "open at chemiscope.org or with the chemiscope Jupyter widget)")
    page.add("<p>" + "<br>".join(links) + "</p>")
    if timing:
        page.table(["stage", "seconds"], [[_e(k), _fmt(v, 1)] for k, v in timing.items()])


def build_report(results: Mapping, out_dir: str | os.PathLike, *, timing: Mapping | None = None) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/figures/`` for ``results``; returns the HTML path.

    Layout: title, links (explore.html, results files), summary, overview figure, table of contents,
    then one folded ``<details>`` per section.
    """
    out = Path(out_dir)
    page = _Page(out)
    page.fig_dir.mkdir(parents=True, exist_ok=True)
    meta = results.get("meta", {})
    page.add("<h1>mlipspace — comparing the latent features of uMLIPs</h1>")
    ds = meta.get("dataset", {})
    page.add(f'<p class="note">Dataset <code>{_e(ds.get("name", "?"))}</code>: {_e(ds.get("n_frames", "?"))} '
             f'structures, {_e(ds.get("n_atoms", "?"))} atoms; {len(meta.get("models") or {})} models. '
             "Reproduces the analyses of Chorna et al., arXiv 2512.05717.</p>")
    page.add(_links(out, meta))
    _summary(page, results)
    _overview(page, results)
    toc_at = len(page.parts)
    from mlipspace.report import agreement as _agreement, layers as _layer_match  # their own sections

    for section in (_cross_section, _trust_section, per_atom.section, _variants_section, _finetune_section,
                    _layers_section, _layer_match.section, _orders_section, _probe_section, _agreement.section):
        section(page, results)
    _models_section(page, results, timing)
    page.close()
    toc = "".join(f'<li><a href="#{_e(a)}">{_e(t)}</a></li>' for a, t in page.sections)
    page.parts.insert(toc_at, '<nav class="toc"><b>Contents</b> (each section opens with a click)<ol>'
                      '<li><a href="#summary">Summary</a></li><li><a href="#overview">Overview</a></li>'
                      f"{toc}</ol></nav>")
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           "<title>mlipspace report</title><style>" + CSS + "</style></head><body>\n"
           + "\n".join(page.parts) + "\n</body></html>\n")
    path = out / "index.html"
    path.write_text(doc, encoding="utf-8")
    return path
