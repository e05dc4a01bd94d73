"""MACE from user checkpoint files, through a worker of the MACE environment (issue #8).

``tests/families/build_mace.py`` builds small random-initialised models with mace's own
constructors and saves them as whole-model ``.model`` files (the format of mace-mp-0b3-medium.model);
the tests load them the user's way, ``mlipspace.models.load("mace:/path/file.model")``.
Skips without a MACE environment (``mlipspace env create mace``) unless
``MLIPSPACE_REQUIRE_ENVS`` names ``mace``.
"""

import os
import subprocess
import textwrap

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


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    env_python("mace")
    return build_checkpoint("mace", tmp_path_factory.mktemp("mace"))


@pytest.fixture(scope="module")
def small(built):
    """ScaleShiftMACE, float64, 2 interactions, one head (the MACE-MP layout)."""
    with remote(built["spec"]) as m:
        yield m


@pytest.fixture(scope="module")
def heads(built):
    """Plain MACE, float32, 3 interactions, heads omat/Default; loaded twice, one per head."""
    with remote(built["spec_heads"]) as default, remote(built["spec_heads"] + "?head=omat") as omat:
        yield {"Default": default, "omat": omat}


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames()


def test_layers_shapes_and_metadata(small, built, frames):
    assert small.family == "mace" and small.name == "mace-small"
    assert small.layers == ("interaction.0", "interaction.1", "last")
    assert small.dims == built["dims"]
    assert small.elements == frozenset(built["elements"])
    assert small.fingerprint["family"] == "mace" and small.fingerprint["dtype"] == "float64"
    assert small.fingerprint["model_class"] == "ScaleShiftMACE" and small.fingerprint["head"] is None
    fs = small.extract(frames, layers="all", batch_size=4)
    n = sum(len(a) for a in frames)
    for layer, arr in fs.layers.items():
        assert arr.shape == (n, small.dims[layer]) and arr.dtype == np.float32
        assert np.isfinite(arr).all() and np.abs(arr).max() > 0
    # the linear readout's input is the 0e part of the first product's output
    np.testing.assert_array_equal(fs.layers["last"][:, :16], fs.layers["interaction.0"])
    np.testing.assert_array_equal(fs.rows["Z"], np.concatenate([a.numbers for a in frames]))


def test_readout_of_last_reproduces_the_calculator(small, frames):
    """sum(readout(last)) == MACECalculator's energy (E0s + scale * readouts + shift)."""
    e = small.energies(frames)
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=1e-6, atol=1e-5)
    # the learned readouts carry a real share of the energy (not just the E0s)
    assert np.ptp(e["calculator"] / [len(a) for a in frames]) > 0.05


@pytest.mark.parametrize("head", ["Default", "omat"])
def test_multihead_readout_and_features(heads, frames, head):
    m = heads[head]
    assert m.layers == ("interaction.0", "interaction.1", "interaction.2", "last")
    assert m.dims["last"] == 12 + 12 + 8  # two linear readouts' inputs + this head's 8 hidden channels
    assert m.fingerprint["head"] == head and m.fingerprint["dtype"] == "float32"
    e = m.energies(frames)
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=2e-6, atol=1e-4)


def test_heads_share_the_backbone_not_the_mlp(heads, frames):
    a = heads["Default"].extract(frames, layers="all")
    b = heads["omat"].extract(frames, layers="all")
    assert heads["omat"].name.endswith("@omat")
    for layer in ("interaction.0", "interaction.1", "interaction.2"):
        np.testing.assert_array_equal(a.layers[layer], b.layers[layer])
    np.testing.assert_array_equal(a.layers["last"][:, :24], b.layers["last"][:, :24])
    assert np.abs(a.layers["last"][:, 24:] - b.layers["last"][:, 24:]).max() > 1e-3


def test_batch_equals_one_by_one(small, frames):
    check_batch_equals_one_by_one(small, frames, atol=1e-6)


