"""ORB from user checkpoint files, through a worker of the ORB environment (issue #8).

``tests/families/build_orb.py`` builds small random-initialised ORB models with orb-models' own
architecture builders and saves their state dicts, the format of the released ``orb-v3-*.ckpt``
files; the tests load them the user's way, ``mlipspace.models.load("orb:/path/file.ckpt?arch=...")``.
Skips without an ORB environment (``mlipspace env create orb``) unless ``MLIPSPACE_REQUIRE_ENVS``
names ``orb``.
"""

import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list
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
    env_python("orb")
    return build_checkpoint("orb", tmp_path_factory.mktemp("orb"))


@pytest.fixture(scope="module")
def cons(built):
    """orb-v3 conservative, latent 32, 3 message-passing steps (arch orb-v3-conservative-inf-omat)."""
    with remote(built["spec"]) as m:
        yield m


@pytest.fixture(scope="module")
def direct(built):
    """orb-v3 direct, latent 24, 2 steps (arch orb-v3-direct-20-omat)."""
    with remote(built["spec_direct"]) as m:
        yield m


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames()


def _no_zbl_contact(atoms) -> bool:
    """No pair within ORB's ZBL range (sum of two covalent radii): its pair term is then exactly 0.

    orb-models 0.5.5 looks the radii up at Z + 1 (argmax of the one-hot, plus one); the larger of
    the radii at Z and Z + 1 is used here, so the check holds either way.
    """
    a = atoms.copy()
    if not a.pbc.any():
        a.cell = np.eye(3) * (np.ptp(a.positions, axis=0).max() + 20.0)
    r = np.maximum(covalent_radii[:-1], covalent_radii[1:])
    i, j, d = neighbor_list("ijd", a, 4.0)
    return bool(np.all(d >= r[a.numbers[i]] + r[a.numbers[j]]))


def _zbl_free_frames():
    """A crystal, a slab, a molecule and a supercell with no ZBL contact (E = sum readout(last))."""
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    nacl.rattle(0.02, seed=1)
    slab = fcc111("Cu", size=(2, 2, 2), a=3.95, vacuum=5.0)  # Cu-Cu 2.79 A > 2 r_cov(Cu) = 2.64 A
    methane = molecule("CH4")
    si = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    si.rattle(0.02, seed=2)
    frames = [nacl, slab, methane, si]
    assert all(_no_zbl_contact(a) for a in frames)
    return frames


def test_layers_shapes_and_metadata(cons, built, frames):
    n_layers, width = built["n_layers"], built["width"]
    assert cons.family == "orb" and cons.name == "orb-v3-tiny-conservative"
    assert cons.layers == tuple(f"interaction.{i}" for i in range(n_layers)) + ("last",)
    assert cons.dims == {layer: width for layer in cons.layers}
    assert cons.elements == frozenset(range(1, 118))
    assert cons.fingerprint["family"] == "orb" and cons.fingerprint["arch"] == "orb-v3-conservative-inf-omat"
    assert cons.fingerprint["package"] == "orb-models" and cons.fingerprint["head"] is None
    fs = cons.extract(frames, layers="all", batch_size=4)
    n = sum(len(a) for a in frames)
    for arr in fs.layers.values():
        assert arr.shape == (n, width) and arr.dtype == np.float32
        assert np.isfinite(arr).all() and np.abs(arr).max() > 0
    # the energy head reads the last stack's node features unchanged
    np.testing.assert_array_equal(fs.layers["last"], fs.layers[f"interaction.{n_layers - 1}"])
    assert np.abs(fs.layers["interaction.0"] - fs.layers["last"]).max() > 1e-3
    np.testing.assert_array_equal(fs.rows["Z"], np.concatenate([a.numbers for a in frames]))


def test_readout_of_last_reproduces_the_calculator(cons):
    """sum(readout(last)) == ORBCalculator's energy (head MLP on the mean + normaliser + references)."""
    frames = _zbl_free_frames()
    e = cons.energies(frames)
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=1e-5, atol=1e-4)
    # the head's MLP carries a real, structure-dependent share, not just the reference energies
    assert np.ptp(e["calculator"] / [len(a) for a in frames]) > 0.05


