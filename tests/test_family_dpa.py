"""DPA-3 from deepmd-kit training checkpoints, through a worker of the dpa environment (issue #8).

``tests/families/build_dpa.py`` builds small random-initialised DPA-3 models with deepmd-kit's own
``get_model`` and saves them as ``.pt`` training checkpoints (single-task and two-head multi-task,
the layout of DPA-3.1-3M.pt); the tests load them the user's way,
``mlipspace.models.load("dpa:/path/file.pt?head=...")``. The builder's type_map is in neither
alphabetical nor atomic-number order, so typing atoms by a structure's own sorted symbols (the
study's bug) would change every feature. Skips without a dpa environment (``mlipspace env create
dpa``) unless ``MLIPSPACE_REQUIRE_ENVS`` names ``dpa``. The checks of the checkpoint reader and the
head choice that need no deepmd-kit run in this process.
"""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from familykit import (
    build_checkpoint,
    check_batch_equals_one_by_one,
    check_permutation_permutes_rows,
    env_python,
    remote,
)
from modelkit import frame_slices, synthetic_frames

from mlipspace.errors import InputError, ModelUnavailableError, UnsupportedElementsError
from mlipspace.models import dpa


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    env_python("dpa")
    return build_checkpoint("dpa", tmp_path_factory.mktemp("dpa"))


@pytest.fixture(scope="module")
def small(built):
    """Single-task DPA-3: 2 repflow layers (n_dim 16), fitting [24, 24], float32."""
    with remote(built["spec"]) as m:
        yield m


@pytest.fixture(scope="module")
def heads(built):
    """The two heads of the multi-task checkpoint (shared descriptor, own fitting nets)."""
    with remote(built["spec_heads"] + "?head=Omat24") as omat, remote(built["spec_heads"] + "?head=MPtrj") as mp:
        yield {"Omat24": omat, "MPtrj": mp}


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames()


def test_layers_shapes_and_metadata(small, built, frames):
    assert small.family == "dpa" and small.name == "dpa3-small"
    assert small.layers == ("interaction.0", "interaction.1", "descriptor", "last")
    assert small.dims == built["dims"]
    assert small.elements == frozenset([1, 6, 7, 8, 11, 14, 17, 29])
    fp = small.fingerprint
    assert fp["head"] is None and fp["type_map"] == built["type_map"] and fp["package_version"] == "3.2.0"
    fs = small.extract(frames, layers="all", batch_size=4)
    n = sum(len(a) for a in frames)
    for layer, arr in fs.layers.items():
        assert arr.shape == (n, small.dims[layer]) and arr.dtype == np.float32
        assert np.isfinite(arr).all() and np.abs(arr).max() > 0
    # the DPA-3 descriptor (no type-embedding concat) is the last repflow layer's node embedding
    np.testing.assert_array_equal(fs.layers["descriptor"], fs.layers["interaction.1"])
    assert np.abs(fs.layers["interaction.0"] - fs.layers["interaction.1"]).max() > 1e-3
    np.testing.assert_array_equal(fs.rows["Z"], np.concatenate([a.numbers for a in frames]))


def test_features_equal_deepmds_own_descriptor_and_last_layer(small, built):
    """deepmd's DeepPot.eval_descriptor / eval_fitting_last_layer, types from type_map.index(symbol)."""
    from ase.io import read

    ref = np.load(built["reference"])
    ref_frames = read(built["reference_frames"], index=":")
    for i, atoms in enumerate(ref_frames):
        fs = small.extract([atoms], layers=("descriptor", "last"))
        np.testing.assert_allclose(fs.layers["descriptor"], ref[f"descriptor_{i}"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(fs.layers["last"], ref[f"last_{i}"], rtol=0, atol=1e-6)
    e = small.energies(ref_frames)
    np.testing.assert_allclose(e["readout"], [float(ref[f"energy_{i}"]) for i in range(len(ref_frames))],
                               rtol=1e-6, atol=1e-5)


def test_readout_of_last_reproduces_the_calculator(small, frames):
    """sum(readout(last)) == deepmd's DP calculator (fitting output + bias_atom_e + out_bias per type)."""
    e = small.energies(frames)
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=1e-6, atol=1e-5)
    assert np.ptp(e["calculator"] / [len(a) for a in frames]) > 0.05


def test_types_come_from_the_type_map_not_the_structure(small):
    """An atom's features do not depend on which other elements its structure holds (far away).

    Water alone, and water with a Cu or Si atom 20 A away (beyond the 5 A cutoff): typing by each
    structure's own sorted symbols would give H, O different types in each (and features)."""
    water = molecule("H2O")
    with_cu = water + Atoms("Cu", positions=[[20.0, 0, 0]])
    with_si = Atoms("Si", positions=[[0, 20.0, 0]]) + water
    fs = small.extract([water, with_cu, with_si], layers="all")
    sl = frame_slices([water, with_cu, with_si])
    for layer in small.layers:
        a = fs.layers[layer]
        np.testing.assert_allclose(a[sl[1]][:3], a[sl[0]], rtol=0, atol=1e-6)
        np.testing.assert_allclose(a[sl[2]][1:], a[sl[0]], rtol=0, atol=1e-6)


def test_element_order_of_a_structure_does_not_matter(small):
    """The same Cu/O/C cell written with its species in another order: same features, permuted."""
    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    cell.symbols[1] = "O"
    cell.symbols[2] = "C"
    cell.rattle(0.05, seed=4)
    order = np.array([1, 2, 0, 3])  # Cu O C Cu -> O C Cu Cu
    other = cell[order]
    assert other.get_chemical_symbols() != cell.get_chemical_symbols()
    a = small.extract([cell], layers="all")
    b = small.extract([other], layers="all")
    for layer in small.layers:
        np.testing.assert_allclose(b.layers[layer], a.layers[layer][order], rtol=0, atol=1e-5)


def test_batch_equals_one_by_one(small, frames):
    check_batch_equals_one_by_one(small, frames, atol=0)


def test_atom_permutation_permutes_rows(small, frames):
    check_permutation_permutes_rows(small, frames, atol=1e-5)  # NaCl, the Cu slab, the Si supercell


def test_molecule_and_slab(small):
    water = molecule("H2O")  # no cell at all
    assert not water.pbc.any() and water.cell.rank == 0
    far = water.copy()
    far.positions += 40.0
    slab = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    slab.center(vacuum=6.0, axis=2)
    slab.pbc = (True, True, False)
    tight = slab.copy()
    tight.cell[2, 2] = 5.0  # less vacuum than the cutoff: the adapter still sees an isolated slab
    fs = small.extract([water, far, slab, tight], layers="all")
    sl = frame_slices([water, far, slab, tight])
    for layer in small.layers:
        assert np.isfinite(fs.layers[layer]).all()
        np.testing.assert_allclose(fs.layers[layer][sl[0]], fs.layers[layer][sl[1]], rtol=0, atol=1e-5)
        np.testing.assert_allclose(fs.layers[layer][sl[2]], fs.layers[layer][sl[3]], rtol=0, atol=1e-5)
    e = small.energies([water, slab])  # 12 A of vacuum: deepmd's calculator (cell taken as periodic) agrees
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=1e-6, atol=1e-5)


