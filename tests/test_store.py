"""Feature store: round trips, keys, provenance, alignment, atomic objects, the ``store ls`` command."""

import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, molecule

import mlipspace.store as mstore
from mlipspace.data import fingerprint
from mlipspace.errors import AlignmentError, StoreError, UnsupportedElementsError
from mlipspace.models import load
from mlipspace.models.base import Extractor, FeatureSet
from mlipspace.store import FeatureStore, extract_to_store, load_aligned

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL = "descriptor-rdf"


def small_frames():
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for i, a in enumerate([bulk("NaCl", "rocksalt", 5.64) * (2, 1, 1), molecule("CH3CH2OH"),
                           bulk("Cu", "fcc", 3.6, cubic=True), molecule("H2O"), bulk("Si", "diamond", 5.43)]):
        a.info["subset"] = "bulk" if a.pbc.any() else "molecules"
        a.info["tag"] = i
        a.set_initial_magnetic_moments(np.arange(len(a)) * 0.5)
        a.rattle(0.01, seed=i)
        if i % 2 == 0:
            a.calc = SinglePointCalculator(a, energy=-1.5 * i, forces=np.full((len(a), 3), 0.1 * i),
                                           stress=np.arange(6.0))
        frames.append(a)
    return frames


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "fs"
    frames = small_frames()
    summary = extract_to_store(frames, [MODEL], path, layers="all", shard_size=2, progress=False)
    return path, frames, summary


def test_features_match_direct_extraction(filled):
    path, frames, summary = filled
    st = FeatureStore(path)
    key = summary["dataset"]
    assert key == fingerprint(frames)[:12] and st.datasets() == [key]
    direct = load(MODEL).extract(frames, layers="all")
    for layer in ("radial", "last"):
        np.testing.assert_array_equal(st.features(key, MODEL, layer), direct.layers[layer])
    rows = st.rows(key, MODEL)
    for field in ("frame", "atom", "Z", "subset"):
        np.testing.assert_array_equal(rows[field], direct.rows[field])
    assert st.models(key) == [MODEL] and st.layers(key, MODEL) == ["radial", "last"]  # model order
    assert st.is_complete(key, MODEL, ["last", "radial"]) and not st.is_complete(key, MODEL, ["backbone"])
    assert st.fingerprint(key, MODEL) == load(MODEL).fingerprint
    # datasets can be named by frames, fingerprint prefix or key
    assert st.resolve(frames) == st.resolve(fingerprint(frames)[:8]) == key


def test_lazy_arrays_stream(filled):
    path, _, summary = filled
    st = FeatureStore(path)
    lazy = st.features(summary["dataset"], MODEL, "last", lazy=True)
    full = st.features(summary["dataset"], MODEL, "last")
    assert lazy.shape == full.shape and lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy[3:11], full[3:11])
    gram = sum(lazy[i:i + 7].astype(np.float64).T @ lazy[i:i + 7] for i in range(0, lazy.shape[0], 7))
    np.testing.assert_allclose(gram, full.astype(np.float64).T @ full, rtol=1e-10)


def test_frames_round_trip_with_labels(filled):
    path, frames, summary = filled
    back = FeatureStore(path).frames(summary["dataset"])
    assert fingerprint(back) == fingerprint(frames)
    assert back[0].info["energy"] == 0.0 and back[2].info["energy"] == -3.0
    np.testing.assert_array_equal(back[2].arrays["forces"], np.full((len(frames[2]), 3), 0.2))
    np.testing.assert_array_equal(back[4].get_stress(voigt=True), np.arange(6.0))
    assert "energy" not in back[1].info and back[1].calc is None
    assert back[3].info["tag"] == 3 and back[3].info["subset"] == "molecules"
    for a, b in zip(frames, back):
        np.testing.assert_array_equal(b.get_initial_magnetic_moments(), a.get_initial_magnetic_moments())
    info = FeatureStore(path).dataset_info(summary["dataset"])
    assert info["n_frames"] == 5 and info["labels"] == ["energy", "forces", "stress"]
    assert info["subsets"] == {"bulk": 3, "molecules": 2}


def test_mapping_keys_and_values(filled):
    path, frames, summary = filled
    key = summary["dataset"]
    m = mstore.open(path)
    keys = set(m)
    assert {f"{key}/{MODEL}/last", f"{key}/{MODEL}/radial", f"{key}/{MODEL}/rows", f"{key}/rows",
            f"{key}/frames/positions"} <= keys
    assert len(m) == len(keys)
    np.testing.assert_array_equal(m[f"{key}/{MODEL}/last"], FeatureStore(path).features(key, MODEL, "last"))
    rows = m[f"{key}/rows"]
    assert rows.dtype.names == ("frame", "atom", "Z", "subset") and len(rows) == sum(len(a) for a in frames)
    np.testing.assert_array_equal(m[f"{key}/frames/numbers"], np.concatenate([a.numbers for a in frames]))
    with pytest.raises(KeyError):
        m[f"{key}/{MODEL}/nope"]
    with pytest.raises(TypeError):
        m["x"] = 1  # read-only


