"""Row sources for the streaming (larger-than-memory) global measures.

A source is anything that yields the rows of one feature space in order:

* an array-like with ``shape`` and row slicing (NumPy array, ``np.memmap``, zarr or h5py array):
  read ``chunk_size`` rows at a time;
* a re-iterable of 2-D chunks (a list of arrays, or an object whose ``__iter__`` starts again) or a
  zero-argument callable returning a fresh iterator of chunks: chunks may have any lengths, they are
  re-cut into blocks of ``chunk_size`` rows so that X and Y blocks line up.

The measures read a source several times (statistics, fit, test predictions), so one-shot
iterators (generators) are rejected with a clear message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

from mlipspace.errors import InputError


class RowSource:
    """Uniform sequential block reader over an array-like or a re-iterable of chunks."""

    def __init__(self, obj, name: str):
        self.name = name
        self._array = None
        self._factory: Callable[[], Iterator] | None = None
        shape = getattr(obj, "shape", None)
        if shape is not None and hasattr(obj, "__getitem__"):
            if len(shape) != 2:
                raise InputError(f"{name}: expected a 2-D (rows, features) array, got shape {tuple(shape)}")
            if shape[0] == 0 or shape[1] == 0:
                raise InputError(f"{name}: empty array of shape {tuple(shape)}")
            dtype = getattr(obj, "dtype", None)
            if dtype is not None and not (np.issubdtype(np.dtype(dtype), np.number) or np.dtype(dtype) == bool):
                raise InputError(f"{name}: expected a numeric array, got dtype {dtype}")
            self._array = obj
            self.n_rows, self.n_cols = int(shape[0]), int(shape[1])
            return
        if callable(obj):
            self._factory = obj
        elif isinstance(obj, Iterable):
            if iter(obj) is obj:
                raise InputError(
                    f"{name}: a one-shot iterator cannot be read several times; pass a list of chunks, "
                    "a re-iterable object or a callable returning a fresh iterator"
                )
            self._factory = lambda: iter(obj)
        else:
            raise InputError(f"{name}: expected an array, an array-like with shape and slicing, or chunks of rows")
        n, d = 0, None
        for chunk in self._factory():
            c = self._check_chunk(chunk, n)
            if d is None:
                d = c.shape[1]
            elif c.shape[1] != d:
                raise InputError(f"{name}: chunk at row {n} has {c.shape[1]} columns, earlier chunks had {d}")
            n += c.shape[0]
        if n == 0 or d is None or d == 0:
            raise InputError(f"{name}: no rows")
        self.n_rows, self.n_cols = n, d

    def _check_chunk(self, chunk, row: int) -> np.ndarray:
        c = np.asarray(chunk)
        if c.ndim != 2:
            raise InputError(f"{self.name}: chunk at row {row} is not 2-D (shape {c.shape})")
        if not (np.issubdtype(c.dtype, np.number) or c.dtype == bool):
            raise InputError(f"{self.name}: chunk at row {row} is not numeric (dtype {c.dtype})")
        return c

    def blocks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, float64 block)`` with blocks of ``chunk_size`` rows (the last shorter)."""
        if self._array is not None:
            for a in range(0, self.n_rows, chunk_size):
                b = min(a + chunk_size, self.n_rows)
                yield a, np.asarray(self._array[a:b], dtype=np.float64)
            return
        pending: list[np.ndarray] = []
        n_pending = 0
        start = 0
        seen = 0
        for chunk in self._factory():
            c = self._check_chunk(chunk, seen)
            if c.shape[1] != self.n_cols:
                raise InputError(f"{self.name}: chunk at row {seen} has {c.shape[1]} columns, expected {self.n_cols}")
            seen += c.shape[0]
            pending.append(c)
            n_pending += c.shape[0]
            while n_pending >= chunk_size:
                buf = np.concatenate(pending, axis=0) if len(pending) > 1 else pending[0]
                yield start, np.asarray(buf[:chunk_size], dtype=np.float64)
                start += chunk_size
                rest = buf[chunk_size:]
                pending = [rest] if rest.shape[0] else []
                n_pending = rest.shape[0]
        if seen != self.n_rows:
            raise InputError(f"{self.name}: the chunks changed between reads ({seen} rows, first read {self.n_rows})")
        if n_pending:
            buf = np.concatenate(pending, axis=0) if len(pending) > 1 else pending[0]
            yield start, np.asarray(buf, dtype=np.float64)


def paired_blocks(sx: RowSource, sy: RowSource, chunk_size: int):
    """Yield ``(start, X_block, Y_block)`` over two sources with the same row count."""
    for (a, xb), (b, yb) in zip(sx.blocks(chunk_size), sy.blocks(chunk_size)):
        assert a == b and xb.shape[0] == yb.shape[0]
        yield a, xb, yb
