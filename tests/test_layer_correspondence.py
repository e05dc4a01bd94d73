"""Layer correspondence across two models: on a constructed pair whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from mlipspace.data import builtin, row_table
from mlipspace.errors import InputError
from mlipspace.experiments.layers import layer_correspondence, layer_matches
from mlipspace.records import select


@pytest.fixture(scope="module")
def rows():
    return row_table(builtin("mad-mini", size=60, seed=1))  # >= 10 test structures per split


def shuffled_images(rows, seed=0, noise=0.05):
    """Model A: 4 unrelated layers; model B: a noisy random linear image of each, in shuffled order.
    Returns ``(layers_a, layers_b, order)`` with B's layer ``order[i]`` built from A's layer i."""
    rng = np.random.default_rng(seed)
    n = len(rows["frame"])
    a = {f"a{i}": rng.normal(size=(n, 6)) for i in range(4)}
    order = [2, 0, 3, 1]  # B's layer b{order[i]} is the image of A's layer a{i}
    b = {}
    for j in range(4):
        i = order.index(j)
        x = a[f"a{i}"] @ rng.normal(size=(6, 8))
        b[f"b{j}"] = x + noise * x.std() * rng.normal(size=x.shape)
    return a, b, order


@pytest.fixture(scope="module")
def recs(rows):
    a, b, _ = shuffled_images(rows)
    return layer_correspondence(a, b, rows, model_a="A", model_b="B", seeds=(0,), dataset="toy")


def test_best_matches_recover_the_shuffled_depth_order(rows, recs):
    _, _, order = shuffled_images(rows)
    for metric in ("gfre", "cka"):
        fwd = {r["source_layer"]: r["best_layer"] for r in select(recs, analysis="layer-match", source="A",
                                                                  metric=metric)}
        assert fwd == {f"a{i}": f"b{order[i]}" for i in range(4)}, metric
        back = {r["source_layer"]: r["best_layer"] for r in select(recs, analysis="layer-match", source="B",
                                                                   metric=metric)}
        assert back == {f"b{order[i]}": f"a{i}" for i in range(4)}, metric


def test_clear_matches_are_not_ambiguous_and_carry_intervals(recs):
    for r in select(recs, analysis="layer-match"):
        assert r["ambiguous"] is False
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
        assert abs(r["best_depth"] * 3 - round(r["best_depth"] * 3)) < 1e-5  # depths of 4 layers: k / 3


def test_matrix_records_cover_both_directions_and_cka(recs):
    cor = select(recs, analysis="layer-correspondence")
    assert len(select(cor, metric="gfre", source="A")) == 16
    assert len(select(cor, metric="gfre", source="B")) == 16
    assert len(select(cor, metric="cka")) == 16
    for r in cor:
        assert {"source_layer", "target_layer", "source_depth", "target_depth"} <= set(r)
        assert r["ci_low"] is not None and r["dataset"] == "toy"
    off = [r["value"] for r in select(cor, metric="gfre", source="A") if r["target_layer"] != "b2"
           and r["source_layer"] == "a0"]
    assert min(off) > 0.9  # unrelated layers do not reconstruct each other


def test_overlapping_intervals_make_a_match_ambiguous():
    """Two candidates whose intervals overlap: the match is flagged, not silently trusted."""
    def rec(metric, s, t, sl, tl, v, lo, hi):
        return {"analysis": "layer-correspondence", "metric": metric, "source": s, "target": t, "source_layer": sl,
                "target_layer": tl, "source_depth": 0.0 if sl in ("x0", "y0") else 1.0,
                "target_depth": 0.0 if tl in ("x0", "y0") else 1.0, "value": v, "ci_low": lo, "ci_high": hi}
    recs = [rec("cka", "X", "Y", "x0", "y0", 0.80, 0.70, 0.90), rec("cka", "X", "Y", "x0", "y1", 0.78, 0.68, 0.88),
            rec("cka", "X", "Y", "x1", "y0", 0.20, 0.15, 0.25), rec("cka", "X", "Y", "x1", "y1", 0.90, 0.88, 0.92)]
    m = {r["source_layer"]: r for r in layer_matches(recs, model_a="X", model_b="Y") if r["source"] == "X"
         and r["metric"] == "cka"}
    assert m["x0"]["best_layer"] == "y0" and m["x0"]["ambiguous"] is True and m["x0"]["second_layer"] == "y1"
    assert m["x1"]["best_layer"] == "y1" and m["x1"]["ambiguous"] is False


def test_same_model_twice_is_refused(rows):
    a, _, _ = shuffled_images(rows)
    with pytest.raises(InputError, match="two different models"):
        layer_correspondence(a, a, rows, model_a="A", model_b="A")


def test_report_has_a_folded_section_with_the_matched_depths(tmp_path, recs):
    from mlipspace.report.html import build_report

    html = build_report({"records": recs, "meta": {}}, tmp_path).read_text()
    assert '<details class="sec" id="layer-correspondence">' in html
    assert 'href="#layer-correspondence"' in html  # in the table of contents
    assert "figures/layer_match_A_B.png" in html and (tmp_path / "figures" / "layer_match_A_B.svg").is_file()
    assert "figures/layer_corr_A_B_cka.png" in html


def test_cli_layers_across_two_stored_models(tmp_path):
    """``mlipspace layers --across A,B`` on a store: the matrix and the matches of each layer."""
    import json

    from typer.testing import CliRunner

    from mlipspace.cli import app
    from mlipspace.models import ModelSpec, register, registry

    register(ModelSpec("test-rdf-coarse-lc", "descriptor", "descriptor", (), "coarse radial descriptor (tests)",
                       {"cutoff": 4.0, "n_bins": 8, "seed": 1}), replace=True)
    try:
        runner = CliRunner()
        store = tmp_path / "s.zarr"
        r = runner.invoke(app, ["extract", "builtin:mad-mini?size=44", "--model", "descriptor-rdf,test-rdf-coarse-lc",
                                "--store", str(store), "--layers", "all", "--no-progress"])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["layers", "--store", str(store), "--across", "descriptor-rdf,test-rdf-coarse-lc",
                                "--output", str(tmp_path / "x.json")])
        assert r.exit_code == 0, r.output + repr(r.exception)
        recs = json.loads((tmp_path / "x.json").read_text())
        assert {x["analysis"] for x in recs} == {"layer-correspondence", "layer-match"}
        assert "best match of each layer" in r.output
        bad = runner.invoke(app, ["layers", "--store", str(store), "--across", "descriptor-rdf"])
        assert bad.exit_code != 0 and "two different models" in str(bad.exception)
        bad = runner.invoke(app, ["layers", "--store", str(store)])
        assert bad.exit_code != 0 and "--across" in str(bad.exception)
    finally:
        registry._REGISTRY.pop("test-rdf-coarse-lc", None)


def test_an_exact_copy_of_the_best_layer_is_not_a_rival(rows):
    """B's last layer is a copy of its b1 (as SevenNet's last is its interaction.4): the match of a1
    names both, and the tie does not make it ambiguous."""
    a, b, order = shuffled_images(rows)
    b = dict(b, last=b["b0"].copy())  # a1's image is b0
    recs = layer_correspondence(a, b, rows, model_a="A", model_b="B")
    m = {r["source_layer"]: r for r in select(recs, analysis="layer-match", source="A", metric="cka")}
    assert m["a1"]["best_layer"] == "b0" and m["a1"]["same_as"] == ["last"] and m["a1"]["ambiguous"] is False
    assert m["a1"]["second_layer"] not in ("b0", "last")
