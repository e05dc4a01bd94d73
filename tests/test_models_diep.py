"""DIEP adapter: the ``last`` layer is the energy readout's input, rows are right, batching is exact."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torch_geometric")
pytest.importorskip("diep")

from ase import Atoms  # noqa: E402
from ase.build import molecule  # noqa: E402

from mlipspace.errors import UnsupportedElementsError  # noqa: E402
from mlipspace.models import registry  # noqa: E402
from mlipspace.models._torch_utils import Tap, capture  # noqa: E402

from modelkit import synthetic_frames as _synthetic, mad_frames as _mad, frame_slices as _frame_slices, rel as _rel  # noqa: E402
from modelkit import check_alone_equals_batched, check_two_runs_bit_identical  # noqa: E402

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def diep():
    return registry.load("diep-r2scan", device="cpu")


def test_layers_dims_elements_match_static_description(diep):
    from mlipspace.models.diep import describe

    assert diep.layers == ("interaction.0", "interaction.1", "interaction.2", "last")
    assert diep.dims == {layer: 64 for layer in diep.layers}
    assert len(diep.elements) == 89 and 1 in diep.elements and 84 not in diep.elements and 94 in diep.elements
    meta = describe(registry.get_spec("diep-r2scan"))
    assert (meta["layers"], meta["dims"], meta["elements"]) == (diep.layers, diep.dims, diep.elements)
    fp = diep.fingerprint
    assert fp["model"] == "diep-r2scan" and fp["package"] == "diep" and len(fp["checkpoint_sha256"]) == 64


def _own_energies(diep, atoms):
    """DIEP's per-atom and total energies from the package's own Potential forward (with forces)."""
    work = atoms.copy()
    work.wrap()
    graph, lattice, state = diep._converter.get_graph(work)
    with capture(diep.model, {"atomic": Tap("final_layer")}) as store:
        energy, *_ = diep.potential(graph, lattice, state)
    pot = diep.potential
    types = graph.node_type.long()
    per_atom = pot.data_std * store["atomic"][0].squeeze(1) + pot.element_refs.property_offset[types]
    return per_atom.detach().double().numpy(), float(energy)


@pytest.mark.parametrize("source", ["synthetic", "mad"])
def test_last_through_readout_reproduces_energies(diep, source):
    frames = _synthetic() if source == "synthetic" else _mad([1, 6, 46, 52])  # 2D, cluster, slab, molecule
    fs = diep.extract(frames, layers="last", batch_size=3)
    for atoms, sl in zip(frames, _frame_slices(frames)):
        per_atom = diep.readout(fs.layers["last"][sl], fs.rows["Z"][sl])
        own_per_atom, own_total = _own_energies(diep, atoms)
        assert _rel(per_atom, own_per_atom) <= 1e-5
        assert abs(per_atom.sum() + diep.energy_offset - own_total) <= 1e-5 * abs(own_total)


def test_calculator_works_after_extraction_and_agrees(diep):
    frames = _synthetic()[2:]
    fs = diep.extract(frames, layers="last")  # first: the integrator grid must not become an inference tensor
    calc = diep.calculator()
    for atoms, sl in zip(frames, _frame_slices(frames)):
        work = atoms.copy()
        work.calc = calc
        e_ref = work.get_potential_energy()
        assert work.get_forces().shape == (len(atoms), 3)
        e = diep.readout(fs.layers["last"][sl], fs.rows["Z"][sl]).sum() + diep.energy_offset
        assert abs(e - e_ref) <= 1e-5 * abs(e_ref)


def test_last_is_the_last_block_output(diep):
    fs = diep.extract(_synthetic(), layers="all")
    np.testing.assert_array_equal(fs.layers["last"], fs.layers["interaction.2"])
    assert _rel(fs.layers["interaction.1"], fs.layers["interaction.2"]) > 1e-2


def test_rows_follow_input_order_and_species(diep):
    frames = _synthetic()
    fs = diep.extract(frames, layers=["interaction.0", "last"], batch_size=2)
    n = sum(len(a) for a in frames)
    assert all(v.shape == (n, 64) and v.dtype == np.float32 for v in fs.layers.values())
    np.testing.assert_array_equal(fs.rows["Z"], np.concatenate([a.numbers for a in frames]))
    np.testing.assert_array_equal(fs.rows["frame"], np.repeat(np.arange(len(frames)), [len(a) for a in frames]))
    np.testing.assert_array_equal(fs.rows["atom"], np.concatenate([np.arange(len(a)) for a in frames]))


def test_frame_alone_equals_frame_in_batch(diep):
    frames = _synthetic()
    check_alone_equals_batched(diep, frames, 1e-5)


def test_permuting_atoms_permutes_rows(diep):
    atoms = _synthetic()[3]
    perm = np.random.default_rng(0).permutation(len(atoms))
    a = diep.extract([atoms], layers="all")
    b = diep.extract([atoms[perm]], layers="all")
    np.testing.assert_array_equal(b.rows["Z"], a.rows["Z"][perm])
    for layer in diep.layers:
        assert _rel(b.layers[layer], a.layers[layer][perm]) <= 1e-5


def test_two_runs_are_bit_identical(diep):
    frames = _synthetic()
    check_two_runs_bit_identical(diep, frames)


def test_molecule_features_do_not_depend_on_the_box(diep):
    water = molecule("H2O")
    in_box = water.copy()
    in_box.set_cell([12.0, 13.0, 14.0])
    in_box.center()
    shifted = water.copy()
    shifted.translate([3.0, -2.0, 7.0])
    big_box = shifted.copy()  # periodic, but images far beyond the 5 A cutoff
    big_box.set_cell([20.0, 20.0, 20.0])
    big_box.pbc = True
    fs = diep.extract([water, in_box, shifted, big_box], layers="last")
    last = fs.layers["last"].reshape(4, 3, 64)
    for k in (1, 2, 3):
        assert _rel(last[k], last[0]) <= 1e-5


def test_unsupported_elements_raise_or_skip(diep):
    po = Atoms("PoO", positions=[[0, 0, 0], [0, 0, 2.0]])  # Po (84) is not among DIEP's 89 elements
    frames = [molecule("H2O"), po, _synthetic()[0]]
    with pytest.raises(UnsupportedElementsError, match=r"diep-r2scan.*Po.*frame\(s\) 1"):
        diep.extract(frames)
    fs = diep.extract(frames, on_unsupported="skip")
    assert [i for i, _ in fs.skipped] == [1]
    np.testing.assert_array_equal(fs.rows["frame"], np.repeat([0, 2], [3, len(frames[2])]))
    assert fs.layers["last"].shape == (3 + len(frames[2]), 64)
