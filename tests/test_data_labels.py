"""DFT labels as people store them: the default key order, the MACE layout, and named keys."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlipspace.data import read
from mlipspace.errors import StructureError


def _frames(n=3):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        a = Atoms("SiO2", positions=[[0, 0, 0], [1.6, 0, 0], [0, 1.6, 0]], cell=[6, 6, 6], pbc=True)
        a.info["subset"] = "x"
        out.append((a, -10.0 - i, rng.normal(size=(3, 3))))
    return out


def test_mace_layout_labels_are_found_and_named(tmp_path):
    path = tmp_path / "mace.xyz"
    frames = []
    for a, e, f in _frames():
        a.info["REF_energy"] = e
        a.arrays["REF_forces"] = f
        frames.append(a)
    ase.io.write(path, frames, format="extxyz")
    got = read(path)
    assert [a.info["energy"] for a in got] == [-10.0, -11.0, -12.0]
    assert all(a.info["energy_key"] == "REF_energy" for a in got)
    np.testing.assert_allclose(got[1].arrays["forces"], frames[1].arrays["REF_forces"])


def test_energy_key_wins_over_the_calculator_and_the_calculator_over_ref(tmp_path):
    path = tmp_path / "both.xyz"
    frames = []
    for a, e, f in _frames():
        a.info["REF_energy"] = e - 100.0
        a.info["dft_energy"] = e - 200.0
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        frames.append(a)
    ase.io.write(path, frames, format="extxyz")
    default = read(path)
    assert default[0].info["energy"] == -10.0 and default[0].info["energy_key"] in ("energy", "calculator")
    named = read(path, energy_key="dft_energy")
    assert named[0].info["energy"] == -210.0 and named[0].info["energy_key"] == "dft_energy"
    ref = read(path, energy_key="REF_energy")
    assert ref[2].info["energy"] == -112.0


def test_a_named_key_that_is_missing_names_the_frame(tmp_path):
    path = tmp_path / "plain.xyz"
    ase.io.write(path, [a for a, _, _ in _frames()], format="extxyz")
    with pytest.raises(StructureError, match=r"plain.xyz, frame 0: no energy label under key 'dft_energy'"):
        read(path, energy_key="dft_energy")
    with pytest.raises(StructureError, match="no forces label under key 'REF_forces'"):
        read(path, forces_key="REF_forces")
    unlabelled = read(path)
    assert "energy" not in unlabelled[0].info and "energy_key" not in unlabelled[0].info
