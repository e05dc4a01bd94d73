"""UMA / eSEN from fairchem inference checkpoints, through a worker of the UMA environment (issue #8).

``tests/families/build_uma.py`` builds small random-initialised UMA (MoLE backbone, dataset embedding,
five tasks) and eSEN models with fairchem's own classes and saves them as ``MLIPInferenceCheckpoint``
files, the format of the released ``uma-s-1p1.pt``; the tests load them the user's way,
``mlipspace.models.load("uma:/path/uma-tiny.pt?task=omat")``. Skips without a UMA environment
(``mlipspace env create uma``) unless ``MLIPSPACE_REQUIRE_ENVS`` names ``uma``. Marked ``slow_env``:
the environment takes 4-5 minutes to create (fairchem-core pulls ~1 GB besides torch).

UMA is not bit-deterministic (float32 scatter sums): feature comparisons use atol 1e-5.
"""

import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc111, molecule
from familykit import (
    build_checkpoint,
    check_batch_equals_one_by_one,
    check_permutation_permutes_rows,
    env_python,
    remote,
)
from modelkit import frame_slices, synthetic_frames

from mlipspace.errors import InputError, ModelUnavailableError, UnsupportedElementsError

pytestmark = [pytest.mark.slow_env, pytest.mark.slow]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    env_python("uma")
    return build_checkpoint("uma", tmp_path_factory.mktemp("uma"))


@pytest.fixture(scope="module")
def omat(built):
    """The tiny UMA model, task omat."""
    with remote(built["spec"]) as m:
        yield m


@pytest.fixture(scope="module")
def frames():
    return synthetic_frames()  # NaCl crystal, Cu slab (pbc T,T,F), water (no cell), Si supercell


def test_layers_shapes_and_metadata(omat, built, frames):
    n_layers, width = built["n_layers"], built["width"]
    assert omat.family == "uma" and omat.name == "uma-tiny@omat"
    assert omat.layers == tuple(f"interaction.{i}" for i in range(n_layers)) + ("last",)
    assert omat.dims == {layer: width for layer in omat.layers}
    assert omat.elements == frozenset(range(1, built["n_elements"]))
    fp = omat.fingerprint
    assert fp["family"] == "uma" and fp["head"] == "omat" and fp["package"] == "fairchem-core"
    assert fp["checkpoint"] == "uma-tiny.pt" and len(fp["checkpoint_sha256"]) == 64
    assert fp["backbone"] == "eSCNMDMoeBackbone" and fp["model_id"] == "UMA-1.1"
    fs = omat.extract(frames, layers="all", batch_size=4)
    n = sum(len(a) for a in frames)
    for arr in fs.layers.values():
        assert arr.shape == (n, width) and arr.dtype == np.float32
        assert np.isfinite(arr).all() and np.abs(arr).max() > 0
    # the final equivariant norm sits between the last block and the energy head
    assert np.abs(fs.layers["last"] - fs.layers[f"interaction.{n_layers - 1}"]).max() > 1e-2
    np.testing.assert_array_equal(fs.rows["Z"], np.concatenate([a.numbers for a in frames]))
    np.testing.assert_array_equal(fs.rows["frame"], np.repeat(np.arange(4), [len(a) for a in frames]))


def test_readout_of_last_reproduces_the_calculator(omat, frames):
    """sum(readout(last)) + mean == FAIRChemCalculator's energy (MLP, normaliser, element references)."""
    e = omat.energies(frames)
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=1e-6, atol=1e-4)
    # the MLP carries a real, structure-dependent share, not only the element references
    assert np.ptp(e["calculator"] / [len(a) for a in frames]) > 0.5


def test_batch_equals_one_by_one(omat, frames):
    check_batch_equals_one_by_one(omat, frames, atol=1e-5)


def test_atom_permutation_permutes_rows(omat, frames):
    check_permutation_permutes_rows(omat, frames, atol=1e-5)  # NaCl, the Cu slab, the Si supercell


