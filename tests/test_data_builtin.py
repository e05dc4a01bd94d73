"""builtin:mad-mini: determinism, size, elements, subsets and realistic geometry."""

from collections import Counter

import numpy as np
import pytest
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

from mlipspace.data import MAD_MINI_SUBSETS, builtin, fingerprint, read, validate, write
from mlipspace.data import synthetic as builtin_module
from mlipspace.errors import InputError

# Content hash of builtin:mad-mini?size=40&seed=0. If this changes, the dataset changed (new ASE or
# NumPy behaviour, or an edit of the generator) and feature stores keyed by the old hash are stale.
GOLDEN_40 = "8086f8c916e9db19830b07c62d83d5b7be1c0a649ec7ab8bf8bc54c322d5b997"

NOBLE = {2, 10, 18, 36, 54, 86}


@pytest.fixture(scope="module")
def default_frames():
    return builtin()


def test_same_seed_gives_identical_structures(default_frames):
    builtin_module._mad_mini_cached.cache_clear()  # regenerate, do not reuse the cache
    assert fingerprint(builtin()) == fingerprint(default_frames)


def test_fingerprint_matches_recorded_value():
    builtin_module._mad_mini_cached.cache_clear()
    assert fingerprint(builtin(size=40, seed=0)) == GOLDEN_40


def test_returned_frames_are_independent_copies():
    a = builtin(size=10)
    a[0].positions += 1.0
    a[1].info["subset"] = "changed"
    b = builtin(size=10)
    assert fingerprint(b) != fingerprint(a) and b[1].info["subset"] != "changed"


def test_export_and_reread_keeps_fingerprint(tmp_path):
    frames = builtin(size=40)
    write(frames, tmp_path / "mm.xyz")
    again = read(tmp_path / "mm.xyz")
    assert fingerprint(again) == fingerprint(frames)
    assert [a.info["subset"] for a in again] == [a.info["subset"] for a in frames]


def test_different_seed_or_size_differs(default_frames):
    assert fingerprint(builtin(seed=1)) != fingerprint(default_frames)
    assert fingerprint(builtin(size=40, seed=0)) != fingerprint(builtin(size=40, seed=1))


def test_default_size_and_element_coverage(default_frames):
    assert len(default_frames) >= 500
    elements = {int(z) for a in default_frames for z in a.numbers}
    assert len(elements) >= 60
    assert max(elements) <= 83 and not elements & NOBLE


def test_atoms_per_structure_within_2_to_100(default_frames):
    sizes = np.array([len(a) for a in default_frames])
    assert sizes.min() >= 2 and sizes.max() <= 100


def test_every_subset_present_and_tagged(default_frames):
    counts = Counter(a.info["subset"] for a in default_frames)
    assert set(counts) == set(MAD_MINI_SUBSETS)
    small = Counter(a.info["subset"] for a in builtin(size=40))
    assert set(small) == set(MAD_MINI_SUBSETS)
    assert sum(small.values()) == 40
    # proportional: the largest share (bulk) gets the most structures
    assert small["bulk"] == max(small.values())


def test_min_distances_realistic(default_frames):
    for k, atoms in enumerate(default_frames):
        cut = 0.7 * covalent_radii[atoms.numbers]
        i, _ = neighbor_list("ij", atoms, cut, self_interaction=False)
        assert len(i) == 0, f"frame {k} ({atoms.info['subset']}, {atoms.get_chemical_formula()}) has close atoms"
    assert validate(default_frames)[1] == []


def test_vacuum_and_periodicity(default_frames):
    for atoms in default_frames:
        subset = atoms.info["subset"]
        if subset in ("molecules", "clusters"):
            assert not atoms.pbc.any() and atoms.cell.rank == 0  # free, no cell (like the brief asks)
        elif subset in ("surfaces", "2d"):
            z = atoms.positions[:, 2]
            gap = atoms.cell[2, 2] - (z.max() - z.min())
            assert 7.5 <= gap <= 10.5
        else:
            assert atoms.pbc.all()


def test_read_builtin_spec_with_options():
    frames = read("builtin:mad-mini?size=12&seed=3")
    assert len(frames) == 12
    assert fingerprint(frames) == fingerprint(builtin(size=12, seed=3))
    assert frames[5].info["source"] == "builtin:mad-mini?size=12&seed=3"
    assert [a.info["source_index"] for a in frames] == list(range(12))


def test_tiny_size_and_bad_options():
    assert len(builtin(size=3)) == 3
    with pytest.raises(InputError, match="size"):
        builtin(size=0)
    with pytest.raises(InputError, match="unknown builtin"):
        builtin("nope")
    with pytest.raises(InputError, match="unknown option"):
        read("builtin:mad-mini?sise=3")
