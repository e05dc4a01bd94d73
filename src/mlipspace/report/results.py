"""``results.json``: every number of a study run, one record each, written deterministically.

Layout::

    {"format": "mlipspace-results/1",
     "meta":    {dataset, models: {name: {family, fingerprint, fingerprint_id, layers}}, settings, notes, ...},
     "records": [{analysis, source, target, metric, level, layer, value, spread, n_train, n_test, ...}],
     "maps":    {model: {"pca": [[x, y], ...], "pcovr": [[x, y], ...]}}}

Floats are computed at full precision and rounded only here, on output (``FLOAT_DIGITS`` significant
digits), keys are sorted and NaN becomes ``null``: the same run gives a byte-identical file. Nothing
time-dependent (dates, durations, host names) goes into it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mlipspace.errors import InputError

FORMAT = "mlipspace-results/1"
FLOAT_DIGITS = 6


def _clean(obj, digits: int):
    """JSON-ready copy: floats rounded to ``digits`` significant digits, NaN/inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist(), digits)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if not math.isfinite(x):
            return None
        if x == 0.0:
            return 0.0
        return float(f"{x:.{digits}g}")
    if isinstance(obj, (set, frozenset)):
        return sorted(_clean(v, digits) for v in obj)
    return obj


def dumps(results: Mapping, *, digits: int = FLOAT_DIGITS) -> str:
    """The canonical text of ``results`` (sorted keys, rounded floats, 1-space indent, final newline)."""
    return json.dumps(_clean(results, digits), sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def make_results(records: Sequence[Mapping], meta: Mapping | None = None, maps: Mapping | None = None) -> dict:
    """Assemble the results document from the analyses' records, run metadata and maps."""
    return {"format": FORMAT, "meta": dict(meta or {}), "records": list(records), "maps": dict(maps or {})}


def write_results(path: str | os.PathLike, results: Mapping) -> Path:
    """Write ``results`` canonically to ``path`` (atomically: temp file + rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(results), encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_results(path: str | os.PathLike) -> dict:
    """Read a ``results.json`` written by :func:`write_results`; clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such results file (run `mlipspace run` first)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("records"), list):
        raise InputError(f"{path}: not an mlipspace results file (expected format {FORMAT!r})")
    doc.setdefault("meta", {})
    doc.setdefault("maps", {})
    return doc


def table_columns(records: Sequence[Mapping]) -> list[str]:
    """Columns of the records table: :data:`mlipspace.records.RECORD_KEYS` present, then the others sorted."""
    from mlipspace.records import RECORD_KEYS

    keys = {k for r in records for k in r}
    return [k for k in RECORD_KEYS if k in keys] + sorted(keys - set(RECORD_KEYS))


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return repr(v) if isinstance(v, float) else str(v)


def write_table(path: str | os.PathLike, results: Mapping | Sequence[Mapping], *,
                digits: int = FLOAT_DIGITS) -> Path:
    """Write the records of ``results`` (a results document or a list of records) as CSV, one row each.

    Same numbers as ``results.json`` (rounded alike); a missing key or null value is an empty cell,
    nested values are JSON text. Deterministic: same records, same bytes.
    """
    import csv

    records = results.get("records", []) if isinstance(results, Mapping) else list(results)
    rows = _clean(list(records), digits)
    cols = table_columns(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in cols])
    os.replace(tmp, path)
    return path


def matrix_names(results: Mapping, records: Sequence[Mapping]) -> list[str] | None:
    """Row/column order of a model matrix: the run's model order restricted to models in ``records``."""
    meta = results.get("meta", {})
    order = list(meta.get("model_order") or (meta.get("models") or {}))
    used = {r["source"] for r in records} | {r["target"] for r in records}
    names = [m for m in order if m in used]
    if not names:
        return None  # no model order known: order of appearance
    return names + [m for m in dict.fromkeys(r[k] for r in records for k in ("source", "target")) if m not in names]


class Results:
    """A study's results for analysis in Python: records, meta, maps, and pandas views of them.

    ``Results.load("report/")`` (an output folder or a ``results.json``; a JSON list of records as
    written by ``mlipspace compare --output`` works too). pandas is imported only by the methods that
    return DataFrames.
    """

    def __init__(self, results: Mapping, path: Path | None = None):
        self.doc = dict(results)
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Results:
        """Read ``path`` (a folder holding ``results.json``, or the file itself); clear error otherwise."""
        path = Path(path)
        if path.is_dir():
            if not (path / "results.json").is_file():
                raise InputError(f"{path}: folder has no results.json (run `mlipspace run --out {path}` first)")
            path = path / "results.json"
        if path.is_file() and path.suffix == ".json":
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: not valid JSON ({exc})") from None
            if isinstance(doc, list) and all(isinstance(r, dict) and "analysis" in r for r in doc):
                return cls(make_results(doc), path)
        return cls(load_results(path), path)

    @property
    def records(self) -> list[dict]:
        return self.doc.get("records", [])

    @property
    def meta(self) -> dict:
        return self.doc.get("meta", {})

    @property
    def maps(self) -> dict:
        return self.doc.get("maps", {})

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return f"<Results: {len(self)} records, {len(self.meta.get('models') or {})} models{where}>"

    def to_pandas(self):
        """One row per record, one column per record key (missing keys and null values are NaN/None)."""
        import pandas as pd

        return pd.DataFrame(self.records, columns=table_columns(self.records))

    def matrix(self, metric: str, level: str = "atom", layer: str | None = "last", analysis: str = "cross-model"):
        """The ``metric`` matrix as a labelled DataFrame: index = source, columns = target (NaN diagonal)."""
        import pandas as pd

        from mlipspace.records import matrix, select

        recs = select(self.records, analysis=analysis, metric=metric, level=level)
        if layer is not None:
            recs = select(recs, layer=layer)
        if not recs:
            raise InputError(f"{self.path or 'results'}: no {analysis} records of metric {metric!r} at level "
                             f"{level!r}" + (f", layer {layer!r}" if layer else ""))
        names, M, _ = matrix(recs, metric, level, analysis=analysis, names=matrix_names(self.doc, recs))
        return pd.DataFrame(M, index=pd.Index(names, name="source"), columns=pd.Index(names, name="target"))

    def summary(self):
        """The study's four findings as a DataFrame (index = finding key; title, holds, text, numbers)."""
        import pandas as pd

        from mlipspace.report.summary import findings

        rows = [{"key": f.key, "title": f.title, "holds": f.holds, "text": f.text, "numbers": f.numbers}
                for f in findings(self.doc)]
        return pd.DataFrame(rows, columns=["key", "title", "holds", "text", "numbers"]).set_index("key")
