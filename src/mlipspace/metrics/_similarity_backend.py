"""Array backends and chunked kernels behind :mod:`mlipspace.metrics.similarity`.

Two backends share one small interface so that every measure is written once:

* ``numpy`` (``device="cpu"``): the input stays as given (float32 stays float32 in memory) and each row
  chunk is upcast to float64 just before it is used, so the extra memory is one chunk.
* ``torch`` (``device="cuda"``, ``"cuda:N"`` or ``"torch-cpu"``): the input is copied once to the device
  as float64 and all products run there. ``torch`` is imported only when such a device is asked for.

Nothing here ever holds an N×N matrix: the linear measures accumulate d×d cross-products over row
chunks, and the neighbour/kernel code walks over blocks of ``block`` rows × N columns.
"""

from __future__ import annotations

import numpy as np

from mlipspace._device import resolve_device
from mlipspace.errors import InputError

#: Elements (float64) of one block × N work array in the kNN and kernel code (64 MiB).
BLOCK_ELEMENTS = 1 << 23
#: Columns sampled per row for the kNN pre-filter (NumPy backend).
SAMPLE_COLS = 1024
#: Elements (float64) of one row chunk × d in the linear measures (32 MiB).
CHUNK_ELEMENTS = 1 << 22


def chunk_rows(n_cols: int, chunk_size: int | None) -> int:
    """Rows per chunk: ``chunk_size`` if given, else as many as fit in :data:`CHUNK_ELEMENTS`."""
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise InputError(f"chunk_size must be a positive number of rows, got {chunk_size}")
        return int(chunk_size)
    return max(64, CHUNK_ELEMENTS // max(1, n_cols))


def block_rows(n: int, chunk_size: int | None, elements: int = BLOCK_ELEMENTS) -> int:
    """Rows per block for block × N work arrays (kNN distances, kernel rows)."""
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise InputError(f"chunk_size must be a positive number of rows, got {chunk_size}")
        return int(chunk_size)
    return max(1, min(n, elements // max(1, n)))


class NumpyBackend:
    """Float64 NumPy arithmetic over chunks of an array kept in its own dtype."""

    name = "numpy"
    device = "cpu"
    block_elements = BLOCK_ELEMENTS

    def put(self, a: np.ndarray) -> np.ndarray:
        return a

    def rows(self, a, index) -> np.ndarray:
        return np.asarray(a[index], dtype=np.float64)

    def index(self, idx: np.ndarray):
        return idx

    def zeros(self, shape):
        return np.zeros(shape, dtype=np.float64)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def exp(self, a):
        return np.exp(a, out=a)

    def assign(self, dst, src) -> None:
        dst[...] = src

    def rownorm2(self, a):
        return np.einsum("ij,ij->i", a, a)

    def rowsum(self, a):
        return a.sum(axis=1)

    def arange(self, start: int, stop: int):
        return np.arange(start, stop)

    def knn_block(self, dist, k: int) -> np.ndarray:
        """Indices of the ``k`` smallest entries of each row of ``dist``; ties go to the lower index.

        For wide blocks a cheap pre-filter comes first: the (k+1)-th smallest value among
        :data:`SAMPLE_COLS` (at least 8(k+1)) evenly spaced columns bounds the row's (k+1)-th smallest from above, so
        every entry that can matter is ≤ that bound. Only those candidates (about (k+1)·n/1024 per
        row) go on to the exact selection, kept in column order so ties still go to the lower index.
        """
        b, n = dist.shape
        n_sample = max(SAMPLE_COLS, 8 * (k + 1))
        if n <= 4 * n_sample:
            return self._select(dist, k)
        cols = np.linspace(0, n - 1, n_sample).astype(np.int64)
        bound = np.partition(dist[:, cols], k, axis=1)[:, k]
        rows, cc = np.nonzero(dist <= bound[:, None])
        counts = np.bincount(rows, minlength=b)
        starts = np.cumsum(counts) - counts
        pos = np.arange(rows.size) - starts[rows]
        cand = np.full((b, int(counts.max())), np.inf)
        cand_col = np.zeros(cand.shape, dtype=np.int64)
        cand[rows, pos] = dist[rows, cc]
        cand_col[rows, pos] = cc
        return np.take_along_axis(cand_col, self._select(cand, k), axis=1)

    @staticmethod
    def _select(dist, k: int) -> np.ndarray:
        """Exact k smallest per row, ties to the lower column.

        One ``argpartition`` for the k+1 smallest: the k-th and (k+1)-th smallest values differ in
        every row without a tie at the boundary, and only the other rows (rare, except with duplicated
        rows) are resolved with a full pass that picks the lowest indices among equal distances.
        """
        part = np.argpartition(dist, k, axis=1)[:, : k + 1]
        vals = np.take_along_axis(dist, part, axis=1)
        order = np.argsort(vals, axis=1, kind="stable")
        part = np.take_along_axis(part, order, axis=1)
        vals = np.take_along_axis(vals, order, axis=1)
        idx = part[:, :k].copy()
        tied = np.nonzero(vals[:, k] == vals[:, k - 1])[0]
        if tied.size:
            sub = dist[tied]
            kth = vals[tied, k - 1][:, None]
            below = sub < kth
            equal = sub == kth
            slots = k - below.sum(axis=1, keepdims=True)
            take = below | (equal & (np.cumsum(equal, axis=1) <= slots))
            idx[tied] = np.nonzero(take)[1].reshape(-1, k)
        return idx


class TorchBackend:
    """Float64 torch arithmetic on one device; the input is moved there once."""

    name = "torch"

    def __init__(self, device: str):
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - torch is present in the test environment
            raise InputError(
                f"device={device!r} needs PyTorch, which is not installed; use device='cpu'"
            ) from exc
        self.torch = torch
        dev = "cpu" if device == "torch-cpu" else device
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device={device!r} was asked for but torch sees no CUDA GPU; use 'cpu' or 'auto'")
        self.device = torch.device(dev)
        # a GPU wants bigger blocks to stay busy: 8 × 64 MiB per block array there
        self.block_elements = BLOCK_ELEMENTS * (8 if dev.startswith("cuda") else 1)

    def put(self, a):
        return self.torch.as_tensor(np.asarray(a), dtype=self.torch.float64, device=self.device)

    def rows(self, a, index):
        return a[index]

    def index(self, idx: np.ndarray):
        return self.torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.device)

    def zeros(self, shape):
        return self.torch.zeros(shape, dtype=self.torch.float64, device=self.device)

    def to_numpy(self, a) -> np.ndarray:
        if isinstance(a, self.torch.Tensor):
            return a.detach().cpu().numpy()
        return np.asarray(a)

    def exp(self, a):
        return a.exp_()

    def assign(self, dst, src) -> None:
        dst.copy_(self.torch.as_tensor(np.asarray(src)))

    def rownorm2(self, a):
        return (a * a).sum(dim=1)

    def rowsum(self, a):
        return a.sum(dim=1)

    def arange(self, start: int, stop: int):
        return self.torch.arange(start, stop, device=self.device)

    def knn_block(self, dist, k: int) -> np.ndarray:
        torch = self.torch
        vals, idx = torch.topk(dist, k + 1, dim=1, largest=False, sorted=True)
        idx = idx[:, :k].clone()
        tied = torch.nonzero(vals[:, k] == vals[:, k - 1]).flatten()
        if tied.numel():
            # lowest-index choice among equal distances, as in the NumPy backend
            sub = dist[tied]
            kth = vals[tied, k - 1][:, None]
            below = sub < kth
            equal = sub == kth
            slots = k - below.sum(dim=1, keepdim=True)
            take = below | (equal & (torch.cumsum(equal.to(torch.int64), dim=1) <= slots))
            idx[tied] = torch.nonzero(take)[:, 1].reshape(-1, k)
        return idx.cpu().numpy()


def get_backend(device: str = "auto"):
    """Backend for ``device``: ``"cpu"`` → NumPy; ``"cuda"``, ``"cuda:N"``, ``"torch-cpu"`` → torch."""
    if not isinstance(device, str):
        raise InputError(f"device must be a string such as 'cpu', 'cuda' or 'auto', got {device!r}")
    dev = resolve_device(device)
    if dev == "cpu":
        return NumpyBackend()
    if dev == "torch-cpu" or dev.startswith("cuda"):
        return TorchBackend(dev)
    raise InputError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N', 'torch-cpu' or 'auto'")


def knn_indices(X, k: int, *, backend, metric: str = "euclidean", chunk_size: int | None = None) -> np.ndarray:
    """Indices (n, k) of each row's ``k`` nearest other rows of ``X``, self excluded.

    Neighbours are ranked by squared Euclidean distance (one matrix product per block of rows);
    ``metric="cosine"`` first scales every row to unit length, so the order is
    that of cosine similarity. Ties at the k-th distance are broken in favour of the lower row index.
    Memory: one ``block × n`` float64 array (see :func:`block_rows`), never ``n × n``.
    """
    if metric not in ("euclidean", "cosine"):
        raise InputError(f"unknown metric {metric!r}: use 'euclidean' or 'cosine'")
    n, d = X.shape
    # Row i's order over j only needs |x_j|² − 2 x_i·x_j (|x_i|² is constant along the row), which one
    # matrix product of the augmented rows [x_i, 1] and [−2 x_j, |x_j|²] gives with no extra pass.
    # Both are filled in place: two float64 (n, d+1) arrays, no further copy of X.
    left = backend.zeros((n, d + 1))
    backend.assign(left[:, :d], X)
    feats = left[:, :d]
    if metric == "cosine":
        norms = backend.rownorm2(feats) ** 0.5
        if bool((norms == 0).any()):
            bad = int(np.nonzero(backend.to_numpy(norms) == 0)[0][0])
            raise InputError(f"row {bad} is all zeros: its cosine distance is undefined")
        feats /= norms[:, None]
    left[:, d] = 1.0
    right = backend.zeros((n, d + 1))
    right[:, :d] = feats
    right[:, :d] *= -2.0
    right[:, d] = backend.rownorm2(feats)
    step = block_rows(n, chunk_size, backend.block_elements)
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, step):
        e = min(n, s + step)
        dist = left[s:e] @ right.T
        r = backend.arange(0, e - s)
        dist[r, r + s] = float("inf")  # self is not its own neighbour
        out[s:e] = backend.knn_block(dist, k)
    return out


def sq_dists_block(A_blk, B, sqA_blk, sqB):
    """Squared Euclidean distances between a block of rows and all rows, clipped at 0."""
    d = A_blk @ B.T
    d *= -2.0
    d += sqA_blk[:, None]
    d += sqB[None, :]
    d[d < 0] = 0.0
    return d