def test_atom_permutation_permutes_rows(small, frames):
    check_permutation_permutes_rows(small, frames, atol=1e-5)  # NaCl, the Cu slab, the Si supercell


def test_molecule_and_slab(small):
    water = molecule("H2O")  # no cell at all
    assert not water.pbc.any() and water.cell.rank == 0
    far = water.copy()
    far.positions += 40.0  # translation invariant (not much further: mace sizes its box from |positions|)
    slab = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    slab.center(vacuum=6.0, axis=2)
    slab.pbc = (True, True, False)
    fs = small.extract([water, far, slab], layers="all")
    sl = frame_slices([water, far, slab])
    for layer in small.layers:
        assert np.isfinite(fs.layers[layer]).all()
        np.testing.assert_allclose(fs.layers[layer][sl[0]], fs.layers[layer][sl[1]], atol=1e-5)
    e = small.energies([water, slab])
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=1e-6, atol=1e-5)


def test_unsupported_element_names_the_frame(small):
    gold = Atoms("Au2", positions=[[0, 0, 0], [0, 0, 2.5]])
    with pytest.raises(UnsupportedElementsError, match=r"Au.*frame\(s\) 1"):
        small.extract([molecule("H2O"), gold])
    fs = small.extract([molecule("H2O"), gold], on_unsupported="skip")
    assert [i for i, _ in fs.skipped] == [1] and len(fs.rows["frame"]) == 3


@pytest.mark.parametrize("suffix, error, match", [
    ("?dtype=float16", ModelUnavailableError, r"mace-small\.model.*dtype must be one of float32, float64"),
    ("?task=omat", InputError, r"mace-small\.model.*unknown option\(s\) task; valid options: head, dtype"),
])
def test_bad_options_name_the_file(built, suffix, error, match):
    with pytest.raises(error, match=match):
        remote(built["spec"] + suffix)


def test_unknown_head_lists_the_heads(built):
    with pytest.raises(ModelUnavailableError, match=r"mace-heads\.model.*unknown head 'pbe'; valid heads: omat, Default"):
        remote(built["spec_heads"] + "?head=pbe")


def test_not_a_whole_model_file(built, tmp_path):
    with pytest.raises(ModelUnavailableError, match=r"mace-statedict\.pt.*state dict or training checkpoint"):
        remote(built["statedict"])
    text = tmp_path / "notes.model"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(ModelUnavailableError, match=r"notes\.model.*not a readable torch file"):
        remote(f"mace:{text}")
    with pytest.raises((ModelUnavailableError, InputError), match="missing.model"):
        remote(f"mace:{tmp_path / 'missing.model'}")


ZBL_CHECK = textwrap.dedent("""
    import sys
    import numpy as np
    from ase import Atoms
    from ase.build import bulk
    from mlipspace.models.mace import MACEExtractor

    m = MACEExtractor("zbl", sys.argv[1], device="cpu")
    assert m.pair_repulsion
    frames = [Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 1.3]]), bulk("Cu", "fcc", a=3.0) * (2, 1, 1)]
    calc = m.calculator()
    for k, atoms in enumerate(frames):
        fs = m.extract([atoms])
        readout = m.readout(fs.layers["last"], fs.rows["Z"]).sum() + m.energy_offset
        pair = m.pair_energy([atoms])[0]
        atoms.calc = calc
        energy = atoms.get_potential_energy()
        assert pair > 0.1 or k > 0, pair  # the 1.3 A dimer is deep in the repulsive wall
        assert abs(readout + pair - energy) < 1e-5 * max(1.0, abs(energy)), (readout, pair, energy)
    print("ok")
""")


def test_zbl_model_energy_is_readout_plus_pair_repulsion(built):
    """MACE-MP-0b3-like ZBL models: E = sum(readout(last)) + the (scaled) ZBL pair energy (in the env)."""
    from pathlib import Path

    py = env_python("mace")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(root / "src")
    proc = subprocess.run([str(py), "-c", ZBL_CHECK, built["spec_zbl"].partition(":")[2]], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
