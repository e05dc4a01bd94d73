"""Bad-input matrix (docs/bad-input.md): every bad input gets a clear error naming file, frame and
reason, or is skipped with a report when asked; never a silent wrong number, never a bare traceback.

Fast model: ``descriptor-rdf``; one real model, ``chgnet-0.3.0``, loaded once for the module.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule

from mlipspace.cli import main
from mlipspace.data import read, read_with_report, write
from mlipspace.data.rows import check_aligned, row_table
from mlipspace.errors import (
    AlignmentError,
    InputError,
    ModelUnavailableError,
    StructureError,
    UnsupportedElementsError,
)
from mlipspace.models import ModelSpec, load, register, registry
from mlipspace.store import FeatureStore, extract_to_store

RDF = "descriptor-rdf"


@pytest.fixture(scope="module")
def rdf():
    return load(RDF)


@pytest.fixture(scope="module")
def chgnet():
    pytest.importorskip("chgnet")
    return load("chgnet-0.3.0", device="cpu")


def si() -> Atoms:
    return bulk("Si", "diamond", 5.43)


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run the console entry point in-process (registered test models are visible); (code, out, err)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return (0 if exc.value.code is None else exc.value.code), out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def finite_features(fs) -> bool:
    return all(np.isfinite(x).all() for x in fs.layers.values())


# --- structures --------------------------------------------------------------------------------
def test_unsupported_element_raises_or_skips(chgnet, rdf):
    am = Atoms("AmO", positions=[[0, 0, 0], [0, 0, 2.0]])  # Z = 95: outside CHGNet's 1..94
    frames = [si(), am, molecule("H2O")]
    with pytest.raises(UnsupportedElementsError, match=r"chgnet-0\.3\.0.*Am.*1"):
        chgnet.extract(frames)
    fs = chgnet.extract(frames, on_unsupported="skip")
    assert [i for i, _ in fs.skipped] == [1] and "Am" in fs.skipped[0][1]
    assert sorted(set(fs.rows["frame"])) == [0, 2] and finite_features(fs)
    ghost = Atoms("X", positions=[[0, 0, 0]])  # Z = 0: no element at all
    with pytest.raises(UnsupportedElementsError, match="frame 1"):
        rdf.extract([si(), ghost])


def test_unsupported_element_cli_names_frame(chgnet, tmp_path, capsys):
    path = tmp_path / "am.xyz"
    write([si(), Atoms("AmO", positions=[[0, 0, 0], [0, 0, 2.0]], cell=[8, 8, 8], pbc=True)], path)
    code, _, err = cli(capsys, "extract", path, "--model", "chgnet-0.3.0", "--store", tmp_path / "fs",
                       "--no-progress", "--device", "cpu")
    assert_one_line_error(code, err, "Am", "frame", "chgnet-0.3.0")
    code, out, err = cli(capsys, "extract", path, "--model", "chgnet-0.3.0", "--store", tmp_path / "fs",
                         "--no-progress", "--device", "cpu", "--on-unsupported", "skip", "--json")
    assert code == 0, err
    st = FeatureStore(tmp_path / "fs")
    key = st.datasets()[0]
    assert [f for f, _ in st.skipped(key, "chgnet-0.3.0")] == [1]


def test_empty_frame(rdf, chgnet, tmp_path):
    for model in (rdf, chgnet):
        with pytest.raises(StructureError, match="frame 1: .*(no atoms|empty)"):
            model.extract([si(), Atoms()])
    with pytest.raises(StructureError, match="frame 1: empty frame"):
        extract_to_store([si(), Atoms()], RDF, tmp_path / "fs", progress=False)
    assert not (tmp_path / "fs" / "datasets").exists() or not any((tmp_path / "fs" / "datasets").iterdir())


def test_single_atom_is_a_valid_frame(rdf, chgnet):
    for model in (rdf, chgnet):
        fs = model.extract([Atoms("Si", positions=[[0, 0, 0]])])
        assert fs.layers["last"].shape == (1, 64) and finite_features(fs)


@pytest.mark.parametrize("what", ["position", "cell"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_positions_or_cell(rdf, chgnet, what, bad):
    a = si()
    if what == "position":
        a.positions[1, 2] = bad
    else:
        cell = a.cell[:].copy()
        cell[0, 0] = bad
        a.set_cell(cell)
    for model in (rdf, chgnet):
        with pytest.raises(StructureError, match=f"frame 0: .*(NaN|inf).*{what}|frame 0: .*{what}.*(NaN|inf)"):
            model.extract([a])


def test_nonfinite_positions_in_file_name_file_and_frame(tmp_path, capsys):
    path = tmp_path / "nan.xyz"
    path.write_text(
        "2\nLattice=\"5 0 0 0 5 0 0 0 5\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"\n"
        "Si 0 0 0\nSi 1.3 1.3 1.3\n"
        "2\nLattice=\"5 0 0 0 5 0 0 0 5\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"\n"
        "Si 0 0 0\nSi nan 1.3 1.3\n"
    )
    with pytest.raises(StructureError, match=r"nan\.xyz, frame 1: non-finite"):
        read(path)
    with pytest.warns(UserWarning, match="skipped 1 bad"):
        frames, report = read_with_report(path, on_error="skip")
    assert len(frames) == 1 and report[0]["source_index"] == 1 and "non-finite" in report[0]["reason"]
    code, _, err = cli(capsys, "extract", path, "--model", RDF, "--store", tmp_path / "fs", "--no-progress")
    assert_one_line_error(code, err, "nan.xyz", "frame 1", "non-finite")


def test_atoms_closer_than_0_3_A(rdf, chgnet, tmp_path):
    close = Atoms("H2", positions=[[0, 0, 0], [0.1, 0, 0]])
    for model in (rdf, chgnet):
        with pytest.raises(StructureError, match=r"frame 0: atoms 0 \(H\) and 1 \(H\) are 0\.100 Å apart"):
            model.extract([close])
    # periodic images count: one atom in a 0.2 Å cubic cell is 0.2 Å from its image
    tiny = Atoms("H", positions=[[0, 0, 0]], cell=[0.2, 0.2, 0.2], pbc=True)
    with pytest.raises(StructureError, match="apart"):
        rdf.extract([tiny])
    with pytest.raises(StructureError, match="frame 1: atoms"):
        extract_to_store([si(), close], RDF, tmp_path / "fs", progress=False)


def test_isolated_atom_has_features(rdf, chgnet):
    """An atom with no neighbour inside the cutoff is allowed (as in the packages' calculators)."""
    lone = Atoms("CO", positions=[[0, 0, 0], [0, 0, 12.0]])
    for model in (rdf, chgnet):
        fs = model.extract([lone])
        assert fs.layers["last"].shape == (2, 64) and finite_features(fs)
    rad = rdf.extract([lone], layers=("radial",)).layers["radial"]
    assert np.all(rad == 0)  # no neighbour: an empty histogram, not noise


def test_molecule_without_cell(rdf, chgnet):
    water = molecule("H2O")
    assert not water.pbc.any() and water.cell.rank == 0
    for model in (rdf, chgnet):
        fs = model.extract([water])
        assert fs.layers["last"].shape == (3, 64) and finite_features(fs)
        # translating a non-periodic molecule changes nothing
        moved = water.copy()
        moved.translate([30.0, -7.0, 2.0])
        np.testing.assert_allclose(model.extract([moved]).layers["last"], fs.layers["last"], atol=1e-5)


def test_mixed_pbc_slab(rdf, chgnet):
    slab = fcc111("Cu", (2, 2, 3), vacuum=8.0)
    slab.pbc = (True, True, False)
    for model in (rdf, chgnet):
        fs = model.extract([slab])
        assert fs.layers["last"].shape == (12, 64) and finite_features(fs)
        # the vacuum size along the non-periodic axis does not matter (no image within the cutoff)
        wider = slab.copy()
        wider.center(vacuum=15.0, axis=2)
        np.testing.assert_allclose(model.extract([wider]).layers["last"], fs.layers["last"], atol=1e-4)


def test_5000_atom_cell(rdf, chgnet):
    big = bulk("Si", "diamond", 5.43, cubic=True).repeat((9, 9, 8))  # 5184 atoms
    assert len(big) > 5000
    for model in (rdf, chgnet):
        fs = model.extract([big])
        x = fs.layers["last"]
        assert x.shape == (len(big), 64) and np.isfinite(x).all()
        # a perfect crystal: every atom has the same environment
        assert np.abs(x - x[0]).max() < 1e-3


# --- files -------------------------------------------------------------------------------------
GOOD = ("2\nLattice=\"5 0 0 0 5 0 0 0 5\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"\n"
        "Si 0 0 0\nSi 1.3 1.3 1.3\n")


@pytest.mark.parametrize("text", [
    GOOD + "2\nLattice=\"5 0 0 0 5 0 0 0 5\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"\nSi 0 0 0\n",
    GOOD[:60],
    "garbage \x00\x01 not xyz\n",
    "",
], ids=["frame-cut-short", "header-cut", "binary-garbage", "empty-file"])
def test_truncated_or_corrupted_extxyz(tmp_path, capsys, text):
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    with pytest.raises(StructureError, match=r"bad\.xyz"):
        read(path)
    code, _, err = cli(capsys, "data", "describe", path)
    assert_one_line_error(code, err, "bad.xyz")


def test_truncated_file_skipped_with_report(tmp_path):
    good, bad = tmp_path / "a.xyz", tmp_path / "b.xyz"
    good.write_text(GOOD)
    bad.write_text(GOOD[:60])
    with pytest.warns(UserWarning, match="skipped 1 bad"):
        frames, report = read_with_report([good, bad], on_error="skip")
    assert len(frames) == 1 and len(report) == 1 and "b.xyz" in str(report[0]["source"])


def test_missing_file(tmp_path, capsys):
    with pytest.raises(StructureError, match="nope.xyz: file not found"):
        read(tmp_path / "nope.xyz")
    with pytest.raises(StructureError, match="file not found"):  # also when skipping bad frames
        read(tmp_path / "nope.xyz", on_error="skip")
    code, _, err = cli(capsys, "extract", tmp_path / "nope.xyz", "--model", RDF, "--store", tmp_path / "fs")
    assert_one_line_error(code, err, "nope.xyz", "not found")
    assert not (tmp_path / "fs").exists()


# --- models and checkpoints --------------------------------------------------------------------
def test_unknown_model_name(tmp_path, capsys):
    with pytest.raises(ModelUnavailableError, match="unknown model 'chgnet-9.9'.*chgnet-0.3.0"):
        load("chgnet-9.9")
    code, _, err = cli(capsys, "extract", "builtin:mad-mini?size=4", "--model", "chgnet-9.9",
                       "--store", tmp_path / "fs", "--no-progress")
    assert_one_line_error(code, err, "unknown model 'chgnet-9.9'")


def test_checkpoint_missing_or_of_another_family(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("chgnet")
    from mlipspace.experiments.finetune import _chgnet_checkpoint_extractor

    with pytest.raises(InputError, match="no such checkpoint"):
        _chgnet_checkpoint_extractor(tmp_path / "none.pth.tar")
    other = tmp_path / "sevennet.pth"
    torch.save({"config": {"family": "sevennet"}, "model_state_dict": {}}, other)
    with pytest.raises(ModelUnavailableError, match="sevennet.pth: not a CHGNet checkpoint"):
        _chgnet_checkpoint_extractor(other)


def test_checkpoint_that_is_not_a_model(tmp_path):
    pytest.importorskip("chgnet")
    from mlipspace.experiments.finetune import _chgnet_checkpoint_extractor

    junk = tmp_path / "notes.pth.tar"
    junk.write_text("this is not a checkpoint\n")
    with pytest.raises(ModelUnavailableError, match="notes.pth.tar"):
        _chgnet_checkpoint_extractor(junk)


def _nan_toy_module():
    """A registry module whose torch toy model returns NaN features for every frame holding oxygen."""
    torch = pytest.importorskip("torch")
    from mlipspace.models._torch_utils import Tap, TorchExtractor

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = torch.nn.Embedding(119, 4)
            self.head = torch.nn.Linear(4, 1)

        def forward(self, z):
            h = self.embed(z)
            h = torch.where((z == 8)[:, None], torch.full_like(h, float("nan")), h)
            return self.head(h).sum()

    class NanToy(TorchExtractor):
        family, device = "toy", "cpu"
        layers = ("last",)
        dims = {"last": 4}
        elements = frozenset(range(1, 119))

        def __init__(self, name):
            self.name = name
            self.fingerprint = {"model": name, "checkpoint_sha256": "toy"}
            self.model = Net()

        def _taps(self):
            return {"last": Tap("head", pre=True)}

        def _forward(self, frames):
            self.model(torch.as_tensor(np.concatenate([a.numbers for a in frames]), dtype=torch.long))

    mod = types.ModuleType("mlipspace.models._test_nan_toy")
    mod.load = lambda spec, device="cpu": NanToy(spec.name)
    return mod


@pytest.fixture
def nan_toy(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlipspace.models._test_nan_toy", _nan_toy_module())
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register(ModelSpec("test-nan-toy", "toy", "_test_nan_toy", (), "returns NaN for oxygen"))
    from mlipspace.store import pipeline

    monkeypatch.setattr(pipeline, "_MODELS", {})
    return "test-nan-toy"


def test_model_returning_nan_features_names_the_frame(nan_toy, tmp_path, capsys):
    frames = [si(), bulk("Cu", "fcc", 3.6), molecule("H2O"), molecule("CH4")]
    with pytest.raises(StructureError, match=r"frame 2: test-nan-toy returned non-finite .*'last'"):
        load(nan_toy).extract(frames)
    # through the store, with shards of 2 frames: the dataset's frame is named, nothing is stored
    with pytest.raises(StructureError, match=r"frame 2: test-nan-toy returned non-finite"):
        extract_to_store(frames, nan_toy, tmp_path / "fs", shard_size=2, progress=False)
    st = FeatureStore(tmp_path / "fs")
    key = st.datasets()[0]
    assert nan_toy not in st.models(key) or not st.is_complete(key, nan_toy)
    # the CLI: one line naming the frame; the builtin dataset has oxygen in some frame
    path = tmp_path / "w.xyz"
    write(frames, path)
    code, _, err = cli(capsys, "extract", path, "--model", nan_toy, "--store", tmp_path / "fs2",
                       "--no-progress", "--shard-size", "2")
    assert_one_line_error(code, err, "frame 2", "non-finite")


# --- features and metrics ----------------------------------------------------------------------
def test_features_of_datasets_differing_by_one_frame(rdf, tmp_path):
    from mlipspace.data import builtin

    frames = builtin("mad-mini", size=8)
    rows = row_table(frames)
    keep = rows["frame"] != 3
    other = {k: v[keep] for k, v in rows.items()}
    with pytest.raises(AlignmentError, match=r"frame 3"):
        check_aligned(rows, other, ("a", "b"))
    # one frame moved by 0.01 Å: a different dataset in the store, never silently compared
    moved = [a.copy() for a in frames]
    moved[5].positions[0, 0] += 0.01
    a = extract_to_store(frames, RDF, tmp_path / "fs", progress=False)
    b = extract_to_store(moved, RDF, tmp_path / "fs", progress=False)
    assert a["dataset"] != b["dataset"]


def test_zero_variance_feature_space(tmp_path, capsys):
    from mlipspace import metrics

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    const = np.ones((60, 3))
    for fn in (metrics.gfre, metrics.gfrd):
        with pytest.raises(InputError, match="zero variance"):
            fn(X, const)
        with pytest.raises(InputError, match="zero variance"):
            fn(const, X)
    with pytest.raises(InputError, match="zero variance"):
        metrics.lfre(X, const, k=10)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "C.npy", const)
    code, _, err = cli(capsys, "metrics", tmp_path / "X.npy", tmp_path / "C.npy", "--metric", "gfre")
    assert_one_line_error(code, err, "zero variance")
