"""Registry, static model metadata, the ``mlipspace models`` command and the generic torch extractor."""

import json
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list

from mlipspace.errors import InputError, ModelUnavailableError, UnsupportedElementsError
from mlipspace.models import registry
from mlipspace.models.base import sha256_files
from mlipspace.models._torch_utils import parse_layers, unsupported_frames, with_vacuum

MINE = {"chgnet-0.3.0": "chgnet", "chgnet-0.2.0": "chgnet", "chgnet-r2scan": "chgnet", "diep-r2scan": "diep"}


def test_chgnet_and_diep_names_are_registered():
    for name, family in MINE.items():
        spec = registry.get_spec(name)
        assert spec.family == family and spec.module == family
    assert registry.get_spec("chgnet-r2scan").options["version"] == "r2scan"


def test_unknown_name_lists_known_ones():
    with pytest.raises(ModelUnavailableError, match="unknown model 'chgnet-9'.*chgnet-0.3.0"):
        registry.get_spec("chgnet-9")


def test_missing_package_is_reported_not_imported(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register(registry.ModelSpec("fake-x", "chgnet", "chgnet", ("no_such_package_xyz",)))
    assert "no_such_package_xyz" in registry.why_unavailable("fake-x")
    with pytest.raises(ModelUnavailableError, match="fake-x.*not available"):
        registry.load("fake-x")


def test_static_description_needs_no_torch():
    """``mlipspace models`` must stay cheap: adapters and the listing import neither torch nor chgnet/diep."""
    code = (
        "import sys, json\n"
        "from mlipspace.cli import main\n"
        "try:\n    main(['models', '--json'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in ('torch', 'chgnet', 'diep', 'pymatgen') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    listing, _, imported = out.rstrip().rpartition("\n")
    assert json.loads(imported) == []
    infos = {info["name"]: info for info in json.loads(listing)}
    assert set(MINE) <= set(infos)
    assert infos["chgnet-0.3.0"]["layers"] == ["interaction.0", "interaction.1", "interaction.2", "interaction.3", "last"]
    assert infos["chgnet-0.3.0"]["elements"]["count"] == 94
    assert infos["diep-r2scan"]["layers"][-1] == "last" and infos["diep-r2scan"]["dims"]["last"] == 64
    assert infos["diep-r2scan"]["elements"]["count"] == 89
    assert all(info["source"] == "static" for info in infos.values())


def test_models_command_table_and_unknown_name(capsys):
    from mlipspace.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["models", "chgnet-0.3.0", "diep-r2scan"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "chgnet-0.3.0" in out and "diep-r2scan" in out and "94 (H-Pu)" in out
    with pytest.raises(SystemExit) as exc:
        main(["models", "not-a-model"])
    assert exc.value.code == 1
    assert "unknown model 'not-a-model'" in capsys.readouterr().err


@pytest.mark.models
def test_models_command_load_matches_static():
    pytest.importorskip("chgnet")
    from mlipspace.commands.models import model_info

    static, loaded = model_info("chgnet-0.2.0"), model_info("chgnet-0.2.0", load=True)
    assert loaded["source"] == "loaded" and loaded["fingerprint"]["model"] == "chgnet-0.2.0"
    assert (loaded["layers"], loaded["dims"], loaded["elements"]) == (static["layers"], static["dims"], static["elements"])


# --- helpers of _torch_utils that need no model package ------------------------------------------


def _min_image_distance(atoms, cutoff):
    """Smallest distance between an atom and a periodic image of any atom (inf if none within cutoff)."""
    i, j, d, shifts = neighbor_list("ijdS", atoms, cutoff)
    image = np.any(shifts != 0, axis=1)
    return d[image].min() if image.any() else np.inf


@pytest.mark.parametrize("kind", ["molecule", "slab", "skewed-slab", "wire"])
def test_with_vacuum_keeps_images_beyond_the_cutoff(kind):
    cutoff = 6.0
    if kind == "molecule":
        atoms = molecule("CH3CH2OH")
    elif kind == "slab":
        atoms = fcc111("Cu", size=(2, 2, 3), vacuum=1.0)
    elif kind == "skewed-slab":
        atoms = fcc111("Cu", size=(2, 2, 3), vacuum=1.0)
        cell = atoms.cell.array.copy()
        cell[2] += [3.0, 1.0, 0.0]  # non-periodic vector not orthogonal to the surface
        atoms.set_cell(cell)
    else:
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (1, 1, 3)
        atoms.pbc = [False, False, True]
    boxed = with_vacuum(atoms, cutoff)
    assert boxed.pbc.all()
    np.testing.assert_array_equal(boxed.positions, atoms.positions)
    np.testing.assert_array_equal(boxed.numbers, atoms.numbers)
    # periodic axes keep their vectors
    for ax in np.flatnonzero(atoms.pbc):
        np.testing.assert_allclose(boxed.cell[ax], atoms.cell[ax])
    # same neighbour list as the original along the periodic axes, and no new images
    if kind == "molecule":
        assert _min_image_distance(boxed, cutoff) > cutoff
    ref_i, ref_d = neighbor_list("id", atoms, cutoff)
    new_i, new_d = neighbor_list("id", boxed, cutoff)
    assert len(new_d) == len(ref_d)
    np.testing.assert_allclose(np.sort(new_d), np.sort(ref_d), atol=1e-9)
    np.testing.assert_array_equal(np.bincount(new_i, minlength=len(atoms)), np.bincount(ref_i, minlength=len(atoms)))


def test_with_vacuum_leaves_bulk_alone():
    si = bulk("Si")
    boxed = with_vacuum(si, 6.0)
    np.testing.assert_array_equal(boxed.cell.array, si.cell.array)


def test_parse_layers_and_unsupported_frames():
    layers = ("interaction.0", "interaction.1", "last")
    assert parse_layers("all", layers) == list(layers)
    assert parse_layers("last", layers) == ["last"]
    assert parse_layers(["last", "interaction.0", "last"], layers) == ["last", "interaction.0"]
    with pytest.raises(InputError, match="unknown layer.*'gate.3'"):
        parse_layers(["gate.3"], layers)
    frames = [molecule("H2O"), Atoms("UPo", positions=[[0, 0, 0], [0, 0, 2]]), bulk("Si")]
    assert unsupported_frames(frames, range(1, 84)) == {1: [84, 92]}


def test_sha256_files_is_order_independent(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"alpha")
    b.write_bytes(b"beta")
    assert sha256_files([a, b]) == sha256_files([b, a]) != sha256_files([a])
    assert len(sha256_files([a])) == 64


# --- the generic TorchExtractor on a toy torch model ---------------------------------------------


class _Toy:
    """A tiny 'model': embedding by Z, two mixing blocks, per-atom readout; batched over frames."""

    @staticmethod
    def build():
        torch = pytest.importorskip("torch")
        from mlipspace.models._torch_utils import Tap, TorchExtractor

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.embed = torch.nn.Embedding(10, 4)
                self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])
                self.head = torch.nn.Linear(4, 1)

            def forward(self, z, owner):
                h = self.embed(z)
                for block in self.blocks:
                    mean = torch.zeros(int(owner.max()) + 1, 4).index_add_(0, owner, h)[owner]
                    h = torch.tanh(block(h) + 0.1 * mean)  # depends on the other atoms of the frame
                return self.head(h).sum()

        class ToyExtractor(TorchExtractor):
            name, family, device = "toy", "toy", "cpu"
            layers = ("interaction.0", "interaction.1", "last")
            dims = {layer: 4 for layer in layers}
            elements = frozenset(range(1, 10))
            fingerprint = {"model": "toy"}

            def __init__(self):
                self.model = Net()
                self.calls = []

            def _taps(self):
                return {"interaction.0": Tap("blocks.0"), "interaction.1": Tap("blocks.1"),
                        "last": Tap("head", pre=True)}

            def _forward(self, frames):
                self.calls.append(len(frames))
                z = torch.as_tensor(np.concatenate([a.numbers for a in frames]), dtype=torch.long)
                owner = torch.as_tensor(np.repeat(np.arange(len(frames)), [len(a) for a in frames]))
                self.model(z, owner)

        return ToyExtractor()


def test_torch_extractor_batches_rows_and_skips():
    toy = _Toy.build()
    frames = [Atoms("H2O", positions=np.eye(3)), Atoms("Na", positions=[[0, 0, 0]]),
              Atoms("CO", positions=np.eye(3)[:2]), Atoms("CN", positions=np.eye(3)[:2])]  # Na: Z=11 unsupported
    with pytest.raises(UnsupportedElementsError, match="'toy'.*Na.*frame\\(s\\) 1"):
        toy.extract(frames)
    fs = toy.extract(frames, layers="all", batch_size=2, on_unsupported="skip")
    assert toy.calls[-2:] == [2, 1]  # three kept frames in batches of two
    assert fs.skipped == [(1, "unsupported element(s) Na for toy")]
    np.testing.assert_array_equal(fs.rows["frame"], [0, 0, 0, 2, 2, 3, 3])
    np.testing.assert_array_equal(fs.rows["Z"], [1, 1, 8, 6, 8, 6, 7])
    assert all(v.shape == (7, 4) and v.dtype == np.float32 for v in fs.layers.values())
    alone = toy.extract([frames[3]], layers="all")
    for layer in toy.layers:
        np.testing.assert_allclose(alone.layers[layer], fs.layers[layer][5:], rtol=1e-6)
    # hooks are removed afterwards and do not alter the forward
    assert not toy.model.head._forward_pre_hooks and not toy.model.blocks[0]._forward_hooks


def test_torch_extractor_checks_arguments():
    toy = _Toy.build()
    frames = [Atoms("H2", positions=np.eye(3)[:2])]
    with pytest.raises(InputError, match="batch_size"):
        toy.extract(frames, batch_size=0)
    with pytest.raises(InputError, match="expected ase.Atoms"):
        toy.extract(["H2"])
    with pytest.raises(ValueError, match="frame 0: positions contain NaN"):
        toy.extract([Atoms("H", positions=[[np.nan, 0, 0]])])
    with pytest.raises(ValueError, match="frame 0: periodic .*cell vector .* zero"):
        toy.extract([Atoms("H", positions=[[0, 0, 0]], pbc=True)])
    empty = toy.extract([], layers="last")
    assert empty.layers["last"].shape == (0, 4) and len(empty.rows["frame"]) == 0


def test_checkpoint_head_option_has_one_name_and_the_familys_own(tmp_path):
    """``head`` is the output selection of every checkpoint family; UMA's ``task`` and PET's ``target``
    are the same option (either spelling, not both); a family without heads refuses it."""
    from mlipspace.errors import InputError
    from mlipspace.models.mattersim import MatterSimExtractor
    from mlipspace.models.pet import PETExtractor
    from mlipspace.models.registry import parse_checkpoint_spec
    from mlipspace.models.uma import UMAExtractor

    f = tmp_path / "x.pt"
    f.write_bytes(b"")
    assert UMAExtractor.spec_options(parse_checkpoint_spec(f"uma:{f}?task=omat"))[1] == {"head": "omat"}
    assert UMAExtractor.spec_options(parse_checkpoint_spec(f"uma:{f}?head=omat"))[1] == {"head": "omat"}
    assert PETExtractor.spec_options(parse_checkpoint_spec(f"pet:{f}"))[1] == {"head": "energy"}
    assert parse_checkpoint_spec(f"uma:{f}?task=omat").name == "uma-x@omat"
    with pytest.raises(InputError, match="give head or task, not both"):
        UMAExtractor.spec_options(parse_checkpoint_spec(f"uma:{f}?task=omat&head=omol"))
    with pytest.raises(InputError, match=r"unknown option\(s\) head; MatterSim checkpoints take no options"):
        MatterSimExtractor.spec_options(parse_checkpoint_spec(f"mattersim:{f}?head=omat"))