def test_molecule_and_slab(omat):
    water = molecule("H2O")  # no cell at all
    assert not water.pbc.any() and water.cell.rank == 0
    far = water.copy()
    far.positions += 1000.0  # a molecule is translation invariant, also far from the origin
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    assert list(slab.pbc) == [True, True, False]
    deeper = slab.copy()
    deeper.cell[2] *= 3.0  # more vacuum: an isolated slab's features do not change
    flat = slab.copy()
    flat.cell[2] = 0.0  # periodic in-plane only, no third cell vector: padded with vacuum
    frames = [water, far, slab, deeper, flat]
    fs = omat.extract(frames, layers="all")
    sl = frame_slices(frames)
    for layer in omat.layers:
        assert np.isfinite(fs.layers[layer]).all()
        np.testing.assert_allclose(fs.layers[layer][sl[0]], fs.layers[layer][sl[1]], atol=1e-4)
        np.testing.assert_allclose(fs.layers[layer][sl[2]], fs.layers[layer][sl[3]], atol=1e-4)
        np.testing.assert_allclose(fs.layers[layer][sl[2]], fs.layers[layer][sl[4]], atol=1e-4)
    last = fs.layers["last"][sl[2]]
    assert np.abs(last[:4] - last[4:8]).max() > 1e-3  # surface atoms differ from the middle layer
    e = omat.energies([slab, water])
    np.testing.assert_allclose(e["readout"], e["calculator"], rtol=1e-6, atol=1e-4)


def test_invariant_part_under_rotation(omat, frames):
    """Every layer is the l = 0 part: rotating a molecule or a crystal (with its cell) leaves it unchanged."""
    nacl, water = frames[0], frames[2]
    turned = []
    for atoms in (nacl, water):
        r = atoms.copy()
        r.rotate(37.0, (1.0, 2.0, 0.5), rotate_cell=True)
        turned.append(r)
    fs = omat.extract([nacl, water, *turned], layers="all")
    sl = frame_slices([nacl, water, *turned])
    for layer in omat.layers:
        for k in (0, 1):
            a, b = fs.layers[layer][sl[k]], fs.layers[layer][sl[k + 2]]
            np.testing.assert_allclose(b, a, atol=1e-4 * max(1.0, np.abs(a).max()), err_msg=layer)


def test_unsupported_element_names_the_frame(omat):
    gold = Atoms("Au2", positions=[[0, 0, 0], [0, 0, 2.5]])  # Z = 79: beyond this model's 29 embedding rows
    with pytest.raises(UnsupportedElementsError, match=r"Au.*frame\(s\) 1"):
        omat.extract([molecule("H2O"), gold])
    fs = omat.extract([molecule("H2O"), gold], on_unsupported="skip")
    assert [i for i, _ in fs.skipped] == [1] and len(fs.rows["frame"]) == 3


def test_charge_and_spin_reach_the_worker(built):
    """omol: a cation (charge 1, spin 2) has other features than the neutral molecule, also through the worker."""
    water = molecule("H2O")
    ion = water.copy()
    ion.info.update(charge=1, spin=2)
    with remote(f"uma:{built['checkpoint']}?task=omol") as omol:
        last = omol.extract([water, ion]).layers["last"]
    assert np.abs(last[:3] - last[3:]).max() > 1e-3


def test_unknown_task_names_the_file_and_the_tasks(built):
    with pytest.raises(ModelUnavailableError,
                       match=r"uma-tiny\.pt.*unknown task 'omatt'; valid tasks: oc20, odac, omat, omc, omol"):
        remote(f"uma:{built['checkpoint']}?task=omatt")


def test_unknown_option_and_missing_file(built, tmp_path):
    with pytest.raises(InputError, match=r"uma-tiny\.pt.*unknown option\(s\) arch; valid options: head, task"):
        remote(built["spec"] + "&arch=omat")
    with pytest.raises(InputError, match=r"uma-tiny\.pt.*give head or task, not both"):
        remote(built["spec"] + "&head=omat")
    with pytest.raises((ModelUnavailableError, InputError), match=r"missing\.pt"):
        remote(f"uma:{tmp_path / 'missing.pt'}?task=omat")


