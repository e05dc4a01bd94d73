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
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: Arguments larger than this (bytes, e.g. a split's index arrays) are sent to the cluster once (as
#: a task returning them) and shared by every task that uses them, instead of travelling with each.
SCATTER_BYTES = 1 << 16


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


def run_unit(func: Callable, features, names: Sequence[str], args: tuple, kwargs: dict | None):
    """Body of one task: read ``names`` (from the store when ``features`` is a :class:`StoreSpec`)
    and apply ``func`` with the study's BLAS thread count."""
    from mlipspace.experiments.study import blas_threads

    with blas_threads():
        data = features.load(names) if isinstance(features, StoreSpec) else features
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
    for u in units:
        if isinstance(u.features, StoreFeatures):
            feats = share(u.features.spec)
        else:  # a split's own structure-level matrices: small, sent with the task
            feats = {n: u.features[n] for n in u.names}
        args = tuple(share(a) for a in u.args)
        futures.append(client.submit(run_unit, u.func, feats, list(u.names), args, u.kwargs, pure=False,
                                     key=f"{u.func.__name__}-{uuid.uuid4().hex[:12]}"))
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
