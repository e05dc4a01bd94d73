"""explore.html: chemiscope's viewer offline beside the report (local JS, dataset inlined, no network)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mlipspace.report import write_report, write_results
from test_report import CHROMIUM, synthetic_results

pytest.importorskip("chemiscope")


def frames(n: int, *, labelled: bool = True):
    """``n`` small distinct molecules, tagged with two subsets; energies and forces when ``labelled``."""
    from ase import Atoms

    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        a = Atoms("H2O" if i % 2 else "CH4", positions=rng.normal(scale=0.8, size=(3 if i % 2 else 5, 3)))
        a.info["subset"] = "water" if i % 2 else "methane"
        if labelled:
            a.info["energy"] = -10.0 - i
            a.arrays["forces"] = rng.normal(size=(len(a), 3))
        out.append(a)
    return out


def build(tmp_path: Path, *, labelled: bool = True) -> Path:
    res = synthetic_results()
    res = res | {"meta": res["meta"] | {"chemiscope": "chemiscope.json.gz"}}
    write_report(write_results(tmp_path / "results.json", res), frames=frames(12, labelled=labelled))
    return tmp_path


def embedded(page: Path) -> dict:
    text = page.read_text()
    blob = re.search(r'<script id="cs-data" type="application/json">(.*?)</script>', text, re.S).group(1)
    return json.loads(blob)


def test_explore_page_uses_a_local_viewer_and_carries_maps_and_properties(tmp_path):
    out = build(tmp_path)
    page = out / "explore.html"
    text = page.read_text()
    assert (out / "chemiscope.min.js").stat().st_size > 1_000_000
    assert re.findall(r'<script src="([^"]+)"', text) == ["chemiscope.min.js"]
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing fetched from the network
    data = embedded(page)
    assert len(data["structures"]) == 12
    props = data["properties"]
    for model in synthetic_results()["maps"]:
        assert {f"{model} PC1", f"{model} PC2", f"{model} PCovR1"} <= set(props)
    assert props["subset"]["values"][:2] == ["methane", "water"]
    assert props["n_atoms"]["values"][:2] == [5, 3]
    assert props["energy per atom (eV)"]["values"][0] == pytest.approx(-2.0)
    assert props["energy"]["target"] == "structure"  # the map colour of the run (residual energy)
    assert props["|force| (eV/Å)"]["target"] == "atom" and len(props["|force| (eV/Å)"]["values"]) == 48
    assert 'href="explore.html"' in (out / "index.html").read_text()
    # the chemiscope file carries the same dataset
    import gzip

    assert json.loads(gzip.open(out / "chemiscope.json.gz").read())["properties"].keys() == props.keys()


def test_explore_page_is_byte_identical_across_writes(tmp_path):
    from mlipspace.report.explore import write_explore

    data = embedded(build(tmp_path / "a") / "explore.html")
    a = write_explore(tmp_path / "b", data).read_bytes()
    assert write_explore(tmp_path / "c", data).read_bytes() == a
    assert (tmp_path / "b" / "chemiscope.min.js").read_bytes() == (tmp_path / "c" / "chemiscope.min.js").read_bytes()


def test_explore_without_labels_has_no_energy_or_atom_properties(tmp_path):
    props = embedded(build(tmp_path, labelled=False) / "explore.html")["properties"]
    assert "energy per atom (eV)" not in props and not any(p["target"] == "atom" for p in props.values())


def test_embedded_json_cannot_close_its_script_element():
    from mlipspace.report.explore import _script_json

    text = _script_json({"name": "</script><script>alert(1)</script>", "x": [float("nan"), 1.0]})
    assert "</" not in text and "<" not in text
    assert json.loads(text) == {"name": "</script><script>alert(1)</script>", "x": ["***NaN***", 1.0]}


PROBE = """
(function () {
  var errors = [];
  var orig = console.error;
  console.error = function () { errors.push(Array.prototype.map.call(arguments, String).join(' ')); orig.apply(console, arguments); };
  window.addEventListener('error', function (e) { errors.push('error: ' + (e.message || (e.target && (e.target.src || e.target.href)))); }, true);
  window.addEventListener('unhandledrejection', function (e) { errors.push('rejection: ' + e.reason); });
  function deep(root, sel, acc) {
    root.querySelectorAll(sel).forEach(function (e) { acc.push(e); });
    root.querySelectorAll('*').forEach(function (e) { if (e.shadowRoot) deep(e.shadowRoot, sel, acc); });
    return acc;
  }
  function panel(c) {
    var el = c, r = c.getRootNode();
    while (r && r.host) { el = r.host; r = el.getRootNode(); }
    var p = el.closest('[id]');
    return p ? p.id : '';
  }
  function stats(c) {
    var out = {panel: panel(c), w: c.width, h: c.height, opaque: 0, colours: 0};
    try {
      var t = document.createElement('canvas'); t.width = c.width; t.height = c.height;
      var ctx = t.getContext('2d'); ctx.drawImage(c, 0, 0);
      var d = ctx.getImageData(0, 0, c.width, c.height).data, seen = {};
      for (var i = 0; i < d.length; i += 28) {
        if (d[i + 3] > 0) out.opaque++;
        seen[(d[i] >> 4) + ',' + (d[i + 1] >> 4) + ',' + (d[i + 2] >> 4) + ',' + (d[i + 3] >> 6)] = 1;
      }
      out.colours = Object.keys(seen).length;
    } catch (e) { out.error = String(e); }
    return out;
  }
  function drawn(list, id) { return list.some(function (c) { return c.panel === id && c.opaque > 0 && c.colours > 3; }); }
  var tries = 0;
  function poll() {
    var canvases = deep(document, 'canvas', []).map(stats);
    var done = document.body.getAttribute('data-loaded') === 'yes' && drawn(canvases, 'cs-map') && drawn(canvases, 'cs-structure');
    if (!done && ++tries < 60) { setTimeout(poll, 500); return; }
    var pre = document.createElement('pre');
    pre.id = 'probe';
    pre.textContent = JSON.stringify({loaded: document.body.getAttribute('data-loaded'), errors: errors,
      canvases: canvases, resources: performance.getEntriesByType('resource').map(function (r) { return r.name; })});
    document.body.appendChild(pre);
  }
  window.addEventListener('load', function () { setTimeout(poll, 1000); });
})();
"""


def page_requests(net_log: Path) -> list[str]:
    """URLs the page itself requested over the network (chromium's own background requests excluded)."""
    log = json.loads(net_log.read_text())
    types = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls = []
    for ev in log["events"]:
        p = ev.get("params", {})
        if types.get(ev["type"]) == "URL_REQUEST_START_JOB" and "url" in p:
            if p.get("initiator") != "not an origin" and not p["url"].startswith(("file:", "data:", "blob:")):
                urls.append(p["url"])
    return urls


def chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
           "--enable-unsafe-swiftshader", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'chrome-profile'}",
           "--window-size=1400,900", "--virtual-time-budget=60000", *extra, url]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=240)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_explore_loads_offline_without_errors_and_draws_map_and_structure(tmp_path):
    out = build(tmp_path / "out")
    text = (out / "explore.html").read_text()
    probe = out / "probe.html"  # the page with a probe script first in <head>; the page itself is untouched
    (tmp_path / "probe.js").write_text(PROBE)
    probe.write_text(text.replace("<head>", f'<head><script src="{(tmp_path / "probe.js").as_uri()}"></script>', 1))
    net = tmp_path / "net.json"
    dom = chromium(probe.as_uri(), tmp_path, "--dump-dom", f"--log-net-log={net}").stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    result = json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
                        .replace("&quot;", '"'))
    assert result["loaded"] == "yes", result
    assert result["errors"] == [], result["errors"]
    for panel in ("cs-map", "cs-structure"):
        drawn = [c for c in result["canvases"] if c["panel"] == panel and c["opaque"] > 0 and c["colours"] > 3]
        assert drawn, (panel, result["canvases"])
    assert not [r for r in result["resources"] if r.startswith(("http:", "https:"))], result["resources"]
    assert page_requests(net) == []


def test_page_requests_sees_a_page_that_goes_online(tmp_path):
    """The network check can fail: a page fetching from the internet is caught (negative control)."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed")
    page = tmp_path / "online.html"
    page.write_text('<!DOCTYPE html><html><body><img src="https://example.invalid/x.png"></body></html>')
    net = tmp_path / "net.json"
    chromium(page.as_uri(), tmp_path, "--dump-dom", f"--log-net-log={net}")
    assert page_requests(net) == ["https://example.invalid/x.png"]
