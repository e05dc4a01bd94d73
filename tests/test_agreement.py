"""Does feature similarity predict behaviour? Energy disagreement vs feature distance across model pairs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mlipspace.data import builtin, row_table
from mlipspace.errors import InputError
from mlipspace.experiments import agreement as ag
from mlipspace.experiments.probe import composition
from mlipspace.records import record, select


@pytest.fixture(scope="module")
def rows():
    return row_table(builtin("mad-mini", size=40, seed=2))


def line_models(rows, n_models=7, seed=0):
    """Models at positions p on a line: energy per atom = composition part + p * (a structure's own
    term), so the energy disagreement of a pair grows with |p_a - p_b|. Returns (energies, positions)."""
    rng = np.random.default_rng(seed)
    counts, _ = composition(rows)
    n_atoms = counts.sum(axis=1)
    mu = rng.normal(-5, 2, size=counts.shape[1])
    z = rng.normal(size=len(n_atoms)) * 0.02  # eV/atom
    pos = rng.uniform(0, n_models, size=n_models)  # distinct distances: no ties
    energies = {f"m{i}": counts @ mu + n_atoms * (0.3 * i + pos[i] * z) for i in range(n_models)}
    return energies, dict(zip(energies, pos))


def gfre_records(values):
    """Cross-model GFRE records (both directions) from ``{(a, b): value}``."""
    out = []
    for (a, b), v in values.items():
        for s, t in ((a, b), (b, a)):
            out.append(record("cross-model", s, t, "gfre", [v], ci=(v - 0.01, v + 0.01)))
    return out


def test_disagreement_that_grows_with_gfre_gives_a_positive_significant_rho(rows):
    energies, pos = line_models(rows)
    feats = gfre_records({(a, b): 0.1 + 0.05 * abs(pos[a] - pos[b]) for a, b in itertools.combinations(pos, 2)})
    recs = ag.agreement(energies, rows, feats, metrics=("gfre",), dataset="toy")
    (c,) = select(recs, analysis="agreement-correlation")
    assert c["value"] > 0.9 and c["p_value"] < 0.01
    assert c["ci_low"] <= c["value"] <= c["ci_high"] and c["ci_low"] > 0.5
    assert c["n_permutations"] == 1000 and c["n_pairs"] == 21 and len(c["points"]) == 21
    dis = select(recs, analysis="agreement")
    assert len(dis) == 21 and all(r["metric"] == "energy_rms_mev_per_atom" for r in dis)
    # a model's own reference energy (a constant per atom) is removed before comparing
    counts, _ = composition(rows)
    shifted = {"x": energies["m0"], "y": energies["m0"] + 1.7 * counts.sum(axis=1)}
    (same,) = ag.energy_disagreement(ag.residual_differences(shifted, rows))
    assert same["value"] < 1e-6


def test_unrelated_feature_distances_give_no_small_p(rows):
    energies, pos = line_models(rows)
    rng = np.random.default_rng(5)
    feats = gfre_records({p: float(rng.uniform(0.1, 0.9)) for p in itertools.combinations(pos, 2)})
    (c,) = select(ag.agreement(energies, rows, feats, metrics=("gfre",)), analysis="agreement-correlation")
    assert c["p_value"] > 0.05 and abs(c["value"]) < 0.5
    # the interval is conditional on these models (structures and feature values resampled, not the
    # models): it may exclude 0 while the relabelling test, which asks about the models, does not
    assert c["ci_low"] <= c["value"] <= c["ci_high"]


def test_few_models_give_a_reason_and_exact_permutations(rows):
    energies, pos = line_models(rows, n_models=4)
    feats = gfre_records({(a, b): 0.1 + 0.05 * abs(pos[a] - pos[b]) for a, b in itertools.combinations(pos, 2)})
    (c,) = select(ag.agreement(energies, rows, feats, metrics=("gfre",)), analysis="agreement-correlation")
    assert c["n_permutations"] == 24 and c["exact"] is True  # 4! < 1000: every relabelling once
    three = {k: energies[k] for k in list(energies)[:3]}
    (c,) = select(ag.agreement(three, rows, feats, metrics=("gfre",)), analysis="agreement-correlation")
    assert c["value"] is None and "need 4, have 3" in c["reason"]
    missing = [r for r in feats if {r["source"], r["target"]} != set(list(energies)[:2])]
    (c,) = select(ag.agreement(energies, rows, missing, metrics=("gfre",)), analysis="agreement-correlation")
    assert c["value"] is None and "no gfre record" in c["reason"]


def test_bad_energies_are_clear_errors(rows):
    energies, _ = line_models(rows, n_models=4)
    with pytest.raises(InputError, match="energies for"):
        ag.agreement({"a": energies["m0"][:-1], "b": energies["m1"]}, rows, [])
    with pytest.raises(InputError, match="at least 2 models"):
        ag.agreement({"a": energies["m0"]}, rows, [])


def test_a_model_that_cannot_be_loaded_is_left_out_with_a_note(rows):
    notes = []
    out = ag.readout_energies({"no-such-model": np.zeros((len(rows["frame"]), 2))}, rows, notes=notes)
    assert out == {} and "no-such-model left out" in notes[0]


@pytest.mark.models
def test_readout_energies_of_sevennet_equal_its_own(one_torch_thread):
    pytest.importorskip("sevenn")
    from mlipspace.models import registry
    from modelkit import mad_frames

    s0 = registry.load("sevennet-0", device="cpu")
    frames = mad_frames([1, 6, 46])
    fs = s0.extract(frames, layers="last", batch_size=8)
    E = ag.structure_energies(s0, fs.layers["last"], fs.rows)
    calc = s0.calculator()
    for e, atoms in zip(E, frames):
        work = atoms.copy()
        work.calc = calc
        assert abs(e - work.get_potential_energy()) <= 1e-5 * abs(e)
    # one species: the readout's data comes from two isolated atoms of it, and each row keeps its own energy
    si = np.asarray(fs.rows["Z"]) == np.asarray(fs.rows["Z"])[0]
    alone = s0.readout(fs.layers["last"][si], np.asarray(fs.rows["Z"])[si])
    np.testing.assert_allclose(alone, s0.readout(fs.layers["last"], fs.rows["Z"])[si], rtol=1e-6)


def test_report_section_states_the_correlation_and_its_uncertainty(tmp_path, rows):
    from mlipspace.report.html import build_report

    energies, pos = line_models(rows, n_models=5)
    feats = gfre_records({(a, b): 0.1 + 0.05 * abs(pos[a] - pos[b]) for a, b in itertools.combinations(pos, 2)})
    recs = ag.agreement(energies, rows, feats, metrics=("gfre", "cka"))
    html = build_report({"records": recs, "meta": {}}, tmp_path).read_text()
    assert '<details class="sec" id="agreement">' in html and 'href="#agreement"' in html
    assert "Spearman ρ = " in html and "exact test over all 120 relabellings" in html
    assert "no cka record" in html  # the metric without records says why it has no number
    assert (tmp_path / "figures" / "agreement_scatter.png").is_file()


def test_cli_agreement_without_two_readout_models_says_so(tmp_path):
    """The descriptor baseline has no readout: the command names it and refuses with a clear error."""
    from typer.testing import CliRunner

    from mlipspace.cli import app

    runner = CliRunner()
    store = tmp_path / "s.zarr"
    r = runner.invoke(app, ["extract", "builtin:mad-mini?size=12", "--model", "descriptor-rdf", "--store", str(store),
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    bad = runner.invoke(app, ["agreement", "--store", str(store)])
    assert bad.exit_code != 0 and "fewer than 2 stored models can run their readout" in str(bad.exception)
    assert "descriptor-rdf left out (its adapter has no readout)" in bad.output
