"""Readers (extxyz, mlearn JSON, globs, lists), validation, consistency filter, fingerprint, CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write as ase_write

from mlipspace.data import (
    consistent,
    fingerprint,
    read,
    read_mlearn,
    read_with_report,
    validate,
    write,
)
from mlipspace.errors import InputError, StructureError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _need_shared():
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} is absent")


def _labelled(n_frames=3):
    frames = []
    for k in range(n_frames):
        a = bulk("Cu", cubic=True) * (1, 1, 1 + k)
        a.calc = SinglePointCalculator(
            a, energy=-3.5 * len(a), forces=np.full((len(a), 3), 0.1 * k), stress=np.arange(6) * 1e-3
        )
        a.info["subset"] = "bulk" if k % 2 == 0 else "rattled"
        frames.append(a)
    return frames


# ------------------------------------------------------------------------------------ shared data
def test_shared_xyz_files_load_with_labels():
    _need_shared()
    frames = read(str(SHARED / "*.xyz"))
    assert len(frames) == 170
    for a in frames:
        assert isinstance(a.info["energy"], float)
        assert a.arrays["forces"].shape == (len(a), 3)
        assert a.info["source"].endswith(".xyz") and isinstance(a.info["source_index"], int)
        assert a.info["subset"]
        assert a.get_potential_energy() == a.info["energy"]  # calculator kept
    mad = [a for a in frames if a.info["source"].endswith("mad-bench-mad-reduced.xyz")]
    assert {a.info["dataset"] for a in mad} >= {"MAD", "MPtrj", "SPICE"}
    assert any(a.info["subset"] == "MPtrj" for a in mad)  # no subset tag -> dataset name
    assert sum("stress" in a.info for a in frames) >= 101
    hea = [a for a in frames if "hea" in a.info["source"]]
    assert {a.info["subset"] for a in hea} == {"hea_samples_bulk"}  # file stem


def test_shared_mlearn_json_loads_with_labels_and_groups():
    _need_shared()
    files = sorted((SHARED / "mlearn").glob("*.json"))
    if not files:
        pytest.skip("no mlearn files")
    frames = read([str(f) for f in files])
    raw = [e for f in files for e in json.loads(f.read_text())]
    assert len(frames) == len(raw)
    for a, e in zip(frames[:: 37], raw[:: 37]):
        assert a.info["subset"] == e["group"]
        assert a.info["energy"] == pytest.approx(e["outputs"]["energy"])
        np.testing.assert_allclose(a.arrays["forces"], e["outputs"]["forces"])
        assert a.info["stress"].shape == (6,)
        assert len(a) == e["num_atoms"]
        np.testing.assert_allclose(a.cell[:], e["structure"]["lattice"]["matrix"])
        np.testing.assert_allclose(a.positions, [s["xyz"] for s in e["structure"]["sites"]])
    assert {a.info["subset"] for a in frames} == {"Vacancy", "Surface", "AIMD-NVT", "Elastic"}


def test_mlearn_recognised_by_content_not_extension(tmp_path):
    _need_shared()
    src = SHARED / "mlearn" / "Si_test.json"
    if not src.exists():
        pytest.skip("no Si_test.json")
    target = tmp_path / "renamed.data"
    target.write_bytes(src.read_bytes())
    frames = read(target)
    assert len(frames) == len(read_mlearn(src))
    assert all(a.info["dataset"] == "mlearn" for a in frames)


def test_mlearn_fractional_coordinates_and_stress_convention(tmp_path):
    entry = {
        "structure": {
            "lattice": {"matrix": [[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]]},
            "sites": [
                {"species": [{"element": "Si", "occu": 1}], "abc": [0, 0, 0]},
                {"species": [{"element": "Si", "occu": 1}], "abc": [0.5, 0.5, 0.5]},
            ],
        },
        "group": "Elastic",
        "outputs": {"energy": -10.0, "forces": [[0, 0, 0], [0, 0, 0.1]], "virial_stress": [10, 20, 30, 1, 2, 3]},
    }
    path = tmp_path / "m.json"
    path.write_text(json.dumps([entry]))
    (a,) = read(path)
    np.testing.assert_allclose(a.positions[1], [2, 2, 2])
    kbar = 0.1 / 160.21766208
    # VASP order xx yy zz xy yz zx, compressive positive -> ASE Voigt xx yy zz yz xz xy, tensile positive
    np.testing.assert_allclose(a.info["stress"], -kbar * np.array([10, 20, 30, 2, 3, 1]))
    assert a.info["subset"] == "Elastic"


# ------------------------------------------------------------------------------------ specs
def test_list_glob_and_index_specs(tmp_path):
    frames = _labelled(3)
    ase_write(tmp_path / "a.xyz", frames)
    ase_write(tmp_path / "b.xyz", frames[:2])
    both = read([tmp_path / "a.xyz", str(tmp_path / "b.xyz")])
    assert len(both) == 5
    assert [a.info["source_index"] for a in both] == [0, 1, 2, 0, 1]
    assert fingerprint(read(str(tmp_path / "*.xyz"))) == fingerprint(both)  # sorted glob
    assert len(read(tmp_path)) == 5  # directory
    last = read(tmp_path / "a.xyz", index="-1")
    assert len(last) == 1 and last[0].info["source_index"] == 2
    assert [a.info["source_index"] for a in read(tmp_path / "a.xyz", index="0:3:2")] == [0, 2]
    got = both[1]
    assert got.info["energy"] == pytest.approx(-3.5 * len(got))
    np.testing.assert_allclose(got.arrays["forces"], 0.1)
    np.testing.assert_allclose(got.info["stress"], np.arange(6) * 1e-3)
    assert got.info["subset"] == "rattled"


def test_write_roundtrip_keeps_labels_and_tags(tmp_path):
    frames = read(_write(tmp_path / "in.xyz", _labelled(2)))
    out = tmp_path / "out.xyz"
    write(frames, out)
    again = read(out)
    assert fingerprint(again) == fingerprint(frames)
    for a, b in zip(frames, again):
        assert b.info["energy"] == pytest.approx(a.info["energy"])
        np.testing.assert_allclose(b.arrays["forces"], a.arrays["forces"])
        np.testing.assert_allclose(b.info["stress"], a.info["stress"])
        assert b.info["subset"] == a.info["subset"]
        assert b.info["original_source"] == a.info["source"]


def _write(path, frames):
    ase_write(path, frames)
    return path


# ------------------------------------------------------------------------------------ bad input
def test_missing_file_and_empty_glob(tmp_path):
    with pytest.raises(StructureError, match="missing.xyz: file not found"):
        read(tmp_path / "missing.xyz")
    with pytest.raises(StructureError, match="no file matches"):
        read(str(tmp_path / "*.xyz"))
    with pytest.raises(InputError):
        read(42)


def test_truncated_extxyz_names_file(tmp_path):
    good = _write(tmp_path / "good.xyz", _labelled(2)).read_text().splitlines()
    bad = tmp_path / "trunc.xyz"
    bad.write_text("\n".join(good[: len(good) - 2]) + "\n")
    with pytest.raises(StructureError, match="trunc.xyz: cannot read"):
        read(bad)
    with pytest.warns(UserWarning, match="trunc.xyz"):
        frames, report = read_with_report([bad, tmp_path / "good.xyz"], on_error="skip")
    assert len(frames) == 2 and report[0]["source"].endswith("trunc.xyz")


def test_corrupted_json_and_empty_file(tmp_path):
    (tmp_path / "c.json").write_text('[{"structure": {"sites": [')
    with pytest.raises(StructureError, match="c.json: corrupted JSON"):
        read(tmp_path / "c.json")
    (tmp_path / "e.xyz").write_text("")
    with pytest.raises(StructureError, match="e.xyz: file is empty"):
        read(tmp_path / "e.xyz")


def test_nan_positions_named_by_file_and_frame(tmp_path):
    frames = _labelled(3)
    path = _write(tmp_path / "nan.xyz", frames)
    text = path.read_text().splitlines()
    n0 = int(text[0])
    line = n0 + 2 + 2  # second atom line of frame 1
    parts = text[line].split()
    parts[1] = "nan"
    text[line] = " ".join(parts)
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(StructureError, match=r"nan.xyz, frame 1: non-finite"):
        read(path)
    with pytest.warns(UserWarning, match="skipped 1"):
        kept = read(path, on_error="skip")
    assert [a.info["source_index"] for a in kept] == [0, 2]


def test_close_atoms_periodic_aware(tmp_path):
    a = Atoms("Cu2", positions=[[0, 0, 0], [3.4, 0, 0]], cell=[3.5, 5, 5], pbc=True)  # 0.1 Å across the boundary
    path = _write(tmp_path / "close.xyz", [bulk("Cu"), a])
    with pytest.raises(StructureError, match=r"close.xyz, frame 1: atoms 0 \(Cu\) and 1 \(Cu\) are 0.100"):
        read(path)
    a.pbc = False  # without periodicity the atoms are 3.4 Å apart
    assert validate([a])[0] == [a]


def test_empty_frame_in_file(tmp_path):
    head = 'Lattice="3 0 0 0 3 0 0 0 3" Properties=species:S:1:pos:R:3 pbc="T T T"'
    path = tmp_path / "empty.xyz"
    path.write_text(f"0\n{head}\n2\n{head}\nH 0 0 0\nH 0.74 0 0\n")
    with pytest.raises(StructureError, match="empty.xyz, frame 0: empty frame"):
        read(path)
    with pytest.warns(UserWarning):
        kept, report = read_with_report(path, on_error="skip")
    assert len(kept) == 1 and report[0]["source_index"] == 0


def test_empty_frame_and_unknown_element():
    empty = Atoms()
    empty.info.update(source="x.xyz", source_index=4)
    with pytest.raises(StructureError, match="x.xyz, frame 4: empty frame"):
        validate([empty])
    weird = Atoms(numbers=[1, 0], positions=[[0, 0, 0], [1, 0, 0]])
    kept, report = validate([bulk("Si"), weird], on_error="skip")
    assert len(kept) == 1 and report[0]["frame"] == 1 and "unknown element" in report[0]["reason"]
    with pytest.raises(InputError):
        validate([empty], on_error="ignore")


# ------------------------------------------------------------------------------------ filters
class _Model:
    def __init__(self, name, elements):
        self.name, self.elements = name, set(elements)


def test_consistent_filters_unsupported_and_single_atoms():
    frames = [molecule("H2O"), molecule("CH4"), Atoms("H", positions=[[0, 0, 0]]), bulk("Si") * 2]
    models = [_Model("a", {1, 6, 8, 14}), _Model("b", {1, 8, 14})]
    kept, report = consistent(frames, models)
    assert [a.get_chemical_formula() for a in kept] == ["H2O", "Si16"]
    reasons = {r["frame"]: r["reason"] for r in report}
    assert "b lacks C" in reasons[1] and "at least 2" in reasons[2]
    kept2, _ = consistent(frames, {"a": {1, 6, 8, 14}})
    assert len(kept2) == 3


def test_fingerprint_sensitive_to_content_only():
    a, b = bulk("Cu") * 2, bulk("Cu") * 2
    b.info["energy"] = 1.0
    assert fingerprint([a]) == fingerprint([b])
    b.positions[0, 0] += 1e-9
    assert fingerprint([a]) != fingerprint([b])
    c = a.copy()
    c.pbc = [True, True, False]
    assert fingerprint([a]) != fingerprint([c])
    assert fingerprint([a, a]) != fingerprint([a])
    assert len(fingerprint([])) == 64


# ------------------------------------------------------------------------------------ CLI
def test_cli_describe_and_export(tmp_path):
    from typer.testing import CliRunner

    from mlipspace.commands.apps import app
    from mlipspace.commands import data as _  # noqa: F401  (registers the commands)

    path = _write(tmp_path / "in.xyz", _labelled(3))
    runner = CliRunner()
    res = runner.invoke(app, ["data", "describe", str(path), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["frames"] == 3 and info["elements"] == {"Cu": 4 + 8 + 12}
    assert info["subsets"] == {"bulk": {"frames": 2, "atoms": 16}, "rattled": {"frames": 1, "atoms": 8}}
    assert info["labels"] == {"energy": 3, "forces": 3, "stress": 3}
    res = runner.invoke(app, ["data", "describe", "builtin:mad-mini?size=9"])
    assert res.exit_code == 0 and "molecular-crystals" in res.output
    out = tmp_path / "out.xyz"
    res = runner.invoke(app, ["data", "export", str(path), str(out)])
    assert res.exit_code == 0, res.output
    assert len(read(out)) == 3


def test_cli_bad_file_is_one_line_error(tmp_path, capsys):
    from mlipspace.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["data", "describe", str(tmp_path / "nope.xyz")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "nope.xyz: file not found" in err


def test_closest_pair_agrees_with_ase_neighbour_list():
    from ase.neighborlist import neighbor_list

    from mlipspace.data import builtin
    from mlipspace.data.checks import closest_pair

    frames = builtin(size=24, seed=5)
    frames.append(Atoms("Cu", positions=[[0, 0, 0]], cell=[[2.0, 0, 0], [0.5, 2.0, 0], [0, 0, 20]], pbc=[True, True, False]))
    for atoms in frames:
        for cutoff in (1.2, 2.5):
            _, _, d = neighbor_list("ijd", atoms, cutoff)
            got = closest_pair(atoms, cutoff)
            if len(d) == 0:
                assert got is None
            else:
                assert got is not None and got[2] == pytest.approx(d.min(), abs=1e-9)


def test_json_that_is_not_mlearn_is_a_clear_error(tmp_path):
    (tmp_path / "o.json").write_text('{"a": 1}')
    with pytest.raises(StructureError, match="o.json: cannot read"):
        read(tmp_path / "o.json")
    (tmp_path / "bin.xyz").write_bytes(bytes(range(200, 256)) * 4)
    with pytest.raises(StructureError, match="bin.xyz"):
        read(tmp_path / "bin.xyz")