IN_ENV = textwrap.dedent("""
    import sys
    import numpy as np
    from ase.build import bulk, fcc111, molecule
    from mlipspace.errors import ModelUnavailableError, StructureError
    from mlipspace.models.uma import UMAExtractor

    uma, esen, foreign, moe_head = sys.argv[1:5]
    water = molecule("H2O")
    frames = [bulk("NaCl", "rocksalt", a=5.64), fcc111("Cu", size=(2, 2, 2), vacuum=5.0), water]

    def check_energies(m, frames):
        calc = m.calculator()
        for atoms in frames:
            fs = m.extract([atoms])
            readout = m.readout(fs.layers["last"], fs.rows["Z"]).sum() + m.energy_offset
            work = atoms.copy()
            work.calc = calc
            energy = work.get_potential_energy()
            assert abs(readout - energy) < 1e-6 * max(1.0, abs(energy)) + 1e-5, (m.name, readout, energy)

    # the task selects the dataset embedding (and MoLE experts): every layer differs between tasks
    omat = UMAExtractor("omat", uma, head="omat")
    omol = UMAExtractor("omol", uma, head="omol")
    a, b = omat.extract(frames, layers="all"), omol.extract(frames, layers="all")
    for layer in omat.layers:
        assert np.abs(a.layers[layer] - b.layers[layer]).max() > 1e-3, layer
    check_energies(omol, frames)
    # total charge and spin (omol) enter the features as fairchem's calculator passes them
    ion = water.copy()
    ion.info.update(charge=1, spin=2)
    c = omol.extract([water, ion], layers="last").layers["last"]
    assert np.abs(c[:3] - c[3:]).max() > 1e-3
    check_energies(omol, [ion])
    # a charge fairchem rejects names the frame
    bad = molecule("CH4")
    bad.info["charge"] = 0.5
    try:
        omol.extract([water, ion, bad])
        raise AssertionError("a fractional charge passed")
    except StructureError as exc:
        assert exc.frame == 2 and "charge" in str(exc), exc

    # several tasks and no ?task=: refused with the choices
    try:
        UMAExtractor("none", uma, head=None)
        raise AssertionError("no error without a task")
    except ModelUnavailableError as exc:
        assert "uma-tiny.pt" in str(exc) and "oc20, odac, omat, omc, omol" in str(exc), exc

    # a DatasetSpecificMoEWrapper head: readout uses the task's expert of the energy MLP
    for task in ("omat", "oc20"):
        m = UMAExtractor(task, moe_head, head=task)
        assert m.energy_path == "output_heads.energyandforcehead.head.energy_block", m.energy_path
        check_energies(m, frames)

    # eSEN: plain eSCNMDBackbone and an 'efs' head, a single task taken without an option
    m = UMAExtractor("esen", esen, head=None)
    assert m.task == "omat" and m.energy_path == "output_heads.efs.energy_block", m.energy_path
    assert m.layers == ("interaction.0", "interaction.1", "last")
    check_energies(m, frames)

    # a torch file of another kind
    try:
        UMAExtractor("foreign", foreign, head="omat")
        raise AssertionError("foreign file loaded")
    except ModelUnavailableError as exc:
        assert "not-uma.pt" in str(exc) and "not a fairchem inference checkpoint" in str(exc), exc
    print("ok")
""")


def test_tasks_charge_spin_esen_and_foreign_files_in_the_env(built):
    """In the UMA env (one process, one fairchem import): per-task features, charge/spin (and a bad charge),
    the MoE-expert energy head, eSEN, a foreign file."""
    py = env_python("uma")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(root / "src")
    proc = subprocess.run([str(py), "-c", IN_ENV, built["checkpoint"], built["checkpoint_esen"], built["foreign"],
                           built["checkpoint_moe_head"]],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
