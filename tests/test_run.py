"""End to end: ``mlipspace run`` on a small builtin dataset, rerun reuse, determinism, store commands."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlipspace.cli import app
from mlipspace.models import ModelSpec, register

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
runner = CliRunner()

MODELS = "descriptor-rdf,test-rdf-coarse"


@pytest.fixture(scope="module", autouse=True)
def coarse_descriptor():
    """A second, differently parametrised radial descriptor (two fast models give every analysis
    something to do), registered for this module only so other tests see the usual registry."""
    from mlipspace.models import registry

    register(ModelSpec("test-rdf-coarse", "descriptor", "descriptor", (), "coarse radial descriptor (tests)",
                       {"cutoff": 4.0, "n_bins": 8, "seed": 1}), replace=True)
    yield
    registry._REGISTRY.pop("test-rdf-coarse", None)


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    first = invoke("run", "--models", MODELS, "--size", 44, "--seeds", 2, "--out", out)  # >= 10 test structures
    return out, first


def test_run_writes_report_results_and_chemiscope(study):
    out, first = study
    for name in ("index.html", "results.json", "chemiscope.json.gz", "structures.xyz", "timing.json"):
        assert (out / name).is_file(), name
    assert (out / "features.zarr").is_dir()
    res = json.loads((out / "results.json").read_text())
    analyses = {r["analysis"] for r in res["records"]}
    assert {"cross-model", "layers", "layers-cross", "cumulant-orders"} <= analyses
    levels = {r["level"] for r in res["records"] if r["analysis"] == "cross-model"}
    assert levels == {"atom", "atom-ungrouped", "structure"}
    assert {r["metric"] for r in res["records"] if r["analysis"] == "cross-model"} == {"gfre", "lfre", "cka", "cka_debiased", "cknna", "mknn", "procrustes"}
    assert all(r["n_seeds"] == (1 if r["level"] == "atom-ungrouped" else 2)  # the study split: one seed, as the study
               for r in res["records"] if r["analysis"] == "cross-model")
    # every number has its interval, or no number and the reason
    for r in res["records"]:
        assert (r["value"] is None and r["reason"]) or r["ci_low"] <= r["value"] <= r["ci_high"], r
    assert {"coverage", "leakage"} <= {r["analysis"] for r in res["records"]}
    assert res["meta"]["dataset"]["name"] == "builtin:mad-mini?size=44"
    assert set(res["meta"]["models"]) == set(MODELS.split(","))
    assert "no DFT energy labels" in res["meta"]["probe_note"]  # mad-mini is unlabelled: probe skipped
    assert set(res["maps"]) == set(MODELS.split(","))
    assert "findings" in first.output and "report:" in first.output
    html = (out / "index.html").read_text()
    for img in __import__("re").findall(r'<img src="([^"]+)"', html):
        assert (out / img).is_file()


def test_rerun_reuses_store_and_is_byte_identical(study):
    out, _ = study
    before = (out / "results.json").read_bytes()
    second = invoke("run", "--models", MODELS, "--size", 44, "--seeds", 2, "--out", out)
    assert "reusing stored dataset" in second.output
    assert (out / "results.json").read_bytes() == before
    # without the analysis cache the numbers are recomputed and still byte-identical
    shutil.rmtree(out / "cache")
    invoke("run", "--models", MODELS, "--size", 44, "--seeds", 2, "--out", out)
    assert (out / "results.json").read_bytes() == before


def test_store_commands_read_the_runs_store(study, tmp_path):
    out, _ = study
    store = out / "features.zarr"
    res = invoke("compare", "--store", store, "--metric", "gfre", "--level", "structure", "--order", 2,
                 "--seeds", 2, "--json")
    recs = json.loads(res.stdout)
    assert len(recs) == 2 and all(r["level"] == "structure" and r["order"] == 2 for r in recs)
    res = invoke("layers", "--store", store, "--model", "descriptor-rdf", "--cross", "--output", tmp_path / "l.json")
    layer_recs = json.loads((tmp_path / "l.json").read_text())
    assert {r["analysis"] for r in layer_recs} == {"layers", "layers-cross"}
    bad = runner.invoke(app, ["probe", "--store", str(store)])
    assert bad.exit_code != 0 and "no DFT energy labels" in str(bad.exception)


def test_report_command_rebuilds_index(study, tmp_path):
    out, _ = study
    invoke("report", "--results", out / "results.json", "--out", tmp_path)
    assert (tmp_path / "index.html").is_file() and (tmp_path / "chemiscope.json.gz").is_file()


def test_run_rejects_bad_options(tmp_path):
    bad = runner.invoke(app, ["run", "--models", "no-such-model", "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "unknown model" in str(bad.exception)
    bad = runner.invoke(app, ["run", "x.xyz", "--size", "3", "--models", MODELS, "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "builtin" in str(bad.exception)


@pytest.mark.skipif(not (SHARED / "mad-bench-mad-reduced.xyz").is_file(), reason="../shared/data is absent")
def test_run_on_labelled_data_probes_energy(tmp_path):
    invoke("run", SHARED / "mad-bench-mad-reduced.xyz", "--models", MODELS, "--seeds", 1, "--no-lfre",
           "--no-layers", "--out", tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    probe = [r for r in res["records"] if r["analysis"] == "probe"]
    assert {r["source"] for r in probe} == {"composition", *MODELS.split(",")}
    assert {r["level"] for r in probe} == {"atom", "structure"}
    assert all(len(v["pcovr"]) == res["meta"]["dataset"]["n_frames"] for v in res["maps"].values())


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("chgnet") is None, reason="chgnet not installed")
def test_run_with_bundled_chgnet_models(tmp_path):
    invoke("run", "--models", "chgnet-0.3.0,chgnet-r2scan,descriptor-rdf", "--size", 10, "--seeds", 1,
           "--no-lfre", "--out", tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    ft = [r for r in res["records"] if r["analysis"] == "finetune"]
    assert {r["relation"] for r in ft} == {"parent (pre-trained)"}
    chg = [r for r in res["records"] if r["analysis"] == "layers" and r["source"] == "chgnet-0.3.0"]
    assert {r["source_layer"] for r in chg} == {"interaction.0", "interaction.1", "interaction.2",
                                                "interaction.3", "last"}

