"""``explore.html``: chemiscope's own interactive viewer (map + structure), offline, beside the report.

The dataset of :func:`mlipspace.report.chemiscope_export.chemiscope_dataset` is embedded in the page
and chemiscope's JavaScript (``chemiscope.min.js``, shipped by the ``chemiscope`` Python package) is
copied next to it: the page opens from disk with no server and makes no network request.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from mlipspace.errors import InputError

#: File name of the copied viewer library (next to ``explore.html``).
JS_NAME = "chemiscope.min.js"
NAN_MARK = "***NaN***"

_CSS = """
html,body{margin:0;padding:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222}
header{padding:.5em 1em;border-bottom:1px solid #ddd;font-size:.9em}header a{margin-right:1em}
#cs-error{display:none;color:#a94442;background:#f2dede;border:1px solid #d9534f;padding:.6em 1em;margin:.5em 1em}
.cs-row{display:flex;flex-wrap:wrap;height:calc(100vh - 3.5em);min-height:520px}
.cs-col{flex:1 1 480px;display:flex;flex-direction:column;min-width:0;padding:0 .5em;height:100%}
#cs-map,#cs-structure{flex:1;min-height:0;position:relative}#cs-info{flex-shrink:0}
"""

_INIT = """
(function () {
  function fail(e) {
    var box = document.getElementById('cs-error');
    box.style.display = 'block';
    box.textContent = 'The viewer could not start: ' + e;
    console.error(e);
  }
  try {
    var dataset = JSON.parse(document.getElementById('cs-data').textContent, function (k, v) {
      return v === '***NaN***' ? NaN : v;
    });
    var config = {meta: 'cs-meta', map: 'cs-map', structure: 'cs-structure', info: 'cs-info'};
    Chemiscope.DefaultVisualizer.load(config, dataset).then(function (v) {
      window.visualizer = v;
      document.body.setAttribute('data-loaded', 'yes');
    }, fail);
  } catch (e) { fail(e); }
})();
"""


def chemiscope_js() -> Path:
    """Path of ``chemiscope.min.js`` inside the installed ``chemiscope`` package (clear error if absent)."""
    import importlib.util

    spec = importlib.util.find_spec("chemiscope")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("explore.html needs the 'chemiscope' package (pip install chemiscope)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for rel in ("sphinx/static/chemiscope.min.js", "static/chemiscope.min.js"):
        if (root / rel).is_file():
            return root / rel
    raise InputError(f"{root}: the chemiscope package ships no chemiscope.min.js (reinstall chemiscope)")


def _mark_nan(obj):
    """Copy of ``obj`` with non-finite floats as the string ``NAN_MARK`` (JSON has no NaN; the page revives it)."""
    if isinstance(obj, Mapping):
        return {k: _mark_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_mark_nan(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return NAN_MARK
    return obj


def _script_json(data: Mapping) -> str:
    """``data`` as JSON safe inside a ``<script>`` element (no ``</`` or ``<!--``)."""
    text = json.dumps(_mark_nan(data), allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write_explore(out_dir: str | os.PathLike, dataset: Mapping, *, title: str = "mlipspace explorer",
                  back: str = "index.html") -> Path:
    """Write ``out_dir/explore.html`` showing ``dataset`` (a chemiscope dataset) and copy the viewer JS.

    ``back``: the report page linked from the header. Returns the page's path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = chemiscope_js()
    dest = out / JS_NAME
    if not dest.is_file() or dest.stat().st_size != js.stat().st_size:
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(js, tmp)
        os.replace(tmp, dest)  # a killed report never leaves a truncated viewer behind
    n = len(dataset.get("structures", []))
    esc = title.replace("&", "&amp;").replace("<", "&lt;")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc}</title><style>{_CSS}</style></head><body>\n"
        f'<header><a href="{back}">← report</a><b>{esc}</b> — {n} structures. Click a point of the map to '
        "see its structure; choose the axes (each model's map) and colours in the map's settings (⚙).</header>\n"
        '<div id="cs-error"></div>\n'
        '<div class="cs-row"><div class="cs-col"><div id="cs-meta"></div><div id="cs-map"></div></div>'
        '<div class="cs-col"><div id="cs-structure"></div><div id="cs-info"></div></div></div>\n'
        f'<script id="cs-data" type="application/json">{_script_json(dataset)}</script>\n'
        f'<script src="{JS_NAME}"></script>\n<script>{_INIT}</script>\n</body></html>\n'
    )
    path = out / "explore.html"
    path.write_text(page, encoding="utf-8")
    return path


def write_structures(out_dir: str | os.PathLike, results: Mapping, frames) -> tuple[Path, Path]:
    """The chemiscope file named in ``results["meta"]["chemiscope"]`` and ``explore.html`` for ``frames``.

    Both carry every model's maps (``results["maps"]``), the per-structure properties (map colour,
    subset, n_atoms, energy per atom when labelled) and per-atom forces when present.
    """
    from mlipspace.report.chemiscope_export import (atom_properties, chemiscope_dataset, per_atom_properties,
                                                    structure_properties, write_chemiscope)

    meta = results.get("meta", {})
    props = {}
    if meta.get("map_colour") is not None:
        props[meta.get("map_colour_label", "energy")] = meta["map_colour"]
    props.update(structure_properties(frames))
    name = f"mlipspace: {meta.get('dataset', {}).get('name', '')}"
    from mlipspace.report.per_atom import NPZ_NAME, read_per_atom

    pa = read_per_atom(Path(out_dir) / NPZ_NAME)
    data = chemiscope_dataset(frames, results.get("maps") or {}, properties=props, name=name,
                              atom_props=atom_properties(frames) | (per_atom_properties(pa, frames) if pa else {}))
    out = Path(out_dir)
    cs = write_chemiscope(out / meta.get("chemiscope", "chemiscope.json.gz"), frames, {}, dataset=data)
    return cs, write_explore(out, data, title=name)
