"""Analyses on a Dask cluster: tasks that read their own features from the feature store.

:func:`mlipspace.experiments.cross_model.pair_errors` splits its work into units (one split seed,
one metric, one model pair or source) and hands them to :func:`run_units`. Without a client they
run here, in order; with one, each unit is a Dask task that gets only a :class:`StoreSpec` (store
path, dataset key, layer, kept rows) and the model names, reads those matrices from the store
itself and returns the small per-pair pointwise errors. The feature matrices never pass through
the scheduler. Workers run the same code with the same BLAS thread count
(:func:`mlipspace.experiments.study.blas_threads`), so the records are identical to a serial run's;
a task whose worker dies is recomputed elsewhere (Dask's retry), with the same result.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Arguments larger than this (bytes, e.g. a split's index arrays) are sent to the cluster once (as
#: a task returning them) and shared by every task that uses them, instead of travelling with each.
SCATTER_BYTES = 1 << 16
#: ``scaled=`` value of a cluster unit: keep the scaled spaces in its worker's :class:`ScaledCache`.
ON_WORKER = "on-worker"


@dataclass(frozen=True)
class StoreSpec:
    """Where a task finds its features: ``layer`` of models on dataset ``key`` of the store at
    ``path``, restricted to ``rows`` (boolean mask or indices of the kept rows; None: all)."""

    path: str
    key: str
    layer: str = "last"
    rows: np.ndarray | None = None

    def load(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """``{name: float64 matrix}`` exactly as :func:`mlipspace.experiments.study.load_features`
        gives them (then restricted to ``rows``)."""
        from mlipspace.store import FeatureStore

        st = FeatureStore(self.path)
        out = {}
        for name in names:
            x = np.asarray(st.features(self.key, name, self.layer), dtype=np.float64)
            out[name] = x if self.rows is None else x[self.rows]
        return out


class StoreFeatures(Mapping):
    """Features of models read from a store: a mapping name -> matrix for the driver (the ``arrays``
    already loaded, or loaded on first use) that tells Dask tasks where to read them (``spec``)."""

    def __init__(self, spec: StoreSpec, models: Sequence[str], arrays: Mapping[str, np.ndarray] | None = None):
        self.spec = spec
        self.models = list(models)
        self._arrays = dict(arrays or {})

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.models:
            raise KeyError(name)
        if name not in self._arrays:
            self._arrays.update(self.spec.load([name]))
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)


class ScaledCache:
    """Scaled feature spaces a worker process keeps across tasks, so that each of its tasks reads and
    scales only the spaces it has not met yet (a pair's task otherwise redoes both, ~0.3 s each at
    10^5 atoms); the least recently used are dropped beyond ``max_bytes``. Thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key, value: np.ndarray) -> None:
        with self._lock:
            if key in self._items or value.nbytes > self.max_bytes:
                return
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes

    def drop(self, key) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes

    def names(self, split: tuple) -> list:
        """The last key part of the entries whose key starts with ``split``, oldest first."""
        with self._lock:
            return [key[-1] for key in self._items if key[:-1] == split]

    def view(self, *split) -> MutableMapping:
        """The spaces of one split (``split``: hashable parts naming the features and the training rows)."""
        return _SplitView(self, split)


class _SplitView(MutableMapping):
    """name -> scaled space of one split in a :class:`ScaledCache` (entries may vanish: read once)."""

    def __init__(self, cache: ScaledCache, split: tuple):
        self.cache, self.split = cache, split

    def __getitem__(self, name):
        value = self.cache.get(self.split + (name,))
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name, value) -> None:
        self.cache.put(self.split + (name,), value)

    def __delitem__(self, name) -> None:
        if name not in self:
            raise KeyError(name)
        self.cache.drop(self.split + (name,))

    def __iter__(self):
        return iter(self.cache.names(self.split))

    def __len__(self) -> int:
        return len(self.cache.names(self.split))


_PROCESS_CACHE: list[ScaledCache] = []  # this worker process's cache, made on first use


