"""The report of a study run: ``results.json`` (every number), ``index.html`` with figures, chemiscope file.

Public API::

    write_report(results_path, out_dir=None, frames=None, merge=())   # -> path of index.html
    merge_results(base, *others)                            # add e.g. finetune-track records
    load_results(path) / write_results(path, results) / make_results(records, meta, maps)
    findings(results)                                       # the study's four findings, in words
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlipspace.report.results import Results, load_results, make_results, write_results, write_table
from mlipspace.report.summary import findings

__all__ = ["Results", "findings", "load_results", "make_results", "write_report", "write_results", "write_table"]


def merge_results(base: dict, *others: dict) -> dict:
    """``base`` plus the records of ``others`` whose analysis ``base`` lacks (e.g. ``finetune-track``).

    Analyses present in ``base`` are kept as they are (no duplicates); the others' ``meta`` is kept
    under ``meta["merged"]``.
    """
    have = {r["analysis"] for r in base["records"]}
    records = list(base["records"])
    merged = list(base.get("meta", {}).get("merged", []))
    for other in others:
        new = [r for r in other["records"] if r["analysis"] not in have]
        records += new
        have |= {r["analysis"] for r in new}
        merged.append({"analyses": sorted({r["analysis"] for r in new}), "meta": other.get("meta", {})})
    meta = dict(base.get("meta", {}))
    if merged:
        meta["merged"] = merged
    return dict(base, records=records, meta=meta)


def write_report(results_path: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, frames=None,
                 merge=()) -> Path:
    """Build ``index.html`` (+ ``figures/``) and the chemiscope file from a ``results.json``.

    ``out_dir`` defaults to the folder of ``results_path``. The chemiscope file needs the structures:
    ``frames`` or the ``structures.xyz`` named in the results' meta (relative to the results file).
    ``merge``: further results files (e.g. of ``mlipspace finetune-track``) whose analyses are added;
    the merged document is written as ``out_dir/results.json``.
    """
    from mlipspace.report.html import build_report

    results_path = Path(results_path)
    results = load_results(results_path)
    out = Path(out_dir) if out_dir is not None else results_path.parent
    out.mkdir(parents=True, exist_ok=True)
    if merge:
        results = merge_results(results, *[load_results(p) for p in merge])
        write_results(out / "results.json", results)
        write_table(out / "results.csv", results)
    meta = results.get("meta", {})
    maps = results.get("maps") or {}
    if maps and meta.get("chemiscope"):
        if frames is None and meta.get("structures"):
            src = results_path.parent / meta["structures"]
            if src.is_file():
                from mlipspace.data import read

                frames = read(str(src))
        import importlib.util

        if importlib.util.find_spec("chemiscope") is None:
            frames = None  # optional: no chemiscope file without the package (the link is dropped)
        if frames is not None:
            from mlipspace.report.explore import write_structures

            write_structures(out, results, frames)  # the chemiscope file and explore.html
        else:
            meta = dict(meta)
            meta.pop("chemiscope")
            results = dict(results, meta=meta)
    timing = None
    tpath = results_path.parent / "timing.json"
    if tpath.is_file():
        try:
            timing = json.loads(tpath.read_text())
        except ValueError:
            timing = None
    return build_report(results, out, timing=timing)
