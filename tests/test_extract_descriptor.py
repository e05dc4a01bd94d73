"""The ``descriptor-rdf`` reference model: the Extractor contract, invariances, pbc, bad input."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from mlipspace.errors import InputError, UnsupportedElementsError
from mlipspace.models import load
from mlipspace.models.descriptor import RadialDescriptor, element_channels, period_group


@pytest.fixture(scope="module")
def model():
    return load("descriptor-rdf")


def test_interface_and_fingerprint(model):
    assert model.family == "descriptor"
    assert model.layers == ("radial", "last")
    assert model.dims == {"radial": 64, "last": 64}
    assert model.elements == frozenset(range(1, 119))
    fp = model.fingerprint
    assert fp["model"] == "descriptor-rdf" and len(fp["checkpoint_sha256"]) == 64
    assert RadialDescriptor(n_bins=8).fingerprint["checkpoint_sha256"] != fp["checkpoint_sha256"]
    assert RadialDescriptor().fingerprint == fp  # deterministic provenance


def test_features_rows_and_determinism(model):
    frames = [bulk("NaCl", "rocksalt", 5.64), molecule("H2O"), bulk("Si", "diamond", 5.43)]
    fs = model.extract(frames, layers=("radial", "last"))
    n = sum(len(a) for a in frames)
    assert fs.layers["radial"].shape == (n, 64) and fs.layers["radial"].dtype == np.float32
    assert fs.layers["last"].shape == (n, 64) and np.all(np.abs(fs.layers["last"]) < 1)
    np.testing.assert_array_equal(fs.rows["frame"], [0, 0, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(fs.rows["Z"], [11, 17, 8, 1, 1, 14, 14])
    again = model.extract(frames, layers="all")
    for layer in model.layers:
        np.testing.assert_array_equal(fs.layers[layer], again.layers[layer])


def test_invariances_and_periodic_images(model):
    a = bulk("Cu", "fcc", 3.6, cubic=True)
    a.rattle(0.05, seed=3)
    base = model.extract([a], layers="all").layers
    # rigid rotation + translation: invariant
    b = a.copy()
    b.rotate(37, "x", rotate_cell=True)
    b.rotate(-12, "z", rotate_cell=True)
    b.translate([0.3, -1.1, 2.0])
    rot = model.extract([b], layers="all").layers
    for layer in base:
        np.testing.assert_allclose(rot[layer], base[layer], atol=1e-5)
    # a 2x1x1 supercell: each atom sees the same environment as its image in the primitive cell
    sup = model.extract([a * (2, 1, 1)], layers=("radial",)).layers["radial"]
    np.testing.assert_allclose(sup[: len(a)], base["radial"], atol=1e-5)
    np.testing.assert_allclose(sup[len(a):], base["radial"], atol=1e-5)
    # permuting atoms permutes rows
    perm = np.array([2, 0, 3, 1])
    p = model.extract([a[perm]], layers=("radial",)).layers["radial"]
    np.testing.assert_allclose(p, base["radial"][perm], atol=1e-6)


def test_molecule_isolated_atom_and_species_matter(model):
    single = Atoms("Ar", positions=[[0, 0, 0]])
    fs = model.extract([single], layers="all")
    assert np.all(fs.layers["radial"] == 0)  # no neighbours
    other = model.extract([Atoms("Kr", positions=[[0, 0, 0]])], layers=("last",))
    assert not np.allclose(fs.layers["last"], other.layers["last"])  # last layer knows the centre element
    # a neighbour 3 Å away appears in the bin near 3 Å of the constant channel
    dimer = Atoms("H2", positions=[[0, 0, 0], [0, 0, 3.0]])
    rad = model.extract([dimer], layers=("radial",)).layers["radial"][0, :16]
    centres = np.linspace(0, 5, 16)
    assert abs(centres[np.argmax(rad)] - 3.0) < 0.2


def test_unsupported_and_bad_options(model):
    ghost = Atoms("X", positions=[[0, 0, 0]])  # Z = 0
    frames = [molecule("CH4"), ghost]
    with pytest.raises(UnsupportedElementsError, match="frame 1"):
        model.extract(frames)
    fs = model.extract(frames, on_unsupported="skip")
    assert [i for i, _ in fs.skipped] == [1]
    assert set(fs.rows["frame"]) == {0} and len(fs.layers["last"]) == 5
    with pytest.raises(InputError, match="no layer"):
        model.extract(frames[:1], layers=("backbone",))
    with pytest.raises(InputError, match="on_unsupported"):
        model.extract(frames[:1], on_unsupported="ignore")


def test_periodic_table_channels():
    assert period_group(1) == (1, 1) and period_group(2) == (1, 18)
    assert period_group(8) == (2, 16) and period_group(26) == (4, 8)
    assert period_group(64) == (6, 3) and period_group(79) == (6, 11) and period_group(118) == (7, 18)
    ch = element_channels(np.array([1, 118]))
    assert ch.shape == (2, 4) and np.all(ch[:, 0] == 1) and ch[1, 1] == pytest.approx(1.18)
    with pytest.raises(ValueError):
        period_group(119)
