"""CHGNet adapter: the ``last`` layer is the energy readout's input, rows are right, batching is exact."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("chgnet")

from ase import Atoms  # noqa: E402
from ase.build import molecule  # noqa: E402

from mlipspace.errors import InputError, UnsupportedElementsError  # noqa: E402
from mlipspace.models import registry  # noqa: E402
from mlipspace.models._torch_utils import with_vacuum  # noqa: E402

from modelkit import synthetic_frames as _synthetic, mad_frames as _mad, frame_slices as _frame_slices, rel as _rel  # noqa: E402
from modelkit import check_alone_equals_batched, check_two_runs_bit_identical  # noqa: E402

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def chgnet():
    return registry.load("chgnet-0.3.0", device="cpu")


def test_layers_dims_elements_match_static_description(chgnet):
    from mlipspace.models.chgnet import describe

    assert chgnet.layers == ("interaction.0", "interaction.1", "interaction.2", "interaction.3", "last")
    assert chgnet.dims == {layer: 64 for layer in chgnet.layers}
    assert chgnet.elements == frozenset(range(1, 95))
    meta = describe(registry.get_spec("chgnet-0.3.0"))
    assert (meta["layers"], meta["dims"], meta["elements"]) == (chgnet.layers, chgnet.dims, chgnet.elements)
    fp = chgnet.fingerprint
    assert fp["model"] == "chgnet-0.3.0" and fp["package"] == "chgnet" and fp["package_version"]
    assert len(fp["checkpoint_sha256"]) == 64


@pytest.mark.parametrize("source", ["synthetic", "mad"])
def test_last_through_readout_reproduces_site_energies(chgnet, source):
    """readout(last) == CHGNet's own per-atom energies (predict_structure, return_site_energies)."""
    from mlipspace.models.chgnet import _structure

    frames = _synthetic() if source == "synthetic" else _mad([1, 6, 46, 52])  # 2D, cluster, slab, molecule
    fs = chgnet.extract(frames, layers="last", batch_size=3)
    preds = chgnet.model.predict_structure([_structure(a, chgnet.cutoff) for a in frames], task="e",
                                           return_site_energies=True)
    for atoms, sl, pred in zip(frames, _frame_slices(frames), preds):
        per_atom = chgnet.readout(fs.layers["last"][sl], fs.rows["Z"][sl])
        assert _rel(per_atom, pred["site_energies"]) <= 1e-5
        e_total = float(pred["e"]) * len(atoms)  # CHGNet predicts eV/atom
        assert abs(per_atom.sum() + chgnet.energy_offset - e_total) <= 1e-5 * abs(e_total)


def test_last_through_readout_reproduces_calculator_energy(chgnet):
    calc = chgnet.calculator()
    frames = _synthetic()[2:]  # a molecule (boxed like the adapter does) and a crystal
    fs = chgnet.extract(frames, layers="last")
    for atoms, sl in zip(frames, _frame_slices(frames)):
        boxed = with_vacuum(atoms, chgnet.cutoff)
        boxed.calc = calc
        e_ref = boxed.get_potential_energy()
        e = chgnet.readout(fs.layers["last"][sl], fs.rows["Z"][sl]).sum() + chgnet.energy_offset
        assert abs(e - e_ref) <= 1e-5 * abs(e_ref)


def test_last_is_not_predict_structure_atom_fea(chgnet):
    """The documented trap: ``return_atom_feas`` gives interaction.2, not the readout input."""
    from mlipspace.models.chgnet import _structure

    atoms = _synthetic()[0]
    fs = chgnet.extract([atoms], layers="all")
    pred = chgnet.model.predict_structure(_structure(atoms, 6.0), task="e", return_atom_feas=True)
    np.testing.assert_allclose(fs.layers["interaction.2"], pred["atom_fea"], rtol=1e-5, atol=1e-6)
    assert _rel(fs.layers["last"], pred["atom_fea"]) > 1e-2