def test_unsupported_element_names_the_frame(small):
    gold = Atoms("Au2", positions=[[0, 0, 0], [0, 0, 2.5]])
    with pytest.raises(UnsupportedElementsError, match=r"Au.*frame\(s\) 1"):
        small.extract([molecule("H2O"), gold])
    fs = small.extract([molecule("H2O"), gold], on_unsupported="skip")
    assert [i for i, _ in fs.skipped] == [1] and len(fs.rows["frame"]) == 3


def test_heads_share_the_descriptor_not_the_fitting(heads, frames):
    a = heads["Omat24"].extract(frames, layers="all")
    b = heads["MPtrj"].extract(frames, layers="all")
    assert heads["Omat24"].name == "dpa3-heads@Omat24" and heads["MPtrj"].fingerprint["head"] == "MPtrj"
    for layer in ("interaction.0", "interaction.1", "descriptor"):
        np.testing.assert_array_equal(a.layers[layer], b.layers[layer])
    assert np.abs(a.layers["last"] - b.layers["last"]).max() > 1e-3
    for m in heads.values():
        e = m.energies(frames[:3])
        np.testing.assert_allclose(e["readout"], e["calculator"], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("suffix, match", [
    ("", r"dpa3-heads\.pt is multi-task: choose a head.*MPtrj, Omat24 \(aliases: omat\)"),
    ("?head=PBE", r"dpa3-heads\.pt has no head 'PBE'; heads: MPtrj, Omat24"),
])
def test_head_errors_name_the_file_and_the_heads(built, suffix, match):
    with pytest.raises(ModelUnavailableError, match=match):
        remote(built["spec_heads"] + suffix)


def test_bad_files_and_options_name_the_file(built, tmp_path):
    with pytest.raises(ModelUnavailableError, match=r"dpa3-small\.pth.*frozen TorchScript"):
        remote(f"dpa:{built['frozen']}")
    with pytest.raises(InputError, match=r"dpa3-small\.pt.*unknown option\(s\) task; valid options: head"):
        remote(built["spec"] + "?task=omat")
    with pytest.raises(ModelUnavailableError, match=r"dpa3-small\.pt is a single-task model.*head=omat"):
        remote(built["spec"] + "?head=omat")


# --- checks of the checkpoint reader that need torch but not deepmd-kit (this process) -------------


def test_select_head_aliases_and_case():
    params = {"model_dict": {"Omat24": {"model_branch_alias": ["omat"]}, "MPtrj": {}}}
    assert dpa._select_head("x.pt", params, "omat")[0] == "Omat24"
    assert dpa._select_head("x.pt", params, "mptrj")[0] == "MPtrj"
    assert dpa._select_head("x.pt", {"descriptor": {}}, None) == ("Default", {"descriptor": {}})


def test_read_checkpoint_refuses_other_files(tmp_path):
    torch = pytest.importorskip("torch")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ModelUnavailableError, match=r"notes\.pt: not a deepmd-kit PyTorch checkpoint"):
        dpa._read_checkpoint(text)
    other = tmp_path / "statedict.pt"
    torch.save({"layer.weight": torch.zeros(2)}, other)
    with pytest.raises(ModelUnavailableError, match=r"statedict\.pt: not a deepmd-kit training checkpoint"):
        dpa._read_checkpoint(other)
    with pytest.raises(ModelUnavailableError, match=r"missing\.pt is not a file"):
        dpa._read_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("params, match", [
    ({"descriptor": {"type": "dpa2"}}, r"other\.pt: descriptor type 'dpa2'"),
    ({"descriptor": {"type": "dpa3"}, "use_srtab": "zbl.txt"}, r"other\.pt: a model with use_srtab"),
    ({"descriptor": {"type": "dpa3"}, "fitting_net": {"type": "dipole"}}, r"other\.pt: not an energy model"),
])
def test_models_other_than_dpa3_energy_are_refused_before_loading(tmp_path, params, match):
    torch = pytest.importorskip("torch")
    path = tmp_path / "other.pt"
    torch.save({"model": {"_extra_state": {"model_params": params}}}, path)
    with pytest.raises(ModelUnavailableError, match=match):
        dpa.DPAExtractor("other", str(path))
