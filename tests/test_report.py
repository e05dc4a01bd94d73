"""Report: results.json determinism, the four findings computed from numbers, self-contained HTML."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mlipspace.errors import InputError
from mlipspace.records import record
from mlipspace.report import findings, load_results, make_results, write_report, write_results
from mlipspace.report.results import dumps

FAMILIES = {"chgnet-0.3.0": "chgnet", "chgnet-0.2.0": "chgnet", "chgnet-r2scan": "chgnet",
            "sevennet-0": "sevennet", "sevennet-0-22may2024": "sevennet", "diep-r2scan": "diep"}


def synthetic_results(cross=0.7, variant=0.3, parent=0.05, other=0.2, forward=0.3, n_frames=12):
    """Hand-made records of every analysis with chosen values (no model, no metric code involved)."""
    rng = np.random.default_rng(0)
    recs = []
    names = list(FAMILIES)
    for level in ("atom", "structure"):
        for metric in ("gfre", "lfre"):
            for a in names:
                for b in names:
                    if a == b:
                        continue
                    same = FAMILIES[a] == FAMILIES[b]
                    v = (variant if same else cross) * (0.6 if metric == "lfre" else 1.0)
                    recs.append(record("cross-model", a, b, metric, [v + 0.01, v - 0.01, v], level=level,
                                       n_train=100, n_test=30))
    for a, b, g in (("sevennet-0-22may2024", "sevennet-0", "SevenNet-0"), ("chgnet-0.2.0", "chgnet-0.3.0", "CHGNet")):
        for s, t in ((a, b), (b, a)):
            recs.append(record("variants", s, t, "gfre", [variant, variant + 0.01], group=g))
    for ref, rel, v in (("chgnet-0.3.0", "parent (pre-trained)", parent),
                        ("chgnet-0.2.0", "same architecture, trained independently", other),
                        ("diep-r2scan", "trained from scratch on r2SCAN data", other * 1.5)):
        for s, t in (("chgnet-r2scan", ref), (ref, "chgnet-r2scan")):
            recs.append(record("finetune", s, t, "gfre", [v, v + 0.01], relation=rel))
    for e in range(3):
        for run, v in (("finetune", 0.02 * e), ("scratch", 0.9 - 0.1 * e)):
            recs.append(record("finetune-track", run, "chgnet-0.3.0", "gfre", [v, v + 0.01], run=run, epoch=e,
                               checkpoint=f"epoch{e:03d}.pth.tar"))
    for i, a in enumerate(["interaction.0", "interaction.1", "last"]):
        for j, b in enumerate(["interaction.0", "interaction.1", "last"]):
            if a != b:
                recs.append(record("layers", "chgnet-0.3.0", "chgnet-0.3.0", "gfre", [0.1 * abs(i - j)] * 2, layer=a,
                                   source_layer=a, target_layer=b, source_depth=i / 2, target_depth=j / 2))
        recs.append(record("layers-cross", "chgnet-0.3.0", "diep-r2scan", "gfre", [0.9 - 0.1 * i] * 2, layer=a,
                           source_layer=a, target_layer="last", source_depth=i / 2))
    for a in (1, 2, 3):
        for b in (1, 2, 3):
            if a != b:
                recs.append(record("cumulant-orders", "chgnet-0.3.0", "chgnet-0.3.0", "gfre",
                                   [forward if b > a else 1e-4] * 2, level="structure", model="chgnet-0.3.0",
                                   source_order=a, target_order=b))
    for m in ["composition"] + names:
        recs.append(record("probe", m, "energy", "rmse_mev_per_atom", [50.0 + rng.random()] * 2, level="atom"))
    meta = {"dataset": {"name": "synthetic", "n_frames": n_frames, "n_atoms": 10 * n_frames},
            "models": {m: {"family": f, "fingerprint": {"name": m}, "layers": ["last"]} for m, f in FAMILIES.items()},
            "map_colour": rng.normal(size=n_frames).tolist(), "map_colour_label": "energy"}
    maps = {m: {"pca": rng.normal(size=(n_frames, 2)).tolist(), "pcovr": rng.normal(size=(n_frames, 2)).tolist()}
            for m in names[:3]}
    return make_results(recs, meta, maps)


def test_results_json_is_canonical_and_rounds_only_on_output(tmp_path):
    res = synthetic_results()
    res["records"][0]["value"] = 0.123456789123
    res["records"][1]["value"] = float("nan")
    a = write_results(tmp_path / "a.json", res).read_bytes()
    b = write_results(tmp_path / "b.json", res).read_bytes()
    assert a == b
    assert res["records"][0]["value"] == 0.123456789123  # input left untouched
    back = load_results(tmp_path / "a.json")
    assert back["records"][0]["value"] == 0.123457
    assert back["records"][1]["value"] is None
    # every record carries the fields the issue lists
    for key in ("analysis", "source", "target", "metric", "level", "layer", "value", "spread", "n_train",
                "n_test", "dataset", "source_fingerprint", "target_fingerprint"):
        assert key in back["records"][0]
    assert dumps({"x": 1.0}) == dumps({"x": 1.0 + 1e-12})


def test_load_results_rejects_other_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"records": []}))
    with pytest.raises(InputError, match="not an mlipspace results file"):
        load_results(p)
    with pytest.raises(InputError, match="no such results file"):
        load_results(tmp_path / "missing.json")


def test_findings_hold_when_the_numbers_say_so():
    f = findings(synthetic_results())
    assert [x.key for x in f] == ["i", "ii", "iii", "iv"]
    assert all(x.holds is True for x in f), [x.text for x in f]
    assert "0.70" in f[0].text  # the cross-family mean, computed from the records
    assert "0.30" in f[1].text


def test_findings_fail_when_the_numbers_contradict_them():
    f = findings(synthetic_results(cross=0.1, variant=0.5, parent=0.5, other=0.2, forward=0.01))
    assert [x.holds for x in f] == [False, False, False, False]


def test_findings_not_tested_without_records():
    f = findings(make_results([], {"models": {}}))
    assert all(x.holds is None for x in f)


def _frames(n):
    from ase import Atoms

    return [Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]) for _ in range(n)]


def test_report_is_self_contained_with_all_figures(tmp_path):
    res = synthetic_results()
    path = write_results(tmp_path / "results.json", res | {"meta": res["meta"] | {"chemiscope": "chemiscope.json.gz"}})
    html_path = write_report(path, frames=_frames(12))
    text = html_path.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    imgs = re.findall(r'<img src="([^"]+)"', text)
    assert len(imgs) >= 8  # heatmaps, variants, fine-tuning, layers, maps
    for src in imgs:
        assert (tmp_path / src).is_file(), src
        assert (tmp_path / (src[: -len(".png")] + ".svg")).is_file()
    assert (tmp_path / "chemiscope.json.gz").is_file()
    assert "holds" in text and "0.70" in text
    # cumulant order table and probe table are rendered
    assert "Cumulant orders" in text and "RMSE" in text


def test_report_command_rebuilds_from_results_json(tmp_path):
    from typer.testing import CliRunner

    from mlipspace.cli import app

    path = write_results(tmp_path / "results.json", synthetic_results())
    result = CliRunner().invoke(app, ["report", "--results", str(path), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rep" / "index.html").is_file()


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def screenshot(html: Path, tmp_path: Path) -> np.ndarray:
    """Render ``html`` in headless Chromium (no network) and return the screenshot's pixels."""
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chrome-profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
           html.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    import matplotlib.image as mpimg

    return mpimg.imread(shot)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_report_renders_non_blank_in_headless_chromium(tmp_path):
    path = write_results(tmp_path / "results.json", synthetic_results())
    html_path = write_report(path)
    pixels = screenshot(html_path, tmp_path)
    assert pixels.shape[0] >= 1000
    assert float(pixels[..., :3].var()) > 1e-3  # not a blank page