def test_rows_follow_input_order_and_species(chgnet):
    frames = _synthetic()
    frames[0].info["subset"] = "bulk"
    fs = chgnet.extract(frames, layers=["interaction.0", "last"], batch_size=2)
    n = sum(len(a) for a in frames)
    assert set(fs.layers) == {"interaction.0", "last"}
    assert all(v.shape == (n, 64) and v.dtype == np.float32 for v in fs.layers.values())
    np.testing.assert_array_equal(fs.rows["Z"], np.concatenate([a.numbers for a in frames]))
    np.testing.assert_array_equal(fs.rows["frame"], np.repeat(np.arange(len(frames)), [len(a) for a in frames]))
    np.testing.assert_array_equal(fs.rows["atom"], np.concatenate([np.arange(len(a)) for a in frames]))
    assert fs.rows["subset"][0] == "bulk" and fs.skipped == []


def test_frame_alone_equals_frame_in_batch(chgnet):
    frames = _synthetic()
    check_alone_equals_batched(chgnet, frames, 1e-5)


def test_permuting_atoms_permutes_rows(chgnet):
    atoms = _synthetic()[3]
    perm = np.random.default_rng(0).permutation(len(atoms))
    a = chgnet.extract([atoms], layers="all")
    b = chgnet.extract([atoms[perm]], layers="all")
    np.testing.assert_array_equal(b.rows["Z"], a.rows["Z"][perm])
    for layer in chgnet.layers:
        assert _rel(b.layers[layer], a.layers[layer][perm]) <= 1e-5


def test_two_runs_are_bit_identical(chgnet):
    frames = _synthetic()
    check_two_runs_bit_identical(chgnet, frames)


def test_molecule_features_do_not_depend_on_the_box(chgnet):
    water = molecule("H2O")
    in_box = water.copy()
    in_box.set_cell([12.0, 13.0, 14.0])
    in_box.center()  # still pbc=False: the box must be ignored
    shifted = water.copy()
    shifted.translate([3.0, -2.0, 7.0])
    fs = chgnet.extract([water, in_box, shifted], layers="last")
    last = fs.layers["last"].reshape(3, 3, 64)
    assert _rel(last[1], last[0]) <= 1e-5 and _rel(last[2], last[0]) <= 1e-5


def test_unsupported_elements_raise_or_skip(chgnet):
    frames = _synthetic()[:2] + [Atoms("AmO", positions=[[0, 0, 0], [0, 0, 1.9]])] + [molecule("H2O")]
    with pytest.raises(UnsupportedElementsError, match=r"chgnet-0\.3\.0.*Am.*frame\(s\) 2"):
        chgnet.extract(frames)
    fs = chgnet.extract(frames, on_unsupported="skip")
    assert [i for i, _ in fs.skipped] == [2] and "Am" in fs.skipped[0][1]
    kept = [frames[i] for i in (0, 1, 3)]
    np.testing.assert_array_equal(fs.rows["frame"], np.repeat([0, 1, 3], [len(a) for a in kept]))
    np.testing.assert_array_equal(fs.rows["Z"], np.concatenate([a.numbers for a in kept]))
    assert fs.layers["last"].shape == (sum(len(a) for a in kept), 64)


def test_bad_arguments_are_rejected(chgnet):
    with pytest.raises(InputError, match="unknown layer"):
        chgnet.extract(_synthetic()[:1], layers=["interaction.9"])
    with pytest.raises(InputError, match="on_unsupported"):
        chgnet.extract(_synthetic()[:1], on_unsupported="ignore")
    with pytest.raises(ValueError, match="no atoms"):
        chgnet.extract([Atoms()])


@pytest.mark.parametrize("name", ["chgnet-0.2.0", "chgnet-r2scan"])
def test_other_checkpoints(name):
    ex = registry.load(name, device="cpu")
    atoms = _synthetic()[0]
    fs = ex.extract([atoms], layers="all")
    boxed = with_vacuum(atoms, ex.cutoff)
    boxed.calc = ex.calculator()
    e_ref = boxed.get_potential_energy()
    assert abs(ex.readout(fs.layers["last"], fs.rows["Z"]).sum() - e_ref) <= 1e-5 * abs(e_ref)
    if name == "chgnet-0.2.0":  # no readout norm: the readout input is the last block's output
        np.testing.assert_array_equal(fs.layers["last"], fs.layers["interaction.3"])
    else:
        assert _rel(fs.layers["last"], fs.layers["interaction.3"]) > 1e-2
