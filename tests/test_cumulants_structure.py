"""Structure features from stores / FeatureSets, the order table and the cumulants CLI commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mlipspace import metrics as fre_metrics
from mlipspace.aggregate import cumulants, stored_name, structure_features, structure_matrices
from mlipspace.cli import app
from mlipspace.errors import InputError, StoreError
from mlipspace.experiments.cumulant_orders import order_matrix, order_table
from mlipspace.metrics import default_k
from mlipspace.models import FeatureSet

needs_fre = pytest.mark.skipif(
    not (hasattr(fre_metrics, "gfre") and hasattr(fre_metrics, "lfre")),
    reason="mlipspace.metrics.gfre/lfre not available in this checkout",
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with descriptor-rdf features of 40 mad-mini structures (seconds, no torch)."""
    from mlipspace.data import builtin
    from mlipspace.store import extract_to_store

    path = tmp_path_factory.mktemp("store") / "st"
    extract_to_store(builtin("mad-mini", size=40, seed=0), "descriptor-rdf", path, progress=False)
    return path


def synthetic(seed=0, n_frames=60, d=3):
    """Frames whose atom distributions differ in shape (skewness, tails), not only in mean/variance."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(20, 40, size=n_frames)
    f = np.repeat(np.arange(n_frames) * 3, sizes)
    shape = rng.uniform(0.5, 6.0, size=n_frames)
    x = np.concatenate([rng.gamma(a, size=(n, d)) for a, n in zip(shape, sizes)])
    x = (x - x.mean(0)) / x.std(0)
    subsets = np.array(["a", "b", "c"])[np.arange(n_frames) % 3]
    rows = {"frame": f, "Z": np.full(len(f), 6), "subset": np.repeat(subsets, sizes), "atom": np.zeros(len(f))}
    return x, rows, subsets


def test_structure_features_from_pairs_featuresets_and_mappings_agree():
    x, rows, _ = synthetic()
    ref, info = cumulants(x, rows["frame"], order=4, return_info=True)
    np.testing.assert_array_equal(structure_features((x, rows), order=4), ref)
    fs = FeatureSet(model="m", layers={"last": x.astype(np.float32), "b0": x}, rows=rows)
    np.testing.assert_array_equal(structure_features(fs, order=4, layer="b0"), ref)
    with pytest.raises(InputError, match="no layer 'b9'"):
        structure_features(fs, order=2, layer="b9")
    with pytest.raises(InputError, match="FeatureStore, a store path, a FeatureSet"):
        structure_features(x, order=2)
    # two models, the second skipped the first frame: rows are intersected
    keep = rows["frame"] != 0
    rows_b = {k: v[keep] for k, v in rows.items()}
    mats, frames = structure_matrices({"a": (x, rows), "b": (2 * x[keep], rows_b)}, order=3)
    np.testing.assert_array_equal(frames, info.frames[1:])
    np.testing.assert_allclose(mats["b"], 2 * mats["a"], rtol=1e-10, atol=1e-12)  # all orders scale by 2
    assert mats["a"].shape == (len(frames), 9)


def test_structure_features_from_store_and_cli_roundtrip(store):
    runner = CliRunner()
    res = runner.invoke(app, ["cumulants", "--store", str(store), "--model", "descriptor-rdf", "--max-order", "4", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary[0]["name"] == stored_name("last") and summary[0]["order"] == 4

    from mlipspace.store import FeatureStore

    fs = FeatureStore(store)
    key = fs.datasets()[0]
    X, rows = fs.features(key, "descriptor-rdf"), fs.rows(key, "descriptor-rdf")
    fresh = cumulants(X, rows["frame"], order=3)
    stored = np.asarray(fs.get_structure(key, "descriptor-rdf", "cumulants-last"))
    assert stored.shape == (40, 4 * X.shape[1])
    # order 3 read back from the stored order-4 array (prefix) equals a fresh computation
    got, info = structure_features(store, "descriptor-rdf", 3, return_info=True)
    np.testing.assert_allclose(got, fresh, rtol=1e-12)
    np.testing.assert_array_equal(info.frames, np.arange(40))
    # options the stored array does not cover are recomputed
    np.testing.assert_allclose(structure_features(store, "descriptor-rdf", 6), cumulants(X, rows["frame"], order=6))
    np.testing.assert_allclose(
        structure_features(store, "descriptor-rdf", 2, root=False), cumulants(X, rows["frame"], order=2, root=False)
    )
    with pytest.raises(StoreError, match="no features of model 'nope'"):
        structure_features(store, "nope", 2)


def test_per_species_cli_uses_the_dataset_elements(store):
    res = CliRunner().invoke(
        app, ["cumulants", "--store", str(store), "--model", "descriptor-rdf", "--max-order", "2", "--per-species", "--json"]
    )
    assert res.exit_code == 0, res.output
    from mlipspace.store import FeatureStore

    fs = FeatureStore(store)
    key = fs.datasets()[0]
    elements = fs.dataset_info(key)["elements"]
    attrs = fs.structure_attrs(key, "descriptor-rdf", "cumulants-last-species")
    assert attrs["elements"] == elements and attrs["order"] == 2
    got, info = structure_features(store, "descriptor-rdf", 2, per_species=True, return_info=True)
    rows = fs.rows(key, "descriptor-rdf")
    ref, ref_info = cumulants(fs.features(key, "descriptor-rdf"), rows["frame"], order=2, per_species=True,
                              species=rows["Z"], elements=elements, return_info=True)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_array_equal(info.presence, ref_info.presence)


def test_cli_reports_a_bad_store_as_one_line(tmp_path):
    from mlipspace.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["cumulants", "--store", str(tmp_path / "none"), "--model", "x"])
    assert exc.value.code == 1


# --- order table -----------------------------------------------------------------------------------


def test_order_table_plumbing_with_a_probe_metric(monkeypatch):
    """Pairs, prefixes, splits and record fields, with a stand-in metric that reports what it got."""
    x, rows, subsets = synthetic(d=2)
    phi = cumulants(x, rows["frame"], order=4)
    seen = []

    def probe(X, Y, train_idx=None, test_idx=None):
        assert len(np.intersect1d(train_idx, test_idx)) == 0
        assert len(train_idx) + len(test_idx) == len(phi)
        small, big = (X, Y) if X.shape[1] < Y.shape[1] else (Y, X)
        np.testing.assert_array_equal(small, phi[:, : small.shape[1]])
        np.testing.assert_array_equal(big, phi[:, : big.shape[1]])
        seen.append(tuple(sorted(np.unique(subsets[test_idx]))))
        return np.full(len(test_idx), Y.shape[1] / X.shape[1])  # RMS = the width ratio

    monkeypatch.setattr(fre_metrics, "pointwise_gfre", probe, raising=False)
    recs = order_table(x, rows["frame"], subsets, max_order=4, seeds=(0, 1), metrics=("gfre",), model="m")
    assert len(recs) == 12  # 4 x 3 ordered pairs
    assert set(seen) == {("a", "b", "c")}  # every split draws test structures from every subset
    for r in recs:
        assert r["value"] == pytest.approx(r["target_order"] / r["source_order"])
        assert r["spread"] == 0.0 and r["seeds"] == [0, 1] and r["n_seeds"] == 2
        assert r["ci_low"] == pytest.approx(r["value"]) == pytest.approx(r["ci_high"])  # constant errors
        assert r["n_train"] + r["n_test"] == 60 and r["n_test"] == 15
        assert r["analysis"] == "cumulant-orders" and r["level"] == "structure" and r["model"] == "m"
    M, orders = order_matrix(recs, "gfre")
    assert orders == [1, 2, 3, 4] and np.isnan(np.diag(M)).all() and M[0, 3] == pytest.approx(4.0)
    # per-atom subset tags give the same table
    recs2 = order_table(x, rows["frame"], rows["subset"], max_order=4, seeds=(0, 1), metrics=("gfre",), model="m")
    assert [r["value"] for r in recs2] == [r["value"] for r in recs]


def test_order_table_reports_interpolating_fits_as_not_enough_data():
    """Without compression order 8 has 24 columns for 45 training structures (the ridge rule asks
    n_train >= 2 x width): those fits are no numbers but reasons; compressed, every order is valid and
    the reverse direction (lower orders are columns of the higher) is ~0."""
    x, rows, subsets = synthetic(d=3, n_frames=60)
    raw = order_table(x, rows["frame"], subsets, max_order=8, seeds=(0,), metrics=("gfre",), compress=False)
    bad = [r for r in raw if r["value"] is None]
    assert {r["source_order"] for r in bad} == {8}
    assert all(r["reason"] == "not enough data (need 48, have 45): training structures for a ridge fit of 24 "
               "source columns (rule: n_train >= 2 x width)" for r in bad)
    ok = order_table(x, rows["frame"], subsets, max_order=8, seeds=(0,), metrics=("gfre",))
    assert all(r["value"] is not None and r["components"] == 2 for r in ok)
    assert max(r["value"] for r in ok if r["source_order"] > r["target_order"]) < 0.05
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in ok)


def test_order_table_rejects_bad_options():
    x, rows, subsets = synthetic()
    with pytest.raises(InputError, match="max_order must be an integer >= 2"):
        order_table(x, rows["frame"], subsets, max_order=1)
    with pytest.raises(InputError, match="unknown metric"):
        order_table(x, rows["frame"], subsets, metrics=("gfrx",))
    with pytest.raises(InputError, match="subsets_per_frame has 7 entries"):
        order_table(x, rows["frame"], subsets[:7])


def test_default_lfre_neighbourhood_stays_local():
    assert default_k(64, 128, 400) == 64
    assert default_k(512, 1024, 450) == 112
    with pytest.raises(InputError, match="at least 8 training rows"):
        default_k(512, 1024, 7)


@needs_fre
def test_order_table_each_order_adds_information_and_reverse_is_zero():
    x, rows, subsets = synthetic(d=3, n_frames=80)
    recs = order_table(x, rows["frame"], subsets, max_order=4, seeds=(0, 1), metrics=("gfre", "lfre"), model="m")
    G, _ = order_matrix(recs, "gfre")
    for j in range(3):
        assert G[j, j + 1] > 0.05, G  # the next order is not linearly predictable from the lower ones
    for j in range(1, 4):
        for k in range(j):
            assert G[j, k] < 1e-3, G  # lower orders are a column subset of the higher ones
    L, _ = order_matrix(recs, "lfre")
    assert np.all(np.isfinite(L[~np.eye(4, dtype=bool)]))
    lrec = [r for r in recs if r["metric"] == "lfre"]
    assert all(2 <= r["k"] <= r["n_train"] // 4 for r in lrec)
    # a neighbourhood larger than a quarter of the training structures is outside LFRE's valid regime
    big = order_table(x, rows["frame"], subsets, max_order=2, seeds=(0,), metrics=("lfre",), k=16)
    assert all(r["value"] is None and "need 64, have 60" in r["reason"] for r in big)


@needs_fre
def test_cumulants_table_cli_writes_records(store, tmp_path):
    out = tmp_path / "orders.json"
    res = CliRunner().invoke(
        app,
        ["cumulants-table", "--store", str(store), "--model", "descriptor-rdf", "--max-order", "3", "--seeds", "2",
         "--metrics", "gfre", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "descriptor-rdf (last): GFRE j → k" in res.output
    recs = json.loads(out.read_text())
    assert len(recs) == 6 and {r["source_order"] for r in recs} == {1, 2, 3}
    assert all(r["n_train"] == 30 and r["n_test"] == 10 for r in recs)
    assert all(r["components"] == 5 for r in recs)  # 3 orders x 5 components <= 30 / 2 training structures
