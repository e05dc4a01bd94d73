"""MatterSim from user checkpoint files, through a worker of the MatterSim environment (issue #8).

``tests/families/build_mattersim.py`` builds a small random-initialised ``M3Gnet(num_blocks=2,
units=32, max_z=30)`` with mattersim's own constructor and writes it with ``Potential.save``, the
format of the released ``mattersim-v1.0.0-*.pth`` files; the tests load it the user's way,
``mlipspace.models.load("mattersim:/path/file.pth")``, which runs ``Potential.from_checkpoint`` in a
worker. Skips without a MatterSim environment (``mlipspace env create mattersim``) unless
``MLIPSPACE_REQUIRE_ENVS`` names ``mattersim``.
"""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from familykit import (
    build_checkpoint,
    check_batch_equals_one_by_one,
    check_permutation_permutes_rows,
    env_python,
    remote,
)
from modelkit import frame_slices, synthetic_frames

from mlipspace.errors import InputError, ModelUnavailableError, UnsupportedElementsError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    env_python("mattersim")
    return build_checkpoint("mattersim", tmp_path_factory.mktemp("mattersim"))


@pytest.fixture(scope="module")
def ms(built):
    with remote(built["spec"]) as m:
        yield m


@pytest.fixture(scope="module")
def frames():
    """Rattled NaCl, a Cu(111) slab (pbc T,T,F), a water molecule (no cell) and a Si supercell."""
    return synthetic_frames()


def test_layers_shapes_and_metadata(ms, built, frames):
    n_layers, width = built["n_layers"], built["width"]
    assert ms.family == "mattersim" and ms.name == "mattersim-tiny"
    assert ms.layers == tuple(f"interaction.{i}" for i in range(n_layers)) + ("last",)
    assert ms.dims == {layer: width for layer in ms.layers}
    assert ms.elements == frozenset(range(1, built["max_z"] + 1))
    fp = ms.fingerprint
    assert fp["family"] == "mattersim" and fp["package"] == "mattersim" and fp["head"] is None
    assert fp["checkpoint"] == "mattersim-tiny.pth" and len(fp["checkpoint_sha256"]) == 64
    assert (fp["num_blocks"], fp["units"], fp["cutoff"]) == (n_layers, width, 5.0)
    fs = ms.extract(frames, layers="all", batch_size=4)
    n = sum(len(a) for a in frames)
    for arr in fs.layers.values():
        assert arr.shape == (n, width) and arr.dtype == np.float32
        assert np.isfinite(arr).all() and np.abs(arr).max() > 0
    # nothing sits between the last main block and the readout
    np.testing.assert_array_equal(fs.layers["last"], fs.layers[f"interaction.{n_layers - 1}"])
    assert np.abs(fs.layers["interaction.0"] - fs.layers["last"]).max() > 1e-3
    np.testing.assert_array_equal(fs.rows["Z"], np.concatenate([a.numbers for a in frames]))


def test_readout_of_last_reproduces_the_calculator(ms, frames):
    """sum_i scale(Z_i) * final(last_i) + shift(Z_i) == MatterSimCalculator's energy, crystal to molecule."""
    e = ms.energies(frames)
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=1e-5, atol=1e-4)
    # the readout MLP carries a structure-dependent share, not only the per-element shifts
    si = bulk("Si", "diamond", a=5.43)
    squeezed = si.copy()
    squeezed.set_cell(si.cell * 0.95, scale_atoms=True)
    e2 = ms.energies([si, squeezed])
    np.testing.assert_allclose(e2["readout"], e2["calculator"], rtol=1e-5, atol=1e-4)
    assert abs(e2["calculator"][0] - e2["calculator"][1]) > 1e-3


def test_batch_equals_one_by_one(ms, frames):
    check_batch_equals_one_by_one(ms, frames, atol=1e-5)


def test_atom_permutation_permutes_rows(ms, frames):
    check_permutation_permutes_rows(ms, frames, which=range(len(frames)), atol=1e-5)


def test_molecule_and_slab(ms):
    water = molecule("H2O")  # no cell at all
    assert not water.pbc.any() and water.cell.rank == 0
    far = water.copy()
    far.positions += 1000.0  # a molecule is translation invariant, also far from the origin
    boxed = water.copy()
    boxed.cell = [4.0, 4.0, 4.0]  # a cell with pbc False is ignored: still the isolated molecule
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    assert list(slab.pbc) == [True, True, False]
    deeper = slab.copy()
    deeper.cell[2] *= 3.0  # more vacuum: an isolated slab's features do not change
    outside = slab.copy()
    outside.positions[:, 2] += slab.cell[2, 2]  # atoms above the cell along the non-periodic axis
    batch = [water, far, boxed, slab, deeper, outside]
    fs = ms.extract(batch, layers="all")
    sl = frame_slices(batch)
    for layer in ms.layers:
        assert np.isfinite(fs.layers[layer]).all()
        for a, b in ((0, 1), (0, 2), (3, 4), (3, 5)):
            np.testing.assert_allclose(fs.layers[layer][sl[a]], fs.layers[layer][sl[b]], atol=1e-4)
    # the slab's surface layers differ from its middle layer
    last = fs.layers["last"][sl[3]]
    assert np.abs(last[:4] - last[4:8]).max() > 1e-3


def test_unsupported_element_names_the_frame(ms):
    gold = Atoms("Au2", positions=[[0, 0, 0], [0, 0, 2.5]])  # Z = 79 > max_z = 30 of the test model
    with pytest.raises(UnsupportedElementsError, match=r"Au.*frame\(s\) 1"):
        ms.extract([molecule("H2O"), gold])
    fs = ms.extract([molecule("H2O"), gold], on_unsupported="skip")
    assert [i for i, _ in fs.skipped] == [1] and len(fs.rows["frame"]) == 3


def test_bad_option_names_the_file(built):
    """The worker sends the adapter's error back with its type and message."""
    with pytest.raises(InputError, match=r"mattersim-tiny\.pth.*unknown option\(s\) head.*take no options"):
        remote(built["spec"] + "?head=omat")


def test_files_that_are_not_mattersim_checkpoints(built, tmp_path):
    with pytest.raises(ModelUnavailableError, match=r"not-mattersim\.pth.* is not a MatterSim checkpoint"):
        remote(f"mattersim:{built['foreign']}")
    # from_checkpoint loads with strict=False: missing readout weights would silently stay random
    with pytest.raises(ModelUnavailableError, match=r"mattersim-no-readout\.pth.*lacks weights.*final\."):
        remote(f"mattersim:{built['truncated']}")
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(ModelUnavailableError, match=r"notes\.pth.*cannot be read as a weights-only torch file"):
        remote(f"mattersim:{text}")
    with pytest.raises((ModelUnavailableError, InputError), match=r"missing\.pth"):
        remote(f"mattersim:{tmp_path / 'missing.pth'}")  # the spec parser refuses it before any worker starts


def test_missing_file_in_the_adapter(tmp_path):
    """The adapter's own check (no mattersim needed: the file test comes before any import)."""
    pytest.importorskip("torch")
    from mlipspace.models.mattersim import read_checkpoint

    with pytest.raises(ModelUnavailableError, match=r"gone\.pth.*does not exist"):
        read_checkpoint(tmp_path / "gone.pth")
