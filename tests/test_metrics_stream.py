"""Streamed (chunked) GFRE/GFRD equal the in-memory values; sources: memmap, zarr, chunk lists."""

from __future__ import annotations

import numpy as np
import pytest

from mlipspace.errors import InputError
from mlipspace.metrics import gfrd, gfre, pointwise_gfre


def data(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 5))
    X = Z @ rng.standard_normal((5, 16)) + 0.1 * rng.standard_normal((n, 16)) + 7.0
    Y = np.tanh(Z @ rng.standard_normal((5, 11))) + 0.05 * rng.standard_normal((n, 11))
    return X, Y


@pytest.mark.parametrize("chunk_size", [1, 37, 128, 5000])
def test_chunked_equals_in_memory(chunk_size):
    X, Y = data(300 if chunk_size == 1 else 1000)
    test = np.arange(0, len(X), 7)
    ref = pointwise_gfre(X, Y, test_idx=test, chunk_size=10**9)
    got = pointwise_gfre(X, Y, test_idx=test, chunk_size=chunk_size)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)
    assert abs(gfrd(X, Y, test_idx=test, chunk_size=chunk_size) - gfrd(X, Y, test_idx=test)) < 1e-10


def test_chunk_lists_and_callables_with_unaligned_chunks():
    X, Y = data()
    ref = gfre(X, Y)
    cuts_x = [0, 3, 250, 251, 700, 1000]
    cuts_y = [0, 500, 999, 1000]
    xs = [X[a:b] for a, b in zip(cuts_x[:-1], cuts_x[1:])]
    ys = [Y[a:b].astype(np.float32).astype(np.float64) for a, b in zip(cuts_y[:-1], cuts_y[1:])]
    assert abs(gfre(xs, ys, chunk_size=64) - gfre(X, np.vstack(ys))) < 1e-10
    assert abs(gfre(lambda: iter(xs), [Y[:500], Y[500:]], chunk_size=100) - ref) < 1e-10


def test_memmap_and_zarr_sources(tmp_path):
    X, Y = data()
    ref = gfre(X, Y)
    mx = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=X.shape)
    mx[:] = X
    mx.flush()
    mx = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert abs(gfre(mx, Y, chunk_size=300) - ref) < 1e-10
    zarr = pytest.importorskip("zarr")
    zy = zarr.open(str(tmp_path / "y.zarr"), mode="w", shape=Y.shape, chunks=(128, Y.shape[1]), dtype="f8")
    zy[:] = Y
    assert abs(gfre(mx, zy, chunk_size=256) - ref) < 1e-10


def test_one_shot_iterator_is_rejected():
    X, Y = data(100)
    with pytest.raises(InputError, match="one-shot iterator"):
        gfre((x for x in [X]), Y)


def test_nan_in_a_later_chunk_names_the_row():
    X, Y = data(400)
    Y[333, 2] = np.nan
    with pytest.raises(InputError, match="Y: NaN at row 333"):
        gfre([X[:200], X[200:]], [Y[:100], Y[100:]], chunk_size=64)


@pytest.mark.slow
def test_streamed_memory_stays_bounded():
    """2x10^5 rows x (32+32) streamed from a generator factory: peak traced memory << the data size."""
    import tracemalloc

    n, d, step = 200_000, 32, 5_000

    def chunks(seed):
        def gen():
            for i in range(0, n, step):
                rng = np.random.default_rng([seed, i])
                yield rng.standard_normal((step, d))
        return gen

    tracemalloc.start()
    val = gfre(chunks(1), chunks(2), chunk_size=4096, test_idx=np.arange(0, n, 10))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    data_bytes = 2 * n * d * 8
    assert 0.9 < val < 1.1  # independent spaces: nothing recoverable
    assert peak < data_bytes / 4, (peak, data_bytes)  # O(n) index bookkeeping + a few blocks