def test_merge_adds_finetune_track_records(tmp_path):
    from mlipspace.report import merge_results

    full = synthetic_results()
    base = dict(full, records=[r for r in full["records"] if r["analysis"] != "finetune-track"])
    track = make_results([r for r in full["records"] if r["analysis"] == "finetune-track"], {"finetune": {"epochs": 2}})
    merged = merge_results(base, track, track)  # the second copy adds nothing
    assert len(merged["records"]) == len(full["records"])
    p_base = write_results(tmp_path / "results.json", base)
    p_track = write_results(tmp_path / "ft" / "results.json", track)
    html = write_report(p_base, tmp_path / "out", merge=[p_track]).read_text()
    assert "finetune_track_gfre.png" in html
    assert load_results(tmp_path / "out" / "results.json")["meta"]["merged"][0]["analyses"] == ["finetune-track"]


def test_chemiscope_file_is_byte_identical_across_writes(tmp_path):
    import gzip
    import time

    from mlipspace.report.chemiscope_export import write_chemiscope

    frames = _frames(3)
    maps = {"a": {"pca": [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]}}
    a = write_chemiscope(tmp_path / "a.json.gz", frames, maps, properties={"e": [1.0, 2.0, 3.0]})
    time.sleep(1.1)  # the gzip header would carry the time
    b = write_chemiscope(tmp_path / "b.json.gz", frames, maps, properties={"e": [1.0, 2.0, 3.0]})
    assert a.read_bytes() == b.read_bytes()
    doc = json.loads(gzip.open(a).read())
    assert len(doc["structures"]) == 3 and "a PC1" in doc["properties"] and "e" in doc["properties"]
    with pytest.raises(InputError, match="expected \\(3, 2\\)"):
        write_chemiscope(tmp_path / "c.json.gz", frames, {"a": {"pca": [[0.0, 1.0]]}})


