"""Distributed analyses: ``compare``/``run --workers 2`` give byte-identical records to the serial
run, the tasks read their features from the store (no feature matrix travels with a task), and a
worker killed mid-task is replaced and its task recomputed with the same result."""

from __future__ import annotations

import json
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from mlipspace.cli import app
from mlipspace.models import ModelSpec, register

pytest.importorskip("distributed")
runner = CliRunner()
MODELS = "descriptor-rdf,test-rdf-coarse"


@pytest.fixture(scope="module", autouse=True)
def coarse_descriptor():
    """A second radial descriptor, registered for this module only (as in tests/test_run.py)."""
    from mlipspace.models import registry

    register(ModelSpec("test-rdf-coarse", "descriptor", "descriptor", (), "coarse radial descriptor (tests)",
                       {"cutoff": 4.0, "n_bins": 8, "seed": 1}), replace=True)
    yield
    registry._REGISTRY.pop("test-rdf-coarse", None)


def invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlipspace.store import extract_to_store

    path = tmp_path_factory.mktemp("dask") / "fs.zarr"
    extract_to_store("builtin:mad-mini?size=50", MODELS, path, progress=False)  # >= 10 test structures
    return path


def synthetic_store(path, n_frames: int, per_frame: int, widths, seed: int = 0):
    """A store of ``len(widths)`` synthetic models (correlated through a shared latent), written directly."""
    from ase import Atoms

    from mlipspace.store import FeatureStore

    rng = np.random.default_rng(seed)
    frames = [Atoms(numbers=np.full(per_frame, 14), positions=rng.random((per_frame, 3)) * 10, cell=[10] * 3,
                    pbc=True) for _ in range(n_frames)]
    st = FeatureStore(path, mode="a")
    key = st.add_dataset(frames)
    z = rng.standard_normal((n_frames * per_frame, 16))
    for i, d in enumerate(widths):
        x = np.tanh(z @ rng.standard_normal((16, d))) + 0.1 * rng.standard_normal((len(z), d))
        st.write_model(key, f"m{i}", {"model": f"m{i}"}, "synthetic", st.rows(key), [],
                       {"last": (iter([x.astype(np.float32)]), d)})
    return key


@pytest.mark.slow
@pytest.mark.parametrize("level,metric", [("atom", "gfre,lfre,cka,mknn"), ("structure", "gfre,cka")])
def test_compare_with_workers_equals_serial_byte_for_byte(store, tmp_path, level, metric):
    args = ("compare", "--store", store, "--metric", metric, "--seeds", 2, "--level", level, "--json")
    serial = invoke(*args, "--output", tmp_path / "serial.json")
    dist = invoke(*args, "--workers", 2, "--output", tmp_path / "dist.json")
    assert dist == serial
    assert (tmp_path / "dist.json").read_bytes() == (tmp_path / "serial.json").read_bytes()
    assert any(r["value"] is not None for r in json.loads(serial))


@pytest.mark.slow
def test_run_with_workers_gives_the_serial_results_json(tmp_path):
    run = ("run", "--models", MODELS, "--size", 44, "--seeds", 2, "--no-layers", "-q")
    invoke(*run, "--out", tmp_path / "serial")
    invoke(*run, "--out", tmp_path / "dist", "--workers", 2)
    serial = (tmp_path / "serial" / "results.json").read_bytes()
    assert (tmp_path / "dist" / "results.json").read_bytes() == serial
    cross = [r for r in json.loads(serial)["records"] if r["analysis"] == "cross-model"]
    assert any(r["value"] is not None for r in cross)


class _Recording:
    """A Dask client that records the pickled size of every submitted task's arguments."""

    def __init__(self, client):
        self.client, self.sizes = client, []

    def submit(self, *args, **kw):
        self.sizes.append(len(pickle.dumps((args, kw))))
        return self.client.submit(*args, **kw)

    def __getattr__(self, name):
        return getattr(self.client, name)


def _cluster():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=40)
    return Client(cluster), cluster


@pytest.mark.slow
def test_tasks_read_their_features_from_the_store(tmp_path):
    from distributed import get_task_stream

    from mlipspace.experiments.cross_model import cross_model
    from mlipspace.experiments.distributed import StoreFeatures, StoreSpec
    from mlipspace.experiments.study import blas_threads, load_features
    from mlipspace.store import FeatureStore

    key = synthetic_store(tmp_path / "fs", 200, 10, (64, 96, 128))
    st = FeatureStore(tmp_path / "fs")
    feats, rows = load_features(st, key, st.models(key))
    keep = rows["frame"] % 7 != 3  # a row mask, as the study's outlier screen gives
    feats, rows = {m: x[keep] for m, x in feats.items()}, {k: v[keep] for k, v in rows.items()}
    opts = dict(metrics=("gfre", "gfrd", "lfre", "procrustes"), seeds=[0, 1])
    with blas_threads():  # as the serial commands do; the workers use the same thread count
        serial = cross_model(feats, rows, n_jobs=1, **opts)
        threads = cross_model(feats, rows, n_jobs=2, **opts)  # `compare` without --workers: units on threads
    client, cluster = _cluster()
    try:
        rec = _Recording(client)
        with get_task_stream(client) as ts:
            dist = cross_model(StoreFeatures(StoreSpec(str(st.path), key, "last", keep), list(feats), feats), rows,
                               client=rec, **opts)
        cached = client.run(_cached_spaces)
    finally:
        client.close()
        cluster.close()
    assert json.dumps(dist) == json.dumps(serial) == json.dumps(threads)
    # each worker kept the scaled spaces it read: at most one entry per (model, split) in all
    assert 0 < sum(cached.values()) <= 2 * len(feats) * len(cached), cached
    assert len(ts.data) >= len(rec.sizes) > 2 * 4  # several units per (seed, metric), all run on the cluster
    smallest_matrix = min(x.nbytes for x in feats.values())
    assert max(rec.sizes) < smallest_matrix / 10, (max(rec.sizes), smallest_matrix)


