"""SevenNet adapter: ``last`` feeds the model's readout exactly, l=0 slices, rows, batching, heads."""

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torch_geometric")
pytest.importorskip("e3nn")
pytest.importorskip("sevenn")

from ase import Atoms  # noqa: E402
from ase.build import molecule  # noqa: E402

from mlipspace.errors import InputError, StructureError, UnsupportedElementsError  # noqa: E402
from mlipspace.models import registry  # noqa: E402

from modelkit import synthetic_frames as _synthetic, mad_frames as _mad, frame_slices as _slices, rel as _rel  # noqa: E402
from modelkit import check_alone_equals_batched, check_two_runs_bit_identical  # noqa: E402

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_torch_thread")]

NAMES = ["sevennet-0", "sevennet-0-22may2024", "sevennet-l3i5", "sevennet-mf-0-pbe", "sevennet-mf-0-r2scan"]
BACKBONE = tuple(f"interaction.{i}" for i in range(5))


@pytest.fixture(scope="module")
def s0():
    return registry.load("sevennet-0", device="cpu")


@pytest.fixture(scope="module", params=NAMES)
def any_model(request):
    """Each registry name loaded once (pytest groups the tests by parameter)."""
    return registry.load(request.param, device="cpu")


def test_scalar_slices_follow_the_irreps_not_a_fixed_width():
    from e3nn.o3 import Irreps

    from mlipspace.models._e3nn_common import scalar_slices, select_columns

    irreps = Irreps("3x0e+2x1o+1x0o+1x2e")  # columns: 0-2 l=0, 3-8 l=1, 9 l=0 (odd), 10-14 l=2
    slices = scalar_slices(irreps)
    assert slices == [slice(0, 3), slice(9, 10)]
    import torch

    x = torch.arange(2 * irreps.dim, dtype=torch.float32).reshape(2, irreps.dim)
    np.testing.assert_array_equal(select_columns(x, slices).numpy(), x.numpy()[:, [0, 1, 2, 9]])


def test_static_description_and_fingerprint(any_model):
    from mlipspace.models.sevennet import describe

    meta = describe(registry.get_spec(any_model.name))
    assert any_model.layers == BACKBONE + ("last",) == meta["layers"]
    assert any_model.dims == meta["dims"] == {layer: 128 for layer in any_model.layers}
    assert any_model.elements == meta["elements"] and len(any_model.elements) == 89
    fp = any_model.fingerprint
    assert fp["model"] == any_model.name and fp["package"] == "sevenn" and len(fp["checkpoint_sha256"]) == 64
    assert fp["head"] == registry.get_spec(any_model.name).options.get("modality")
    # the l=0 columns really are read from each gate's irreps
    from mlipspace.models._e3nn_common import scalar_slices

    for i, layer in enumerate(BACKBONE):
        gate = any_model.model._modules[f"{i}_equivariant_gate"]
        assert list(any_model.hooks[layer].slices) == scalar_slices(gate.gate.irreps_out)


def test_last_through_readout_reproduces_calculator_energies(any_model):
    """``last`` pushed through the model's own readout gives the sevenn calculator's energies."""
    frames = _synthetic()[:3] + _mad([6, 33])  # crystal, slab, molecule; MAD cluster and 2D
    fs = any_model.extract(frames, layers="all", batch_size=3)
    per_atom = any_model.readout(fs.layers["last"], fs.rows["Z"])
    calc = any_model.calculator()
    for atoms, sl in zip(frames, _slices(frames)):
        work = atoms.copy()
        work.calc = calc
        own_total = work.get_potential_energy()
        own = work.get_potential_energies()
        assert _rel(per_atom[sl], own) <= 1e-5
        assert abs(per_atom[sl].sum() - own_total) <= 1e-5 * abs(own_total)
    # every interaction block ends with scalars only: the readout reads the last gate's output
    np.testing.assert_array_equal(fs.layers["last"], fs.layers["interaction.4"])
    assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in fs.layers.values())


def test_mad_frames_readout(s0):
    frames = _mad([1, 46, 52])  # 2D (8 atoms), OC20 slab (pbc T,T,F), SPICE molecule (pbc F)
    fs = s0.extract(frames, layers="last", batch_size=8)
    calc = s0.calculator()
    per_atom = s0.readout(fs.layers["last"], fs.rows["Z"])
    for atoms, sl in zip(frames, _slices(frames)):
        work = atoms.copy()
        work.calc = calc
        assert _rel(per_atom[sl], work.get_potential_energies()) <= 1e-5


