"""Per-species cumulants and the plain pooling baselines."""

from __future__ import annotations

import numpy as np
import pytest

from mlipspace.aggregate import POOLINGS, cumulants, pool
from mlipspace.errors import InputError


def frames_with_species(seed=0, n_frames=8, d=3):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 15, size=n_frames)
    f = np.repeat(np.arange(n_frames) * 2, sizes)  # ids 0, 2, 4, ...
    z = rng.choice([1, 8, 26], size=len(f))
    z[f == 0] = 8  # frame 0 holds only oxygen
    x = rng.normal(size=(len(f), d))
    perm = rng.permutation(len(f))
    return x[perm], f[perm], z[perm]


def test_per_species_blocks_equal_cumulants_of_each_element_subset():
    x, f, z = frames_with_species()
    order, d, elements = 4, x.shape[1], (26, 1, 8)  # a fixed, user-ordered element list
    got, info = cumulants(x, f, order=order, per_species=True, species=z, elements=elements, return_info=True)
    assert info.elements == elements
    assert got.shape == (len(np.unique(f)), order * len(elements) * d)
    blocks = got.reshape(len(info.frames), order, len(elements), d)
    for row, fid in enumerate(info.frames):
        for e, el in enumerate(elements):
            mask = (f == fid) & (z == el)
            assert info.species_counts[row, e] == mask.sum()
            assert info.presence[row, e] == bool(mask.any())
            if mask.any():
                ref = cumulants(x[mask], np.zeros(mask.sum(), int), order=order)[0].reshape(order, d)
                np.testing.assert_allclose(blocks[row, :, e], ref, rtol=1e-10, atol=1e-12)
            else:
                assert np.all(blocks[row, :, e] == 0.0)
    np.testing.assert_array_equal(info.n_atoms, [np.sum(f == fid) for fid in info.frames])
    # frame 0 has only oxygen
    assert info.presence[0].tolist() == [False, False, True]
    # the prefix property holds per species too
    np.testing.assert_allclose(
        got[:, info.prefix(2)],
        cumulants(x, f, order=2, per_species=True, species=z, elements=elements),
    )
    assert info.columns[0] == (1, 26, 0) and info.columns[d] == (1, 1, 0)


def test_per_species_infers_sorted_elements_and_rejects_unknown_ones():
    x, f, z = frames_with_species(1)
    _, info = cumulants(x, f, order=2, per_species=True, species=z, return_info=True)
    assert info.elements == (1, 8, 26)
    with pytest.raises(InputError, match="element Z=26 is not in the element list"):
        cumulants(x, f, order=2, per_species=True, species=z, elements=(1, 8))
    with pytest.raises(InputError, match="needs `species`"):
        cumulants(x, f, order=2, per_species=True)
    with pytest.raises(InputError, match="duplicates"):
        cumulants(x, f, order=2, per_species=True, species=z, elements=(1, 8, 8, 26))


def test_pool_mean_std_max_against_direct_computation():
    x, f, _ = frames_with_species(2)
    ids = np.unique(f)
    mean = pool(x, f, "mean")
    ms, info = pool(x, f, "mean+std", return_info=True)
    mx = pool(x, f, "max")
    for row, fid in enumerate(ids):
        xs = x[f == fid]
        np.testing.assert_allclose(mean[row], xs.mean(0))
        np.testing.assert_allclose(ms[row], np.concatenate([xs.mean(0), xs.std(0)]), atol=1e-12)
        np.testing.assert_array_equal(mx[row], xs.max(0))
    np.testing.assert_array_equal(info.frames, ids)
    assert info.columns[0] == ("mean", 0) and info.columns[x.shape[1]] == ("std", 0)
    # mean+std are exactly the rooted cumulants of order 2
    np.testing.assert_allclose(ms, cumulants(x, f, order=2, root=True), atol=1e-12)
    with pytest.raises(InputError, match="no cumulant orders"):
        info.prefix(1)


@pytest.mark.parametrize("how", POOLINGS)
def test_pool_is_invariant_to_row_order(how):
    x, f, _ = frames_with_species(3)
    perm = np.random.default_rng(0).permutation(len(f))
    np.testing.assert_allclose(pool(x[perm], f[perm], how), pool(x, f, how), atol=1e-12)


def test_pool_rejects_unknown_method_and_non_finite_values():
    x, f, _ = frames_with_species(4)
    with pytest.raises(InputError, match="unknown pooling 'median'"):
        pool(x, f, "median")
    x = x.copy()
    x[f == 4] = np.inf
    with pytest.raises(InputError, match="frame 4"):
        pool(x, f, "max")