def test_direct_model(direct, built, frames):
    assert direct.layers == tuple(f"interaction.{i}" for i in range(built["n_layers_direct"])) + ("last",)
    assert direct.fingerprint["arch"] == "orb-v3-direct-20-omat"
    fs = direct.extract(frames, layers="all")
    for arr in fs.layers.values():
        assert arr.shape == (sum(len(a) for a in frames), built["width_direct"]) and np.isfinite(arr).all()
    e = direct.energies(_zbl_free_frames())
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=1e-5, atol=1e-4)


def test_batch_equals_one_by_one(cons, frames):
    check_batch_equals_one_by_one(cons, frames, atol=1e-5)


def test_atom_permutation_permutes_rows(cons, frames):
    check_permutation_permutes_rows(cons, frames, atol=1e-5)  # NaCl, the Cu slab, the Si supercell


def test_molecule_and_slab(cons):
    water = molecule("H2O")  # no cell at all
    assert not water.pbc.any() and water.cell.rank == 0
    far = water.copy()
    far.positions += 1000.0  # a molecule is translation invariant, also far from the origin
    slab = fcc111("Cu", size=(2, 2, 3), a=3.95, vacuum=6.0)
    assert list(slab.pbc) == [True, True, False]
    deeper = slab.copy()
    deeper.cell[2] *= 3.0  # more vacuum: an isolated slab's features do not change
    fs = cons.extract([water, far, slab, deeper], layers="all")
    sl = frame_slices([water, far, slab, deeper])
    for layer in cons.layers:
        assert np.isfinite(fs.layers[layer]).all()
        np.testing.assert_allclose(fs.layers[layer][sl[0]], fs.layers[layer][sl[1]], atol=1e-4)
        np.testing.assert_allclose(fs.layers[layer][sl[2]], fs.layers[layer][sl[3]], atol=1e-4)
    # the slab's surface atoms differ from its middle layer
    last = fs.layers["last"][sl[2]]
    assert np.abs(last[:4] - last[4:8]).max() > 1e-3


def test_unsupported_element_names_the_frame(cons):
    og = Atoms("Og2", positions=[[0, 0, 0], [0, 0, 3.0]])  # Z = 118: beyond ORB's reference one-hot
    with pytest.raises(UnsupportedElementsError, match=r"Og.*frame\(s\) 1"):
        cons.extract([molecule("H2O"), og])
    fs = cons.extract([molecule("H2O"), og], on_unsupported="skip")
    assert [i for i, _ in fs.skipped] == [1] and len(fs.rows["frame"]) == 3


def test_bad_arch_through_the_worker(built):
    """The worker sends the adapter's error back with its type and message (file and valid choices)."""
    with pytest.raises(ModelUnavailableError,
                       match=r"orb-v3-tiny-conservative\.ckpt.*unknown arch 'orb-v4'; valid: orb-v3-conservative-inf-omat, "):
        remote(f"orb:{built['checkpoint']}?arch=orb-v4")
    with pytest.raises(InputError, match=r"orb-v3-tiny-conservative\.ckpt.*unknown option\(s\) head"):
        remote(built["spec"] + "&head=omat")


# The checks below need only torch (no orb-models): they run the adapter's loader in this process.


@pytest.mark.parametrize("arch, match", [
    ("orb-v4-huge", r"unknown arch 'orb-v4-huge'; valid: orb-v3-conservative-inf-omat, .*, orb-v2, "),
    ("orb-v3-direct-inf-omat", (r"holds orb-v3 conservative weights but arch='orb-v3-direct-inf-omat' is an "
                                r"orb-v3 direct architecture; arch values for this file: "
                                r"orb-v3-conservative-inf-omat, orb-v3-conservative-20-omat, ")),
    ("orb-v2", r"holds orb-v3 conservative weights but arch='orb-v2'"),
])
def test_bad_arch_names_the_file_and_the_choices(built, arch, match):
    pytest.importorskip("torch")
    from mlipspace.models.orb import load_model

    with pytest.raises(ModelUnavailableError, match=r"orb-v3-tiny-conservative\.ckpt.*" + match):
        load_model(built["checkpoint"], arch)


def test_weights_kind_and_sizes_are_read_from_the_file(built):
    pytest.importorskip("torch")
    from mlipspace.models.orb import architecture_kwargs, read_state_dict, weights_kind

    sd = read_state_dict(built["checkpoint"])
    assert weights_kind(sd) == "conservative"
    assert architecture_kwargs(sd, "conservative") == {
        "latent_dim": 32, "base_mlp_hidden_dim": 48, "base_mlp_depth": 2, "head_mlp_hidden_dim": 24,
        "head_mlp_depth": 1, "num_message_passing_steps": 3, "has_charge_spin_cond": False}
    sd = read_state_dict(built["direct"])
    assert weights_kind(sd) == "direct"
    assert architecture_kwargs(sd, "direct")["head_mlp_depth"] == 2