def worker_cache() -> ScaledCache:
    """This process's :class:`ScaledCache`: a quarter of the Dask worker's memory limit (2 GiB elsewhere)."""
    if not _PROCESS_CACHE:
        limit = None
        try:
            from distributed import get_worker

            limit = get_worker().memory_manager.memory_limit
        except (ImportError, ValueError, AttributeError):  # not on a worker, or a worker without a limit
            pass
        _PROCESS_CACHE.append(ScaledCache(limit // 4 if limit else 2 << 30))
    return _PROCESS_CACHE[0]


def scaled_spaces(features, train: np.ndarray, scaled) -> MutableMapping | None:
    """What :func:`mlipspace.metrics.pairwise` gets as ``scaled`` for one unit: the dict given (threads
    of one process), for :data:`ON_WORKER` this worker's cache view of (store features, training
    rows), else None."""
    if scaled != ON_WORKER:
        return scaled
    if not isinstance(features, StoreFeatures):
        return None
    spec = features.spec
    rows = b"" if spec.rows is None else np.ascontiguousarray(spec.rows).tobytes()
    digest = hashlib.sha1(rows + b"|" + np.ascontiguousarray(train, dtype=np.int64).tobytes()).hexdigest()
    return worker_cache().view(spec.path, spec.key, spec.layer, digest)


@dataclass
class Unit:
    """One unit of work: ``func(features of names, *args, **kwargs)``; ``features`` is a mapping
    (a :class:`StoreFeatures` at atom level, a split's own small derived matrices otherwise)."""

    func: Callable
    features: Mapping
    names: list[str]
    args: tuple = ()
    kwargs: dict | None = None
    #: False for a unit that runs its own threads (LFRE): run_units then runs it alone, not in its pool
    threaded: bool = True
    #: relative cost estimate: on a cluster the costliest units start first (a short tail)
    cost: float = 0.0


def run_unit(func: Callable, features, names: Sequence[str], args: tuple, kwargs: dict | None):
    """Body of one task: read ``names`` (from the store when ``features`` is a :class:`StoreSpec`)
    and apply ``func`` with the study's BLAS thread count."""
    from mlipspace.experiments.study import blas_threads

    with blas_threads():
        # read lazily: a space already scaled in this worker's cache is not read again
        data = StoreFeatures(features, names) if isinstance(features, StoreSpec) else features
        return func(data, *args, **(kwargs or {}))


def _value(x):
    return x


def _run_here(u: Unit):
    return u.func({n: u.features[n] for n in u.names}, *u.args, **(u.kwargs or {}))


def run_units(units: Sequence[Unit], client=None, n_jobs: int = 1) -> Iterator:
    """The results of ``units`` in their order: computed here (on ``n_jobs`` threads: NumPy's work
    releases the GIL; a unit with ``threaded=False`` runs alone), or submitted all at once as Dask
    tasks on ``client``, and yielded in order as they complete. Every unit computes the same either way."""
    if client is None:
        if n_jobs <= 1:
            yield from map(_run_here, units)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n_jobs) as pool:
            pending: list = []
            for u in units:
                if u.threaded:
                    pending.append(pool.submit(_run_here, u))
                    continue
                yield from (f.result() for f in pending)  # the pool drains before a unit with threads of its own
                pending = []
                yield _run_here(u)
            yield from (f.result() for f in pending)
        return
    shared: dict[int, object] = {}
    keep_alive = []  # the scattered objects' ids stay valid while the map runs

    def share(x):
        if isinstance(x, np.ndarray) and x.nbytes > SCATTER_BYTES or isinstance(x, StoreSpec) and x.rows is not None:
            if id(x) not in shared:
                keep_alive.append(x)
                # a task that returns it, not client.scatter: if the worker holding it dies, the
                # scheduler recomputes it (scattered data would be lost, and its dependents cancelled)
                shared[id(x)] = client.submit(_value, x, pure=False, key=f"arg-{uuid.uuid4().hex[:12]}")
            return shared[id(x)]
        return x

    futures = []
    rank = {id(u): -i for i, u in enumerate(sorted(units, key=lambda u: -u.cost))}  # costliest first
    for u in units:
        if isinstance(u.features, StoreFeatures):
            feats = share(u.features.spec)
        else:  # a split's own structure-level matrices: small, sent with the task
            feats = {n: u.features[n] for n in u.names}
        args = tuple(share(a) for a in u.args)
        futures.append(client.submit(run_unit, u.func, feats, list(u.names), args, u.kwargs, pure=False,
                                     key=f"{u.func.__name__}-{uuid.uuid4().hex[:12]}", priority=rank[id(u)]))
    try:
        for fut in futures:
            yield fut.result()
    finally:
        for fut in futures:
            fut.cancel()


@contextlib.contextmanager
def analysis_client(workers: int | None = None, scheduler: str | None = None):
    """A Dask client for the analyses (``None`` when neither ``workers`` nor ``scheduler`` is given):
    a LocalCluster of ``workers`` single-threaded processes or an existing scheduler; closed on exit."""
    from mlipspace.store.pipeline import dask_client

    client, cluster = dask_client(workers, scheduler, device="cpu")
    try:
        yield client
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