def test_structure_arrays(tmp_path):
    frames = small_frames()
    path = tmp_path / "fs"
    extract_to_store(frames, MODEL, path, progress=False)
    st = FeatureStore(path, mode="a")
    key = st.datasets()[0]
    cum = np.random.default_rng(0).normal(size=(len(frames), 128))
    st.put_structure(key, MODEL, "cumulants", cum, {"orders": [1, 2], "layer": "last"})
    np.testing.assert_array_equal(st.get_structure(key, MODEL, "cumulants"), cum)
    assert st.structure_attrs(key, MODEL, "cumulants") == {"orders": [1, 2], "layer": "last"}
    assert f"{key}/{MODEL}/structure/cumulants" in mstore.open(path)
    st.put_structure(key, MODEL, "cumulants", cum[:2])  # overwrite replaces
    assert st.get_structure(key, MODEL, "cumulants").shape == (2, 128)
    with pytest.raises(StoreError, match="exists"):
        st.put_structure(key, MODEL, "cumulants", cum, overwrite=False)
    with pytest.raises(StoreError, match="read-only"):
        FeatureStore(path).put_structure(key, MODEL, "x", cum)
    with pytest.raises(StoreError, match="no features of model"):
        st.put_structure(key, "chgnet-0.3.0", "x", cum)
    assert not list((path / ".tmp").iterdir())  # nothing left aside


def test_layers_added_later_and_skip_stored(tmp_path):
    frames = small_frames()
    path = tmp_path / "fs"
    s1 = extract_to_store(frames, MODEL, path, layers="last", progress=False)
    assert FeatureStore(path).layers(s1["dataset"], MODEL) == ["last"]
    s2 = extract_to_store(frames, MODEL, path, layers="radial,last", progress=False)
    assert s2["models"][MODEL]["layers"] == ["radial"]  # only the missing layer was extracted
    s3 = extract_to_store(frames, MODEL, path, layers="all", progress=False)
    assert s3["models"][MODEL]["status"] == "already stored"


class _Fake(Extractor):
    """A tiny extractor whose fingerprint and supported elements tests choose."""

    family = "fake"
    layers = ("last",)
    dims = {"last": 3}
    device = "cpu"

    def __init__(self, name, elements=range(1, 119), tag="a"):
        self.name = name
        self.elements = frozenset(elements)
        self.fingerprint = {"model": name, "checkpoint_sha256": tag}

    def extract(self, frames, layers=("last",), batch_size=8, on_unsupported="raise"):
        from mlipspace.data.rows import row_table

        rows = row_table(frames)
        x = np.stack([rows["Z"], rows["atom"], rows["frame"]], axis=1).astype(np.float32)
        return FeatureSet(self.name, {"last": x}, rows, dict(self.fingerprint))


def test_fingerprint_conflict_is_refused(tmp_path):
    frames = small_frames()
    extract_to_store(frames, [_Fake("fake")], tmp_path / "fs", progress=False)
    with pytest.raises(StoreError, match="different model.*checkpoint_sha256"):
        extract_to_store(frames, [_Fake("fake", tag="b")], tmp_path / "fs", progress=False)


def test_unsupported_raise_and_skip_then_alignment_error(tmp_path):
    frames = small_frames()  # frame 1 (ethanol) and 3 (water) contain H and O
    no_h = _Fake("noh", elements=set(range(2, 119)))
    with pytest.raises(UnsupportedElementsError, match="frame 1: C, H, O|frame 1: .*H"):
        extract_to_store(frames, [no_h], tmp_path / "fs", progress=False)
    s = extract_to_store(frames, [no_h, _Fake("all")], tmp_path / "fs", on_unsupported="skip", progress=False)
    st = FeatureStore(tmp_path / "fs")
    key = s["dataset"]
    assert [f for f, _ in st.skipped(key, "noh")] == [1, 3] and st.skipped(key, "all") == []
    assert set(st.rows(key, "noh")["frame"]) == {0, 2, 4}
    with pytest.raises(AlignmentError, match="frame 1"):
        load_aligned(st, key, ["all", "noh"], "last")
    feats, rows = load_aligned(tmp_path / "fs", key, ["all", MODEL] if MODEL in st.models(key) else ["all"], "last")
    assert feats["all"].shape == (len(rows["frame"]), 3)


def test_load_aligned_two_models(filled, tmp_path):
    path, frames, summary = filled
    extract_to_store(frames, [_Fake("fake")], path, progress=False)
    feats, rows = load_aligned(path, summary["dataset"], [MODEL, "fake"], "last")
    assert feats[MODEL].shape == (len(rows["frame"]), 64) and feats["fake"].shape[1] == 3
    np.testing.assert_array_equal(feats["fake"][:, 0], rows["Z"])


