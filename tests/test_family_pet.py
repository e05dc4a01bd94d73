"""PET from user checkpoint files, through a worker of the PET environment (issue #8).

``tests/families/build_pet.py`` builds small random-initialised ``metatrain.pet.PET`` models with
metatrain's own constructor and saves them as exported metatomic ``.pt`` files (the PET-MAD release
format) and as a metatrain ``.ckpt``; the tests load them the user's way,
``mlipspace.models.load("pet:/path/file.pt")``. Skips without a PET environment
(``mlipspace env create pet``) unless ``MLIPSPACE_REQUIRE_ENVS`` names ``pet``.
"""

import os
import subprocess
import textwrap
from pathlib import Path

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
    env_python("pet")
    return build_checkpoint("pet", tmp_path_factory.mktemp("pet"))


@pytest.fixture(scope="module")
def small(built):
    """Exported .pt, residual featurizer, 2 GNN layers (d_node 32, d_pet 16, d_head 16), float32."""
    with remote(built["spec"]) as m:
        yield m


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames()


def test_layers_shapes_and_metadata(small, built, frames):
    assert small.family == "pet" and small.name == "pet-small"
    assert small.layers == ("interaction.0", "interaction.1", "backbone", "last")
    d_node, d_pet, d_head = built["d_node"], built["d_pet"], built["d_head"]
    assert small.dims == {"interaction.0": d_node + d_pet, "interaction.1": d_node + d_pet,
                          "backbone": 2 * (d_node + d_pet), "last": 2 * 2 * d_head}
    assert small.elements == frozenset(built["elements"])
    fp = small.fingerprint
    assert fp["family"] == "pet" and fp["format"] == "exported" and fp["featurizer"] == "residual"
    assert fp["head"] is None and fp["dtype"] == "float32" and len(fp["checkpoint_sha256"]) == 64
    fs = small.extract(frames, layers="all", batch_size=4)
    n = sum(len(a) for a in frames)
    for layer, arr in fs.layers.items():
        assert arr.shape == (n, small.dims[layer]) and arr.dtype == np.float32
        assert np.isfinite(arr).all() and np.abs(arr).max() > 0
    # backbone = PET's "feature" output [node_0, node_1, edge_0, edge_1]; interaction.i = [node_i, edge_i]
    bb = fs.layers["backbone"]
    for i in range(2):
        node = bb[:, i * d_node:(i + 1) * d_node]
        edge = bb[:, 2 * d_node + i * d_pet:2 * d_node + (i + 1) * d_pet]
        np.testing.assert_array_equal(fs.layers[f"interaction.{i}"], np.hstack([node, edge]))
    assert np.abs(fs.layers["interaction.0"] - fs.layers["interaction.1"]).max() > 1e-3
    np.testing.assert_array_equal(fs.rows["Z"], np.concatenate([a.numbers for a in frames]))


def test_readout_of_last_reproduces_the_calculator(small, frames):
    """sum(readout(last)) + pair_energy == MetatomicCalculator's energy (scale * last layers +
    composition, plus the edge biases counted once per weighted neighbour)."""
    e = small.energies(frames)
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=2e-6, atol=2e-4)
    # the last layers carry a real share of the energy, not just the composition baseline
    assert np.ptp(e["calculator"] / [len(a) for a in frames]) > 0.05


def test_batch_equals_one_by_one(small, frames):
    check_batch_equals_one_by_one(small, frames, atol=1e-5)


def test_atom_permutation_permutes_rows(small, frames):
    check_permutation_permutes_rows(small, frames, atol=1e-4)  # NaCl, the Cu slab, the Si supercell


def test_molecule_and_slab(small):
    water = molecule("H2O")  # no cell at all
    assert not water.pbc.any() and water.cell.rank == 0
    far = water.copy()
    far.positions += 1000.0  # a molecule is translation invariant, also far from the origin
    slab = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    slab.center(vacuum=6.0, axis=2)
    slab.pbc = (True, True, False)
    deep = slab.copy()
    deep.center(vacuum=20.0, axis=2)  # more vacuum along the open axis changes nothing
    fs = small.extract([water, far, slab, deep], layers="all")
    sl = frame_slices([water, far, slab, deep])
    for layer in small.layers:
        assert np.isfinite(fs.layers[layer]).all()
        np.testing.assert_allclose(fs.layers[layer][sl[0]], fs.layers[layer][sl[1]], atol=1e-4)
        np.testing.assert_allclose(fs.layers[layer][sl[2]], fs.layers[layer][sl[3]], atol=1e-5)
    e = small.energies([water, slab])
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=2e-6, atol=2e-4)


def test_checkpoint_gives_the_features_of_its_export(built, small, frames):
    """The metatrain .ckpt (eager model) and its exported .pt (TorchScript) agree."""
    a = small.extract(frames, layers="all")
    with remote(built["spec_ckpt"]) as ckpt:
        assert ckpt.layers == small.layers and ckpt.dims == small.dims
        assert ckpt.fingerprint["format"] == "checkpoint"
        b = ckpt.extract(frames, layers="all")
        e = ckpt.energies(frames[:2])
    for layer in small.layers:
        np.testing.assert_allclose(b.layers[layer], a.layers[layer], rtol=0, atol=1e-5)
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=2e-6, atol=2e-4)