def test_files_that_are_not_orb_checkpoints(built, tmp_path):
    pytest.importorskip("torch")
    from mlipspace.models.orb import load_model

    with pytest.raises(ModelUnavailableError, match=r"not-orb\.ckpt.*no ORB forcefield weights"):
        load_model(built["foreign"])
    text = tmp_path / "notes.ckpt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(ModelUnavailableError, match=r"notes\.ckpt.*not a weights-only torch state dict"):
        load_model(text)
    with pytest.raises(ModelUnavailableError, match=r"missing\.ckpt.*does not exist"):
        load_model(tmp_path / "missing.ckpt")
    with pytest.raises((ModelUnavailableError, InputError), match=r"missing\.ckpt"):
        remote(f"orb:{tmp_path / 'missing.ckpt'}")  # the spec parser refuses it before any worker starts


ZBL_CHECK = textwrap.dedent("""
    import sys
    import numpy as np
    from ase import Atoms
    from ase.build import bulk, fcc111, molecule
    from mlipspace.errors import StructureError
    from mlipspace.models.orb import ORBExtractor

    frames = [Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 1.3]]), bulk("Cu", "fcc", a=3.0) * (2, 1, 1),
              fcc111("Cu", size=(2, 2, 1), a=3.0, vacuum=5.0), bulk("NaCl", "rocksalt", a=5.64)]
    for path, arch in ((sys.argv[1], "orb-v3-conservative-inf-omat"), (sys.argv[2], "orb-v3-direct-20-omat")):
        m = ORBExtractor("zbl", path, device="cpu", arch=arch)
        calc = m.calculator()
        pairs = m.pair_energy(frames)
        # the dimer is deep in the repulsive wall, the compressed bulk and slab inside ZBL range; NaCl is not
        assert pairs[0] > 0.1 and pairs[1] > 0 and pairs[2] > 0 and pairs[3] == 0, pairs
        for k, atoms in enumerate(frames):
            fs = m.extract([atoms])
            readout = m.readout(fs.layers["last"], fs.rows["Z"]).sum() + m.energy_offset
            atoms.calc = calc
            energy = atoms.get_potential_energy()
            assert abs(readout + pairs[k] - energy) < 1e-5 * max(1.0, abs(energy)), (arch, k, readout, pairs[k], energy)

    # omol models (charge/spin conditioner): every frame needs atoms.info charge and spin
    m = ORBExtractor("omol", sys.argv[3], device="cpu", arch="orb-v3-conservative-omol")
    assert m.needs_charge_spin and m.layers == ("interaction.0", "last")
    water, methane = molecule("H2O"), molecule("CH4")
    for atoms, spin in ((water, 1), (methane, 3)):
        atoms.info.update(charge=0, spin=spin)
    fs = m.extract([water, methane])
    water.calc = m.calculator()
    e = m.readout(fs.layers["last"][:3], fs.rows["Z"][:3]).sum() + m.pair_energy([water])[0]
    assert abs(e - water.get_potential_energy()) < 1e-5 * max(1.0, abs(e)), e
    other = methane.copy()
    other.info["spin"] = 1
    assert np.abs(m.extract([other]).layers["last"] - fs.layers["last"][3:]).max() > 1e-6  # spin matters
    del methane.info["spin"]
    try:
        m.extract([water, methane], batch_size=2)
    except StructureError as exc:
        assert exc.frame == 1 and "atoms.info['charge'] and atoms.info['spin']" in str(exc), exc
    else:
        raise AssertionError("a frame without spin was accepted by an omol model")
    print("ok")
""")


def test_zbl_pair_repulsion_and_omol_models_in_the_env(built):
    """In the ORB env: with close contacts (Cu dimer, compressed Cu bulk and slab) E = sum(readout(last)) + ZBL
    pair energy, for conservative and direct models; an omol model needs charge and spin on every frame."""
    py = env_python("orb")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(root / "src")
    proc = subprocess.run([str(py), "-c", ZBL_CHECK, built["checkpoint"], built["direct"], built["omol"]],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
