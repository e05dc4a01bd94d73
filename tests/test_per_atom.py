"""Per-atom errors: grouping by element/subset/coordination, coordination numbers, the regime rule, npz."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule

from mlipspace.data.rows import row_table
from mlipspace.experiments.per_atom import (
    NPZ_KEYS,
    GroupErrors,
    coordination_numbers,
    group_replicates,
    per_atom,
    write_per_atom,
)
from mlipspace.intervals import MIN_TEST_GROUPS, replicates


def by_group(recs, field):
    return {r[field]: r for r in recs if r.get(field) is not None}


def test_per_element_rms_matches_a_hand_count():
    # 12 structures, each one Cu and two O atoms; Cu errors 1..12, O errors all 2 (pair a->b), 4 (b->a)
    n = 12
    groups = np.repeat(np.arange(n), 3)
    elem = np.tile(np.array(["Cu", "O", "O"], dtype=object), n)
    cu = np.arange(1.0, n + 1)
    e_ab = np.column_stack([cu, np.full(n, 2.0), np.full(n, 2.0)]).ravel()
    e_ba = np.where(elem == "Cu", 0.5, 4.0)
    acc = GroupErrors([("a", "b"), ("b", "a")])
    acc.add(np.stack([e_ab, e_ba]), {"element": elem}, groups, seed=0, n_train=50)
    recs = acc.records()
    ab = by_group([r for r in recs if r["source"] == "a"], "element")
    ba = by_group([r for r in recs if r["source"] == "b"], "element")
    assert ab["Cu"]["value"] == pytest.approx(np.sqrt(np.mean(cu ** 2)))  # sqrt(650 / 12)
    assert ab["O"]["value"] == pytest.approx(2.0) and ba["O"]["value"] == pytest.approx(4.0)
    assert ba["Cu"]["value"] == pytest.approx(0.5)
    assert ab["Cu"]["n_test"] == 12 and ab["O"]["n_test"] == 24 and ab["Cu"]["n_train"] == 50
    assert ab["Cu"]["analysis"] == "per-atom" and ab["Cu"]["metric"] == "gfre"
    assert ab["Cu"]["ci_low"] < ab["Cu"]["value"] < ab["Cu"]["ci_high"]
    assert ab["O"]["ci_low"] == pytest.approx(2.0) and ab["O"]["ci_high"] == pytest.approx(2.0)


def test_grouped_replicates_are_the_single_pair_bootstrap_for_every_pair():
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 15, size=80)
    E = rng.random((3, 80))
    values, reps = group_replicates(E, groups, seed=4)
    for i in range(3):
        assert values[i] == pytest.approx(np.sqrt(np.mean(E[i] ** 2)))
        np.testing.assert_allclose(reps[i], replicates(E[i], groups, 4, kind="rms"))


def test_coordination_numbers_of_known_crystals_and_a_molecule():
    assert set(coordination_numbers(bulk("Cu", "fcc", a=3.61))) == {12}
    assert set(coordination_numbers(bulk("Si", "diamond", a=5.43).repeat((2, 2, 2)))) == {4}
    # bcc's second shell (a = 2.87 Å) lies within 1.2 x (2 x 1.32 Å): the criterion counts 8 + 6
    assert set(coordination_numbers(bulk("Fe", "bcc", a=2.87))) == {14}
    water = molecule("H2O")  # no cell, no periodicity
    assert list(coordination_numbers(water)) == [2, 1, 1]


def test_rare_element_gets_no_value_but_the_reason():
    n = 12
    groups = np.arange(n).repeat(2)
    elem = np.array(["Si", "Si"] * n, dtype=object)
    elem[[1, 3, 5]] = "Au"  # Au in 3 test structures only
    acc = GroupErrors([("a", "b")])
    acc.add(np.ones((1, 2 * n)), {"element": elem}, groups, seed=0)
    recs = by_group(acc.records(), "element")
    assert recs["Au"]["value"] is None and recs["Au"]["ci_low"] is None
    assert recs["Au"]["reason"] == (f"not enough data (need {MIN_TEST_GROUPS}, have 3): test structures holding "
                                    "this group, over all splits")
    assert recs["Si"]["value"] == pytest.approx(1.0)
    # the splits of several seeds pool their test structures: Au in 3 + 3 + 4 distinct ones is enough
    for seed, shift in ((1, 12), (2, 24)):
        more = elem.copy()
        if seed == 2:
            more[7] = "Au"
        acc.add(np.ones((1, 2 * n)), {"element": more}, groups + shift, seed=seed)
    recs = by_group(acc.records(), "element")
    assert recs["Au"]["value"] == pytest.approx(1.0) and recs["Au"]["ci_low"] <= 1.0 <= recs["Au"]["ci_high"]


def test_pair_outside_its_regime_keeps_its_reason_for_every_group():
    groups = np.arange(12)
    acc = GroupErrors([("a", "b"), ("b", "a")])
    E = np.ones((2, 12))
    E[1] = np.nan
    acc.add(E, {"element": np.array(["C"] * 12, dtype=object)}, groups, seed=0,
            pair_reasons={("b", "a"): "too wide"})
    recs = acc.records()
    assert [r["value"] for r in recs] == [pytest.approx(1.0), None]
    assert recs[1]["reason"] == "too wide"


def crystals(n: int = 48):
    """Rattled fcc Cu (4 atoms), diamond Si (2 atoms) and water molecules, tagged with subsets."""
    out = []
    for i in range(n):
        kind = i % 3
        a = (bulk("Cu", "fcc", a=3.61, cubic=True), bulk("Si", "diamond", a=5.43), molecule("H2O"))[kind]
        a.rattle(0.02, seed=i)
        a.info["subset"] = ("metal", "covalent", "molecule")[kind]
        out.append(a)
    return out


def spaces(rows, seed=0):
    rng = np.random.default_rng(seed)
    base = np.column_stack([rows["Z"] / 29.0, rng.normal(size=(len(rows["Z"]), 4))])
    return {f"m{k}": np.tanh(base @ rng.normal(size=(5, 6))) + 0.05 * rng.normal(size=(len(base), 6))
            for k in range(3)}


def test_per_atom_end_to_end_and_npz_round_trip(tmp_path):
    frames = crystals(96)  # >= 10 test structures of each kind
    rows = row_table(frames)
    res = per_atom(spaces(rows), rows, frames, n_test=len(rows["Z"]) // 2, dataset="toy")
    assert res["errors"].shape == (6, len(res["frame"])) and res["errors"].dtype == np.float32
    test_cn = dict(zip(res["Z"].tolist(), res["coordination"].tolist()))
    assert test_cn[29] == 12 and test_cn[14] == 4 and test_cn[8] == 2
    recs = res["records"]
    assert {r["source"] for r in recs} == {"m0", "m1", "m2"} and all(r["dataset"] == "toy" for r in recs)
    fields = {f for r in recs for f in ("element", "subset", "coordination") if r.get(f) is not None}
    assert fields == {"element", "subset", "coordination"}
    one = by_group([r for r in recs if (r["source"], r["target"]) == ("m0", "m1")], "element")
    i = [tuple(p) for p in res["pairs"].tolist()].index(("m0", "m1"))
    cu = res["errors"][i][res["Z"] == 29]
    assert one["Cu"]["value"] == pytest.approx(np.sqrt(np.mean(cu.astype(float) ** 2)), rel=1e-5)
    # model_error: mean over the sources of the error into that model
    j = res["models"].tolist().index("m2")
    into = [k for k, p in enumerate(res["pairs"].tolist()) if p[1] == "m2"]
    np.testing.assert_allclose(res["model_error"][j], res["errors"][into].mean(axis=0), rtol=1e-6)
    path = write_per_atom(tmp_path / "per_atom.npz", res)
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == set(NPZ_KEYS)
        for k in NPZ_KEYS:
            np.testing.assert_array_equal(z[k], np.asarray(res[k]))
    # the JSON copy (the study's cache) writes the same file
    from mlipspace.experiments.per_atom import as_json
    import json

    again = write_per_atom(tmp_path / "again.npz", json.loads(json.dumps(as_json(res))))
    with np.load(path) as a, np.load(again) as b:
        for k in NPZ_KEYS:
            np.testing.assert_array_equal(a[k], b[k])


def test_per_atom_regroups_the_cross_model_errors_without_refitting(monkeypatch):
    """The study passes the cross-model step's pointwise errors on: same records, no second fit."""
    import json

    from mlipspace.experiments.cross_model import cross_model
    from mlipspace.metrics import _pairwise

    frames = crystals(48)
    rows = row_table(frames)
    feats = spaces(rows)
    kw = dict(seeds=[0, 1], n_test=len(rows["Z"]) // 2)
    fresh = per_atom(feats, rows, frames, dataset="toy", **kw)
    kept: dict = {}
    cross_model(feats, rows, metrics=("gfre", "lfre"), pointwise=kept, **kw)
    assert sorted(kept) == [("gfre", 0), ("gfre", 1), ("lfre", 0), ("lfre", 1)]

    def refit(*a, **k):
        raise AssertionError("per_atom refitted errors it was given")

    monkeypatch.setattr("mlipspace.metrics.pairwise", refit)
    reused = per_atom(feats, rows, frames, dataset="toy", errors=kept, **kw)
    assert json.dumps(as_json_of(reused)) == json.dumps(as_json_of(fresh))
    # errors of another split are not used: it fits them itself
    monkeypatch.setattr("mlipspace.metrics.pairwise", _pairwise.pairwise)
    other = {("gfre", 0): kept[("gfre", 1)], ("gfre", 1): kept[("gfre", 0)]}
    assert json.dumps(as_json_of(per_atom(feats, rows, frames, dataset="toy", errors=other, **kw))) \
        == json.dumps(as_json_of(fresh))


def as_json_of(res):
    from mlipspace.experiments.per_atom import as_json

    return as_json(res)


def test_per_atom_rejects_unknown_models_and_local_metrics():
    from mlipspace.errors import InputError

    frames = crystals(12)
    rows = row_table(frames)
    feats = spaces(rows)
    with pytest.raises(InputError, match="pairs of the given models"):
        per_atom(feats, rows, frames, pairs=[("m0", "nope")])
    with pytest.raises(InputError, match="global metric"):
        per_atom(feats, rows, frames, metric="lfre")
    with pytest.raises(InputError, match="no structure for frame"):
        per_atom(feats, rows, frames[:3])


# --- report ----------------------------------------------------------------------------------------


def report_with_per_atom(tmp_path):
    """The synthetic report's results plus per-atom records and a per_atom.npz over its 12 molecules."""
    pytest.importorskip("chemiscope")
    from test_report import FAMILIES, synthetic_results
    from test_report_explore import frames as molecules

    from mlipspace.report import write_report, write_results
    from ase.data import chemical_symbols

    mols = molecules(12)
    rows = row_table(mols)
    test = np.flatnonzero(rows["frame"] >= 2)  # frames 0 and 1 train: their atoms get NaN
    models = list(FAMILIES)[:3]
    pairs = [(a, b) for a in models for b in models if a != b]
    rng = np.random.default_rng(0)
    E = rng.random((len(pairs), len(test))) * np.where(rows["Z"][test] == 1, 0.2, 1.0)
    coord = np.concatenate([coordination_numbers(m) for m in mols])[test]
    acc = GroupErrors(pairs)
    labels = {"element": np.asarray(chemical_symbols, dtype=object)[rows["Z"][test]],
              "subset": rows["subset"][test], "coordination": coord}
    acc.add(E, labels, rows["frame"][test], seed=0, n_train=10)
    from mlipspace.experiments.per_atom import _raw

    raw = _raw(rows, test, coord, E, pairs, models, 0, "gfre")
    res = synthetic_results()
    res = res | {"records": res["records"] + acc.records(), "meta": res["meta"] | {
        "chemiscope": "chemiscope.json.gz", "structures": "structures.xyz"}}
    out = tmp_path / "out"
    write_per_atom(out / "per_atom.npz", raw)
    from mlipspace.data import write as write_frames

    write_frames(mols, out / "structures.xyz")
    write_report(write_results(out / "results.json", res), frames=mols)
    return out, raw


def test_report_shows_per_atom_sections_pictures_and_chemiscope_properties(tmp_path):
    from test_report_explore import embedded

    out, raw = report_with_per_atom(tmp_path)
    text = (out / "index.html").read_text()
    for anchor in ("per-atom", "hardest"):
        assert f'<details class="sec" id="{anchor}">' in text and f'href="#{anchor}"' in text
    assert "per_atom_elements.png" in text and (out / "figures" / "per_atom_elements.png").is_file()
    pics = sorted((out / "figures").glob("hardest_*.png"))
    assert len(pics) == 10 and all(p.stat().st_size > 1000 for p in pics)
    assert 'src="figures/hardest_01.png"' in text
    assert "Which atoms carry each pair" in text and "H " in text and "O " in text
    props = embedded(out / "explore.html")["properties"]
    key = "chgnet-0.3.0: per-atom GFRE (mean over sources)"
    assert props[key]["target"] == "atom" and len(props[key]["values"]) == 48
    first = props[key]["values"]
    assert first[:8] == ["***NaN***"] * 8  # the two training molecules (5 + 3 atoms) are not test atoms
    assert first[8] == pytest.approx(float(raw["model_error"][0][0]), rel=1e-6)
    assert props["element"]["values"][:5] == ["C", "H", "H", "H", "H"]
    assert props["atom subset"]["values"][5] == "water"


def test_explore_with_per_atom_nan_properties_renders_in_chromium(tmp_path):
    from test_report import CHROMIUM

    if CHROMIUM is None:
        pytest.skip("chromium not installed")
    import json
    import re

    from test_report_explore import PROBE, chromium

    out, _ = report_with_per_atom(tmp_path)
    text = (out / "explore.html").read_text()
    probe = out / "probe.html"
    (tmp_path / "probe.js").write_text(PROBE)
    probe.write_text(text.replace("<head>", f'<head><script src="{(tmp_path / "probe.js").as_uri()}"></script>', 1))
    dom = chromium(probe.as_uri(), tmp_path, "--dump-dom").stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    result = json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
                        .replace("&quot;", '"'))
    assert result["loaded"] == "yes" and result["errors"] == [], result


def test_report_without_per_atom_records_has_no_per_atom_section(tmp_path):
    from test_report import synthetic_results

    from mlipspace.report import write_report, write_results

    text = write_report(write_results(tmp_path / "results.json", synthetic_results())).read_text()
    assert 'id="per-atom"' not in text and 'id="hardest"' not in text