def test_rows_follow_input_order(s0):
    frames = _synthetic()
    frames[0].info["subset"] = "bulk"
    fs = s0.extract(frames, layers=["interaction.0", "last"], batch_size=2)
    n = sum(len(a) for a in frames)
    assert set(fs.layers) == {"interaction.0", "last"}
    assert all(v.shape == (n, 128) for v in fs.layers.values())
    np.testing.assert_array_equal(fs.rows["Z"], np.concatenate([a.numbers for a in frames]))
    np.testing.assert_array_equal(fs.rows["frame"], np.repeat(np.arange(4), [len(a) for a in frames]))
    np.testing.assert_array_equal(fs.rows["atom"], np.concatenate([np.arange(len(a)) for a in frames]))
    assert fs.rows["subset"][0] == "bulk" and fs.model == "sevennet-0" and fs.fingerprint == s0.fingerprint


def test_frame_alone_equals_frame_in_batch(s0):
    frames = _synthetic()
    # measured bit-identical on CPU; allow round-off in case a BLAS picks another kernel
    check_alone_equals_batched(s0, frames, 1e-6)


def test_two_runs_are_bit_identical(s0):
    frames = _synthetic()
    check_two_runs_bit_identical(s0, frames)


def test_permuting_atoms_permutes_rows(s0):
    atoms = _synthetic()[3]
    perm = np.random.default_rng(0).permutation(len(atoms))
    a = s0.extract([atoms], layers="all")
    b = s0.extract([atoms[perm]], layers="all")
    np.testing.assert_array_equal(b.rows["Z"], a.rows["Z"][perm])
    for layer in s0.layers:
        assert _rel(b.layers[layer], a.layers[layer][perm]) <= 1e-5


def test_molecule_without_cell_equals_molecule_in_a_large_box(s0):
    water = molecule("H2O")
    assert not water.pbc.any() and water.cell.volume == 0
    boxed = water.copy()
    boxed.set_cell([20.0, 21.0, 22.0])
    boxed.pbc = True  # images > 5 A cutoff away
    fs = s0.extract([water, boxed], layers="all")
    for layer in s0.layers:
        assert _rel(fs.layers[layer][3:], fs.layers[layer][:3]) <= 1e-5


def test_heads_of_the_multifidelity_checkpoint_are_separate_models():
    pbe = registry.load("sevennet-mf-0-pbe", device="cpu")
    r2 = registry.load("sevennet-mf-0-r2scan", device="cpu")
    assert pbe.fingerprint["checkpoint_sha256"] == r2.fingerprint["checkpoint_sha256"]
    assert (pbe.fingerprint["head"], r2.fingerprint["head"]) == ("PBE", "R2SCAN")
    frames = _synthetic()[:1]
    a, b = pbe.extract(frames, layers="all"), r2.extract(frames, layers="all")
    for layer in pbe.layers:  # the head's one-hot enters every block
        assert _rel(a.layers[layer], b.layers[layer]) > 1e-4, layer


def test_unsupported_elements_raise_or_skip(s0):
    po = Atoms("PoO", positions=[[0, 0, 0], [0, 0, 2.0]])  # Po (84) is not in the MPtrj type map
    frames = [molecule("H2O"), po, _synthetic()[0]]
    with pytest.raises(UnsupportedElementsError, match=r"sevennet-0.*Po.*frame\(s\) 1"):
        s0.extract(frames)
    fs = s0.extract(frames, layers="all", on_unsupported="skip")
    assert [i for i, _ in fs.skipped] == [1] and "Po" in fs.skipped[0][1]
    np.testing.assert_array_equal(fs.rows["frame"], np.repeat([0, 2], [3, 2]))
    assert fs.layers["last"].shape == (5, 128)


def test_bad_arguments_are_clear_errors(s0):
    with pytest.raises(InputError, match="interaction.7"):
        s0.extract(_synthetic()[:1], layers=["interaction.7"])
    with pytest.raises(InputError, match="on_unsupported"):
        s0.extract(_synthetic()[:1], on_unsupported="ignore")
    with pytest.raises(StructureError, match="frame 1"):
        s0.extract([molecule("H2O"), Atoms()])
    with pytest.raises(InputError, match="shape"):
        s0.readout(np.zeros((2, 128), np.float32), [1, 1, 8])
    with pytest.raises(InputError, match="84"):
        s0.readout(np.zeros((1, 128), np.float32), [84])
    empty = s0.extract([], layers="all")
    assert all(v.shape == (0, 128) for v in empty.layers.values()) and len(empty.rows["frame"]) == 0
