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