def test_incomplete_shard_is_never_read(tmp_path):
    """A shard directory without a completed meta.json (e.g. a copied half-written one) is redone."""
    frames = small_frames()
    ref = tmp_path / "ref"
    extract_to_store(frames, MODEL, ref, shard_size=2, progress=False)
    path = tmp_path / "fs"
    st = FeatureStore(path, mode="a")
    key = st.add_dataset(frames)
    bad = path / "staging" / key / MODEL / "shard_000000000_000000002"
    bad.mkdir(parents=True)
    np.save(bad / "layer.last.npy", np.zeros((3, 64), np.float32))  # garbage, no meta.json
    s = extract_to_store(frames, MODEL, path, shard_size=2, progress=False)
    assert s["models"][MODEL]["extracted_shards"] == 3
    np.testing.assert_array_equal(st.features(key, MODEL, "last"), FeatureStore(ref).features(key, MODEL, "last"))
    assert not (path / "staging").exists()


def test_store_errors(tmp_path):
    with pytest.raises(StoreError, match="no feature store"):
        FeatureStore(tmp_path / "none")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore(tmp_path / "full", mode="a")
    st = FeatureStore(tmp_path / "new", mode="a")
    with pytest.raises(StoreError, match="no dataset"):
        st.features("abcdef", MODEL, "last")


def test_cli_extract_and_ls(tmp_path):
    from typer.testing import CliRunner

    from mlipspace.cli import app  # importing cli registers every command

    runner = CliRunner()
    path = tmp_path / "fs"
    res = runner.invoke(app, ["extract", "builtin:mad-mini?size=6", "--model", MODEL, "--layers", "all",
                              "--store", str(path), "--shard-size", "4", "--json"])
    assert res.exit_code == 0, (res.output, repr(res.exception))
    out = json.loads(res.stdout)
    assert out["models"][MODEL]["layers"] == ["radial", "last"]
    res = runner.invoke(app, ["store", "ls", str(path), "--json"])
    assert res.exit_code == 0, (res.output, repr(res.exception))
    ls = json.loads(res.stdout)
    assert ls[0]["spec"] == "builtin:mad-mini?size=6" and ls[0]["n_frames"] == 6
    rec = ls[0]["models"][0]
    assert rec["complete"] and {x["layer"]: x["shape"][1] for x in rec["layers"]} == {"last": 64, "radial": 64}
    res = runner.invoke(app, ["store", "ls", str(path)], env={"COLUMNS": "200"})  # no wrapped cells
    assert res.exit_code == 0, (res.output, repr(res.exception))
    assert "complete" in res.stdout and MODEL in res.stdout and f"{ls[0]['n_atoms']}×64" in res.stdout


def test_cli_errors_are_one_line(tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "mlipspace.cli", "store", "ls", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "no feature store" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(not (SHARED / "mad-bench-mad-reduced.xyz").exists(), reason="../shared/data is absent")
def test_real_dataset_labels_round_trip(tmp_path):
    from mlipspace.data import read

    spec = str(SHARED / "mad-bench-mad-reduced.xyz")
    frames = read(spec)[:12]
    s = extract_to_store(frames, MODEL, tmp_path / "fs", progress=False)
    back = FeatureStore(tmp_path / "fs").frames(s["dataset"])
    assert fingerprint(back) == fingerprint(frames)
    for a, b in zip(frames, back):
        assert a.info["energy"] == b.info["energy"] and a.info["subset"] == b.info["subset"]
        np.testing.assert_array_equal(a.arrays["forces"], b.arrays["forces"])


def test_frame_table(filled):
    path, frames, summary = filled
    st = FeatureStore(path)
    table = st.frame_table(summary["dataset"])
    np.testing.assert_array_equal(table["natoms"], [len(a) for a in frames])
    assert list(table["subset"]) == [a.info["subset"] for a in frames]
    assert np.isnan(table["energy"][1]) and table["energy"][2] == -3.0 and table["stress"].shape == (5, 6)
    assert list(mstore.open(path)[f"{summary['dataset']}/frames/subset"]) == list(table["subset"])


def test_lazy_arrays_feed_streaming_gfre(filled):
    """Stored zarr arrays go straight into the streaming GFRE: same number as in memory."""
    from mlipspace.metrics import gfre

    path, _, summary = filled
    st = FeatureStore(path)
    key = summary["dataset"]
    n = len(st.rows(key, MODEL)["frame"])
    rng = np.random.default_rng(0)
    test = np.sort(rng.choice(n, n // 4, replace=False))
    train = np.setdiff1d(np.arange(n), test)
    lazy = [st.features(key, MODEL, layer, lazy=True) for layer in ("radial", "last")]
    full = [st.features(key, MODEL, layer) for layer in ("radial", "last")]
    streamed = gfre(*lazy, train_idx=train, test_idx=test, chunk_size=7)
    assert streamed == pytest.approx(gfre(*full, train_idx=train, test_idx=test), rel=1e-8, abs=1e-10)
    assert 0 <= streamed < 1.5