def test_feedforward_model_has_only_its_last_gnn_layer(built, frames):
    """featurizer_type="feedforward": only the last of the 3 GNN layers reaches the heads (and the outputs)."""
    with remote(built["spec_ff"]) as ff:
        assert ff.layers == ("interaction.2", "last")
        assert ff.dims == {"interaction.2": built["d_node"] + built["d_pet"], "last": 2 * built["d_head"]}
        assert ff.fingerprint["featurizer"] == "feedforward"
        fs = ff.extract(frames, layers="all")
        assert all(np.isfinite(v).all() for v in fs.layers.values())
        e = ff.energies(frames)
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=2e-6, atol=2e-4)


def test_zbl_model_energy_is_readout_plus_pair_terms(built):
    """A model with metatrain's ZBL repulsion: the ZBL energy joins the geometry-only pair_energy."""
    dimer = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 1.3]])  # deep in ZBL's repulsive wall
    si = bulk("Si", "diamond", a=5.43)
    with remote(built["spec_zbl"]) as zbl:
        e = zbl.energies([dimer, si])
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=2e-6, atol=2e-4)


def test_second_energy_target(built, frames):
    """?target=mtt::energy_r2scan: 'last' feeds that target's heads; its energy is reproduced."""
    with remote(built["spec_two"]) as two:
        assert two.layers == ("interaction.0", "interaction.1", "backbone", "last")
        assert two.fingerprint["head"] == "mtt::energy_r2scan"
        e = two.energies(frames[:2])
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=2e-6, atol=2e-4)


def test_unsupported_element_names_the_frame(small):
    gold = Atoms("Au2", positions=[[0, 0, 0], [0, 0, 2.5]])
    with pytest.raises(UnsupportedElementsError, match=r"Au.*frame\(s\) 1"):
        small.extract([molecule("H2O"), gold])
    fs = small.extract([molecule("H2O"), gold], on_unsupported="skip")
    assert [i for i, _ in fs.skipped] == [1] and len(fs.rows["frame"]) == 3


@pytest.mark.parametrize("key, suffix, match", [
    ("spec", "?target=dipole", r"small\.pt.*no target 'dipole'.*valid targets: energy"),
    ("spec_two", "x", r"two\.pt.*no target 'mtt::energy_r2scanx'.*valid targets: energy, mtt::energy_r2scan"),
    ("other", "", r"composition\.pt.*architecture 'CompositionModel', not PET"),
    ("garbage", "", r"garbage\.pt.*not an exported metatomic model"),
])
def test_bad_checkpoints_and_options_name_the_file(built, key, suffix, match):
    with pytest.raises(ModelUnavailableError, match=match):
        remote(built[key] + suffix)


def test_unknown_option_names_the_file_and_the_valid_ones(built):
    with pytest.raises(InputError, match=r"small\.pt.*unknown option\(s\) arch; valid options: head, target"):
        remote(built["spec"] + "?arch=omat")


def test_missing_file_names_it(tmp_path):
    with pytest.raises((ModelUnavailableError, InputError), match=r"missing\.pt"):
        remote(f"pet:{tmp_path / 'missing.pt'}")


EDGE_BIAS_CHECK = textwrap.dedent("""
    import sys
    import numpy as np
    from ase.build import bulk, molecule
    from metatomic.torch import ModelOutput
    from mlipspace.models.pet import PETExtractor

    si = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    si.rattle(0.05, seed=3)
    frames = [si, molecule("CH3OH")]
    ends = np.cumsum([len(a) for a in frames])
    for path in sys.argv[1:]:
        m = PETExtractor("pet-check", path, device="cpu")
        w, b_node, b_edge, scale, comp = m._readout_parameters()
        assert abs(b_edge) > 1e-3, b_edge  # random init: the edge biases are not zero
        fs = m.extract(frames)
        coord = m.coordination(frames)
        assert coord.shape == (len(fs.rows["Z"]),) and coord.max() > 1.0
        # per atom: readout + s*u*C_a is the model's own per-atom energy (output 'energy', sample_kind atom)
        calc = m.calculator()
        own = calc.run_model(frames, {"energy": ModelOutput(sample_kind="atom")})["energy"].block().values
        s = np.array([scale[int(z)] for z in fs.rows["Z"]])
        per_atom = m.readout(fs.layers["last"], fs.rows["Z"]) + s * b_edge * coord
        np.testing.assert_allclose(per_atom, own.double().numpy().reshape(-1), rtol=1e-5, atol=1e-4)
        # the edge-bias term is real (not ~0) and pair_energy is its per-frame sum
        term = np.add.reduceat(s * b_edge * coord, [0, ends[0]])
        assert np.abs(term).min() > 1e-2, term
        np.testing.assert_allclose(m.pair_energy(frames), term, rtol=1e-6)
        print(path, "C_a range", coord.min().round(2), coord.max().round(2))
    print("ok")
""")


def test_per_atom_readout_with_edge_biases(built):
    """In the env: readout(last) + s*u*C_a equals the model's per-atom energies atom by atom (fixed and
    adaptive cutoff)."""
    py = env_python("pet")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(root / "src")
    paths = [built[k].partition(":")[2] for k in ("spec", "adaptive")]  # fixed and adaptive cutoff
    proc = subprocess.run([str(py), "-c", EDGE_BIAS_CHECK, *paths], capture_output=True, text=True, env=env, check=False,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
