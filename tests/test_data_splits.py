"""Stratified atom, grouped and structure splits."""

from collections import Counter

import numpy as np
import pytest

from mlipspace.data import atom_split, builtin, grouped_split, row_table, seeds, splits, structure_split
from mlipspace.errors import InputError


@pytest.fixture(scope="module")
def frames():
    return builtin(size=120, seed=0)


@pytest.fixture(scope="module")
def rows(frames):
    return row_table(frames)


def _check_partition(train, test, n):
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    assert np.intersect1d(train, test).size == 0
    assert train.size + test.size == n


def test_atom_split_is_stratified_partition(rows):
    train, test = atom_split(rows, n_test=500, seed=0)
    n = rows["frame"].size
    _check_partition(train, test, n)
    assert test.size == 500
    names, counts = np.unique(rows["subset"], return_counts=True)
    got = Counter(rows["subset"][test])
    for name, c in zip(names, counts):
        assert abs(got[name] - 500 * c / n) <= 1


def test_atom_split_depends_on_seed_only(rows):
    a = atom_split(rows, n_test=200, seed=1)
    b = atom_split(rows, n_test=200, seed=1)
    c = atom_split(rows, n_test=200, seed=2)
    assert np.array_equal(a[1], b[1]) and not np.array_equal(a[1], c[1])


def test_grouped_split_has_no_structure_overlap(rows):
    train, test = grouped_split(rows, n_test=500, seed=0)
    _check_partition(train, test, rows["frame"].size)
    assert not set(rows["frame"][train]) & set(rows["frame"][test])
    assert 300 <= test.size <= 800
    # stratified: every subset contributes test structures
    assert set(rows["subset"][test]) == set(rows["subset"])


def test_grouped_split_keeps_a_training_structure():
    rows = row_table(builtin(size=8))
    with pytest.warns(UserWarning, match="n_test"):
        train, test = grouped_split(rows, n_test=10**6)
    assert train.size > 0 and test.size > 0
    assert not set(rows["frame"][train]) & set(rows["frame"][test])


def test_atom_split_clamps_too_large_n_test(rows):
    n = rows["frame"].size
    with pytest.warns(UserWarning, match="n_test"):
        train, test = atom_split(rows, n_test=n)
    assert test.size == round(0.2 * n) and train.size == n - test.size


def test_structure_split_frames_stratified(frames):
    labels = [a.info["subset"] for a in frames]
    train, test = structure_split(labels, test_fraction=0.25, seed=0)
    _check_partition(train, test, len(frames))
    assert test.size == 30
    assert set(np.array(labels)[test]) == set(labels)
    # Atoms are accepted directly
    assert np.array_equal(structure_split(frames, test_fraction=0.25)[1], test)


def test_seeds_gives_one_split_per_seed(rows):
    out = seeds(atom_split, rows, n_test=100, seeds=(0, 1, 2))
    assert len(out) == 3
    assert not np.array_equal(out[0][1], out[1][1])
    assert splits.seeds is seeds


@pytest.mark.parametrize(
    "call",
    [
        lambda r: atom_split(r, n_test=0),
        lambda r: atom_split(r, n_test=1.5),
        lambda r: atom_split({"frame": np.zeros(1, np.int64), "subset": np.array(["a"])}),
        lambda r: grouped_split({"frame": np.zeros(5, np.int64), "subset": np.array(["a"] * 5)}),
        lambda r: structure_split(["a"]),
        lambda r: structure_split(["a", "b"], test_fraction=1.5),
        lambda r: atom_split({"atom": np.zeros(3)}),
    ],
)
def test_impossible_input_raises(rows, call):
    with pytest.raises(InputError):
        call(rows)


def test_allocate_is_proportional_and_exact():
    take = splits.allocate(np.array([10, 30, 60]), 10)
    assert take.tolist() == [1, 3, 6]
    take = splits.allocate(np.array([1, 1, 100]), 101)
    assert take.sum() == 101 and np.all(take <= [1, 1, 100])


def test_grouped_split_keeps_every_test_element_in_training():
    """cover_elements: no test atom has an element that no training structure contains."""
    from mlipspace.data import builtin
    from mlipspace.data.rows import row_table
    from mlipspace.data.splits import grouped_split

    rows = row_table(builtin("mad-mini", size=60, seed=3))
    for seed in range(3):
        train, test = grouped_split(rows, 300, seed=seed)
        assert set(rows["Z"][test]) <= set(rows["Z"][train])
        assert not set(rows["frame"][train]) & set(rows["frame"][test])
    train, test = grouped_split(rows, 300, seed=0, cover_elements=False)
    assert set(rows["Z"][test]) - set(rows["Z"][train])  # this data does have such elements