def _cached_spaces() -> int:
    from mlipspace.experiments.distributed import worker_cache

    return len(worker_cache()._items)


def test_scaled_cache_keeps_the_recent_spaces_within_its_bytes():
    from mlipspace.experiments.distributed import ScaledCache

    cache = ScaledCache(max_bytes=3 * 800)
    view = cache.view("store", "key", "last", "split-0")
    for name in "abcd":
        view[name] = np.zeros((10, 10))  # 800 bytes each
    assert "a" not in view and all(n in view for n in "bcd")  # least recently used dropped
    view["b"]  # noqa: B018 - a read makes it recent
    view["e"] = np.zeros((10, 10))
    assert "c" not in view and all(n in view for n in "bde")
    view["huge"] = np.zeros((100, 100))  # larger than the cache: not kept, nothing dropped
    assert "huge" not in view and all(n in view for n in "bde")
    assert "b" not in cache.view("store", "key", "last", "split-1")  # another split: its own spaces
    assert sorted(view) == ["b", "d", "e"] and len(view) == 3 and len(cache.view("other")) == 0
    del view["d"]
    assert sorted(view) == ["b", "e"] and cache._bytes == 2 * 800


def test_pairwise_reuses_the_scaled_spaces_it_is_given():
    from mlipspace.metrics import pairwise

    rng = np.random.default_rng(0)
    feats = {n: rng.normal(size=(60, d)) for n, d in (("a", 3), ("b", 4), ("c", 5))}
    split = dict(train_idx=np.arange(40), test_idx=np.arange(40, 60), pointwise=True, diagonal=False)
    whole = pairwise(feats, "gfre", **split)
    shared: dict = {}
    part = pairwise({n: feats[n] for n in "ab"}, "gfre", scaled=shared, **split)
    assert set(shared) == {"a", "b"}

    class Unreadable(dict):
        def __getitem__(self, name):
            raise AssertionError(f"{name} was read again")

    again = pairwise(Unreadable(a=None, b=None), "gfre", scaled=shared, **split)
    for r in part + again:
        w = next(x for x in whole if (x["source"], x["target"]) == (r["source"], r["target"]))
        assert r["value"] == w["value"] and np.array_equal(r["pointwise"], w["pointwise"])


def test_client_without_a_store_is_refused():
    from mlipspace.errors import InputError
    from mlipspace.experiments.cross_model import pair_errors

    x = np.zeros((10, 2))
    with pytest.raises(InputError, match="reads its features from the store"):
        pair_errors({"a": x, "b": x}, [("a", "b")], [(np.arange(5), np.arange(5, 10))], client=object())


@pytest.mark.slow
def test_killed_worker_is_retried_with_the_same_records(tmp_path):
    """A worker SIGKILLed while it runs a task: Dask reruns the task elsewhere; records unchanged."""
    from mlipspace.experiments.cross_model import cross_model
    from mlipspace.experiments.distributed import StoreFeatures, StoreSpec
    from mlipspace.experiments.study import blas_threads, load_features
    from mlipspace.store import FeatureStore

    key = synthetic_store(tmp_path / "fs", 600, 20, (64, 96, 128))  # train indices > SCATTER_BYTES
    st = FeatureStore(tmp_path / "fs")
    feats, rows = load_features(st, key, st.models(key))
    opts = dict(metrics=("gfre", "lfre"), seeds=[0, 1, 2], lfre_max_test=100)
    with blas_threads():
        serial = cross_model(feats, rows, **opts)
    client, cluster = _cluster()
    killed = []

    def kill_one_busy_worker():
        pids = client.run(os.getpid)
        deadline = time.time() + 60
        while not killed and time.time() < deadline:
            busy = [w for w, keys in client.processing().items() if keys and w in pids]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)  # mid-task: the worker has a task running
                killed.append(pids[busy[0]])
            time.sleep(0.02)

    try:
        killer = threading.Thread(target=kill_one_busy_worker)
        killer.start()
        dist = cross_model(StoreFeatures(StoreSpec(str(st.path), key), list(feats), feats), rows, client=client,
                           **opts)
        killer.join()
    finally:
        client.close()
        cluster.close()
    assert killed, "no worker was busy long enough to be killed"
    assert json.dumps(dist) == json.dumps(serial)