def test_similarity_matrices_and_rank_agreement_in_report(tmp_path):
    """cross_model with cka/mknn/procrustes: records carry a null; the report draws them and ranks metrics."""
    from mlipspace.data import builtin
    from mlipspace.data.rows import row_table
    from mlipspace.experiments.cross_model import cross_model

    rows = row_table(builtin("mad-mini", size=60, seed=0))  # >= 10 test structures per split
    rng = np.random.default_rng(0)
    n = len(rows["frame"])
    a = rng.normal(size=(n, 16))
    feats = {"a": a, "b": a @ rng.normal(size=(16, 24)) + 0.1 * rng.normal(size=(n, 24)),
             "c": rng.normal(size=(n, 8))}
    recs = cross_model(feats, rows, metrics=("gfre", "cka", "mknn", "procrustes"), seeds=(0, 1))
    by = {(r["source"], r["target"], r["metric"]): r for r in recs}
    assert by[("a", "b", "cka")]["value"] > 0.7 > by[("a", "c", "cka")]["value"]
    assert by[("a", "b", "cka")]["value"] == by[("b", "a", "cka")]["value"]  # symmetric
    assert by[("a", "b", "procrustes")]["value"] < by[("a", "b", "procrustes")]["null_mean"]
    assert abs(by[("a", "c", "mknn")]["value"] - by[("a", "c", "mknn")]["null_mean"]) < 0.1  # unrelated ~ chance
    res = make_results(recs, {"dataset": {"name": "synthetic", "n_frames": 30, "n_atoms": n}, "models": {}}, {})
    text = write_report(write_results(tmp_path / "results.json", res)).read_text()
    assert "CKA" in text and "MKNN" in text and "PROCRUSTES" in text
    assert "Rank agreement" in text and "Spearman" in text



def test_report_opens_with_summary_and_one_overview_figure_then_folds_the_rest(tmp_path):
    text = write_report(write_results(tmp_path / "results.json", synthetic_results())).read_text()
    body = text[text.index("<body>"):]
    first_fold = body.index("<details class=\"sec\"")
    head = body[:first_fold]
    # before any fold: the summary, exactly one figure (the atom-level cross-model GFRE) and the contents
    assert head.index('id="summary"') < head.index('id="overview"') < head.index('<nav class="toc">')
    assert re.findall(r'<img src="([^"]+)"', head) == ["figures/cross_gfre_atom.png"]
    assert head.count('class="finding') == 4
    # every section is a closed <details> the contents link to
    folds = re.findall(r'<details class="sec" id="([^"]+)"( open)?>', body)
    assert len(folds) >= 6 and not any(is_open for _, is_open in folds)
    toc = re.findall(r'<li><a href="#([^"]+)">', head)
    assert toc == ["summary", "overview"] + [anchor for anchor, _ in folds]
    assert body[first_fold:].count("<details class=\"sec\"") == body.count("</details>") - body.count(
        '<details class="sub"')
    assert "<script" not in text


def test_report_tolerates_records_without_a_value(tmp_path):
    """A fit outside its valid regime gives ``value: null`` + reason: tables say n/a, figures skip it."""
    res = synthetic_results()
    for r in res["records"]:
        if r["analysis"] in ("variants", "finetune", "finetune-track", "layers", "layers-cross", "probe",
                             "cumulant-orders") or (r["analysis"] == "cross-model" and r["source"] == "diep-r2scan"):
            if r.get("epoch") != 0 and r.get("source_layer") != "last":
                r.update(value=None, spread=None, reason="outside the valid regime")
    text = write_report(write_results(tmp_path / "results.json", res)).read_text()
    assert "n/a" in text and "outside the valid regime" in text
    assert "holds" in text or "not tested" in text
