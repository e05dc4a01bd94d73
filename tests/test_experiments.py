"""The study's analyses on small synthetic and descriptor data: records, directions, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from mlipspace.data import builtin, row_table
from mlipspace.errors import AlignmentError, InputError
from mlipspace.experiments import cross_model as cm
from mlipspace.experiments import finetune, layers, probe, variants
from mlipspace.records import RECORD_KEYS, matrix, mean_off_diagonal, record, select


@pytest.fixture(scope="module")
def frames():
    return builtin("mad-mini", size=60, seed=1)  # >= 10 test structures per split (the regime rule)


@pytest.fixture(scope="module")
def rows(frames):
    return row_table(frames)


def nested_spaces(rows, seed=0):
    """Spaces with a known order of information: ``big`` holds ``small`` exactly (a linear map of
    its columns), ``noise`` is unrelated to both."""
    rng = np.random.default_rng(seed)
    n = len(rows["frame"])
    big = rng.normal(size=(n, 10))
    small = big[:, :3] @ rng.normal(size=(3, 6))
    noise = rng.normal(size=(n, 8))
    return {"big": big, "small": small, "noise": noise}


def test_cross_model_records_directions_and_spread(rows):
    feats = nested_spaces(rows)
    recs = cm.cross_model(feats, rows, metrics=("gfre", "lfre"), seeds=(0, 1, 2), dataset="toy")
    assert len(recs) == 3 * 2 * 2  # ordered pairs x metrics
    for r in recs:
        assert tuple(r)[: len(RECORD_KEYS)] == RECORD_KEYS
        assert r["n_seeds"] == 3 and r["spread"] >= 0 and r["dataset"] == "toy"
        assert r["n_train"] > r["n_test"] > 0
    g = {(r["source"], r["target"]): r["value"] for r in select(recs, metric="gfre")}
    assert g[("big", "small")] < 1e-3  # small is a linear function of big
    assert g[("small", "big")] > 0.5  # but not the reverse
    assert g[("noise", "big")] > 0.9 and g[("big", "noise")] > 0.9
    lf = {(r["source"], r["target"]): r for r in select(recs, metric="lfre")}
    assert lf[("big", "small")]["k"] == 6  # the study's k = min(d_X, d_Y)
    assert lf[("big", "small")]["value"] < lf[("noise", "small")]["value"]


def test_cross_model_structure_level_uses_cumulants(rows):
    feats = nested_spaces(rows)
    recs = cm.cross_model(feats, rows, metrics=("gfre",), level="structure", order=2, seeds=(0, 1))
    n_frames = len(np.unique(rows["frame"]))
    assert all(r["level"] == "structure" and r["order"] == 2 for r in recs)
    assert recs[0]["n_train"] + recs[0]["n_test"] == n_frames


def test_matrix_and_mean_off_diagonal():
    recs = [record("cross-model", a, b, "gfre", [v], ci=(v - 0.1, v + 0.1)) for a, b, v in
            (("A", "B", 0.2), ("B", "A", 0.4), ("A", "C", 0.6), ("C", "A", 0.8), ("B", "C", 1.0), ("C", "B", 0.0))]
    names, M, S = matrix(recs, "gfre")
    assert names == ["A", "B", "C"]
    assert np.isnan(M[0, 0]) and M[0, 1] == 0.2 and M[1, 0] == 0.4
    assert mean_off_diagonal(recs, "gfre") == pytest.approx(0.5)
    fam = {"A": "x", "B": "x", "C": "y"}
    assert mean_off_diagonal(recs, "gfre", families=fam, across_families=True) == pytest.approx(0.6)


def test_cross_model_checks_rows(rows):
    feats = nested_spaces(rows)
    shifted = {k: np.asarray(v) for k, v in rows.items()}
    shifted["Z"] = shifted["Z"].copy()
    shifted["Z"][5] += 1
    with pytest.raises(AlignmentError, match="row 5"):
        cm.cross_model(feats, rows, row_tables={"big": shifted}, metrics=("gfre",), seeds=(0,))
    with pytest.raises(InputError, match="shape"):
        cm.cross_model({"a": feats["big"][:-1], "b": feats["small"]}, rows, metrics=("gfre",))
    bad = feats["big"].copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        cm.cross_model({"a": bad, "b": feats["small"]}, rows, metrics=("gfre",))
    with pytest.raises(InputError, match="at least 2 models"):
        cm.cross_model({"a": bad}, rows)
    with pytest.raises(InputError, match="unknown metric"):
        cm.cross_model(feats, rows, metrics=("cca",), seeds=(0,))


def test_variants_only_available_pairs_both_directions(rows):
    sp = nested_spaces(rows)
    feats = {"chgnet-0.2.0": sp["big"], "chgnet-0.3.0": sp["small"], "diep-r2scan": sp["noise"]}
    recs = variants.variants(feats, rows, metrics=("gfre",), seeds=(0,))
    assert {(r["source"], r["target"]) for r in recs} == {("chgnet-0.2.0", "chgnet-0.3.0"), ("chgnet-0.3.0", "chgnet-0.2.0")}
    assert all(r["group"] == "CHGNet: 0.2.0 vs 0.3.0" and r["analysis"] == "variants" for r in recs)
    assert variants.group_means(recs)["CHGNet: 0.2.0 vs 0.3.0"] == pytest.approx(np.mean([r["value"] for r in recs]))
    assert variants.variants({"diep-r2scan": sp["noise"], "chgnet-0.2.0": sp["big"]}, rows) == []


def test_finetune_bundled_relations(rows):
    sp = nested_spaces(rows)
    feats = {"chgnet-r2scan": sp["big"], "chgnet-0.3.0": sp["big"] + 0.01 * sp["noise"][:, :1],
             "chgnet-0.2.0": sp["small"], "diep-r2scan": sp["noise"]}
    recs = finetune.finetune_bundled(feats, rows, metrics=("gfre",), seeds=(0, 1))
    assert len(recs) == 6
    summary = finetune.finetune_summary(recs)
    assert summary["parent (pre-trained)"] < 0.05
    assert summary["parent (pre-trained)"] < summary["trained from scratch on r2SCAN data"]
    assert finetune.finetune_bundled({"chgnet-0.3.0": sp["big"]}, rows) == []


def test_layer_pairs_and_cross_model_layers(rows):
    sp = nested_spaces(rows)
    lay = {"interaction.0": sp["noise"], "interaction.1": sp["big"], "last": sp["small"]}
    recs = layers.layer_pairs(lay, rows, model="m", seeds=(0,), fingerprints={"m": {"sha": "x"}})
    assert len(recs) == 6
    r = select(recs, source_layer="interaction.1", target_layer="last")[0]
    assert r["value"] < 1e-3 and r["source"] == r["target"] == "m" and r["source_fingerprint"]
    assert r["source_depth"] == 0.5 and r["target_depth"] == 1.0
    cross = layers.cross_model_layers({"m": lay, "other": {"last": sp["big"]}}, rows, seeds=(0,))
    assert {(c["source"], c["layer"]) for c in cross} == {("m", "interaction.0"), ("m", "interaction.1"),
                                                          ("m", "last"), ("other", "last")}
    with pytest.raises(InputError, match="no 'last' layer"):
        layers.cross_model_layers({"m": lay, "o": {"x": sp["big"]}}, rows)


def test_probe_recovers_energy_encoded_in_features():
    rng = np.random.default_rng(3)
    sizes = rng.integers(3, 12, size=60)  # 5 folds of 12 structures (the regime rule asks >= 10)
    rows = {"frame": np.repeat(np.arange(60), sizes), "Z": rng.choice([1, 8, 14], size=sizes.sum()),
            "atom": np.concatenate([np.arange(s) for s in sizes]), "subset": np.full(sizes.sum(), "")}
    n = len(rows["frame"])
    X = rng.normal(size=(n, 5))
    counts, elements = probe.composition(rows)
    # total energy = composition part + a linear function of the summed atom features
    E = counts @ np.array([-3.0, -5.0, -4.0]) + probe.summed_features(X, rows) @ rng.normal(size=5)
    recs = probe.probe({"informative": X, "noise": rng.normal(size=(n, 5))}, rows, E, level="atom", seeds=(0, 1))
    by = {r["source"]: r["value"] for r in recs}
    assert set(by) == {"composition", "informative", "noise"}
    assert by["informative"] < 0.05 * by["composition"]
    assert by["noise"] > 0.5 * by["composition"]
    assert all(r["metric"] == "rmse_mev_per_atom" and r["n_seeds"] == 2 for r in recs)
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in recs)
    srecs = probe.probe({"informative": X}, rows, E, level="structure", order=2, seeds=(0,))
    assert srecs[1]["order"] == 2 and srecs[1]["level"] == "structure"
    # 40 structures in 5 folds: 8 test structures per fold, outside the valid regime -> no number
    few = rows["frame"] < 40
    small = probe.probe({"informative": X[few]}, {k: v[few] for k, v in rows.items()}, E[:40], seeds=(0,))
    assert all(r["value"] is None and r["reason"].startswith("not enough data (need 10, have 8)") for r in small)
    with pytest.raises(InputError, match="energies for"):
        probe.probe({"x": X}, rows, E[:-1])


def test_energies_none_without_labels(frames):
    assert probe.energies(frames) is None  # builtin mad-mini has no DFT labels


def test_maps_pca_and_pcovr_shapes_and_determinism(rows):
    sp = nested_spaces(rows)
    n_frames = len(np.unique(rows["frame"]))
    E = np.arange(n_frames, dtype=float) * len(np.unique(rows["Z"]))
    m1 = probe.maps({"a": sp["big"]}, rows, energy=None)
    assert np.asarray(m1["a"]["pca"]).shape == (n_frames, 2) and "pcovr" not in m1["a"]
    m2 = probe.maps({"a": sp["big"]}, rows, energy=E + np.random.default_rng(0).normal(size=n_frames))
    assert np.asarray(m2["a"]["pcovr"]).shape == (n_frames, 2)
    assert m1["a"]["pca"] == probe.maps({"a": sp["big"]}, rows)["a"]["pca"]


def test_sorted_checkpoints_use_trajectory_order(tmp_path):
    for name in ("epoch10_e1.pth.tar", "epoch2_e3.pth.tar", "epoch000.pth.tar", "bestE_epoch2_e3.pth.tar"):
        (tmp_path / name).write_text("x")
    got = [p.name for p in finetune.sorted_checkpoints(str(tmp_path / "*.pth.tar"))]
    assert got == ["epoch000.pth.tar", "epoch2_e3.pth.tar", "epoch10_e1.pth.tar"]  # best-so-far left out
    (tmp_path / "epoch_02.pth.tar").write_text("x")
    with pytest.raises(InputError, match="two checkpoints for epoch 2"):
        finetune.sorted_checkpoints(str(tmp_path / "*.pth.tar"))
    with pytest.raises(InputError, match="no checkpoint files"):
        finetune.sorted_checkpoints(str(tmp_path / "nothing*"))
    with pytest.raises(InputError, match="cannot tell the epoch"):
        finetune.checkpoint_epoch("model.pth.tar")


def test_finetune_needs_labels(frames):
    with pytest.raises(Exception, match="no DFT energy label"):
        finetune.labels(frames[:3])


def test_outlier_frames_flag_structures_far_outside(rows):
    from mlipspace.experiments._common import drop_frames, outlier_frames

    sp = nested_spaces(rows)
    assert outlier_frames(sp, rows) == {}
    X = sp["big"].copy()
    i = int(np.flatnonzero(rows["frame"] == 7)[0])
    X[i] *= 1000.0  # one atom of frame 7 blows up, as unphysical neighbours do in some models
    flagged = outlier_frames({"ok": sp["small"], "bad": X}, rows)
    assert list(flagged) == [7] and flagged[7].startswith("bad:")
    keep = drop_frames(rows, flagged)
    assert not np.any(rows["frame"][keep] == 7) and keep.sum() == len(keep) - np.sum(rows["frame"] == 7)


def test_relabel_reuses_cross_model_numbers(rows):
    sp = nested_spaces(rows)
    feats = {"chgnet-0.2.0": sp["big"], "chgnet-0.3.0": sp["small"], "diep-r2scan": sp["noise"]}
    full = cm.cross_model(feats, rows, metrics=("gfre",), seeds=(0, 1))
    extra = {("chgnet-0.2.0", "chgnet-0.3.0"): {"group": "CHGNet: 0.2.0 vs 0.3.0"},
             ("chgnet-0.3.0", "chgnet-0.2.0"): {"group": "CHGNet: 0.2.0 vs 0.3.0"}}
    reused = cm.relabel(full, extra, "variants")
    direct = variants.variants(feats, rows, metrics=("gfre",), seeds=(0, 1))
    key = lambda r: (r["source"], r["target"])  # noqa: E731
    assert sorted(reused, key=key) == sorted(direct, key=key)
    assert cm.relabel(full, {("x", "y"): {}}, "variants") is None


def test_ungrouped_split_is_the_study_protocol(rows):
    from mlipspace.experiments._common import atom_splits

    (tr, te), = atom_splits(rows, [0], 60, grouped=False)
    shared = set(rows["frame"][tr]) & set(rows["frame"][te])
    assert shared  # structure-mates of test atoms train: the leakage the grouped split avoids
    (tr, te), = atom_splits(rows, [0], 60)
    assert not set(rows["frame"][tr]) & set(rows["frame"][te])
    recs = cm.cross_model(nested_spaces(rows), rows, metrics=("gfre",), level="atom-ungrouped", seeds=(0,))
    assert {r["level"] for r in recs} == {"atom-ungrouped"}
