"""Benchmark of the feature store, measured side by side in one run.

1. Extraction of the same dataset into a fresh store, serially and with ``workers=2`` (a Dask
   LocalCluster of two processes), with CHGNet 0.3.0 when importable, else ``descriptor-rdf``:
   "cold" wall times include model loading and cluster start-up (what one command costs), "warm"
   ones are the steady state with models loaded; ratios of both.
2. Reading a stored float32 feature array (whole, and streamed in chunk-sized slices through the
   lazy zarr array) vs ``numpy.load`` of the same array from an ``.npy`` file: GB/s and ratios
   (goal: store / numpy >= 0.5).

    python benchmarks/bench_store.py [--frames 32] [--model NAME] [--rows 1000000] [--width 128]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def pick_model(name: str | None) -> str:
    from mlipspace.models import why_unavailable

    if name:
        return name
    return "chgnet-0.3.0" if why_unavailable("chgnet-0.3.0") is None else "descriptor-rdf"


def _load(name: str, device: str) -> bool:
    """Load ``name`` into the per-process model cache of a Dask worker (warm-up)."""
    from mlipspace.store.pipeline import get_model

    get_model(name, device)
    return True


def bench_extract(model: str, n_frames: int, tmp: Path, shard_size: int) -> dict:
    """Cold: what one ``extract`` costs, model loading and (for workers) cluster start-up included.
    Warm: the same work with models already loaded (serial: same process; workers: a running
    2-process LocalCluster whose workers loaded the model), i.e. the steady-state throughput."""
    import os

    from distributed import Client, LocalCluster

    from mlipspace.data import builtin
    from mlipspace.store import FeatureStore, extract_to_store

    frames = builtin("mad-mini", size=n_frames)
    atoms = sum(len(a) for a in frames)
    opts = dict(layers="last", shard_size=shard_size, progress=False, on_unsupported="skip", device="cpu")
    times = {}

    def timed(label, **kw):
        t0 = time.perf_counter()
        extract_to_store(frames, [model], tmp / label, **opts, **kw)
        times[label] = time.perf_counter() - t0

    timed("serial cold")
    timed("serial warm")
    timed("workers=2 cold", workers=2)
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    env = {k: threads for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40, env=env) as cluster, Client(cluster) as client:
        client.run(_load, model, "cpu")
        timed("workers=2 warm", scheduler=cluster.scheduler_address)
    a = FeatureStore(tmp / "serial cold")
    key = a.datasets()[0]
    x = a.features(key, model, "last")
    diff = max(float(np.abs(FeatureStore(tmp / k).features(key, model, "last") - x).max()) for k in times)
    return {"model": model, "frames": n_frames, "atoms": atoms, "times": times, "max_diff": diff}


def bench_read(n_rows: int, width: int, tmp: Path, repeats: int = 5) -> dict:
    """Whole-array and streamed reads of one layer array vs numpy.load of the same array."""
    from ase import Atoms

    from mlipspace.store import FeatureStore

    rng = np.random.default_rng(0)
    per_frame = 1000
    n_frames = n_rows // per_frame
    n_rows = n_frames * per_frame
    frames = [Atoms(numbers=np.full(per_frame, 14), positions=rng.random((per_frame, 3)) * 20, cell=[20] * 3,
                    pbc=True) for _ in range(n_frames)]
    st = FeatureStore(tmp / "read", mode="a")
    key = st.add_dataset(frames)
    x = rng.standard_normal((n_rows, width), dtype=np.float32)
    rows = st.rows(key)
    block = 65536
    st.write_model(key, "synthetic", {"model": "synthetic"}, "bench", rows, [],
                   {"last": ((x[i:i + block] for i in range(0, n_rows, block)), width)})
    npy = tmp / "x.npy"
    np.save(npy, x)
    del x

    def best(fn):
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return min(out)

    nbytes = n_rows * width * 4
    lazy = st.features(key, "synthetic", "last", lazy=True)
    step = lazy.chunks[0]

    def stream_store():
        s = 0.0
        for i in range(0, lazy.shape[0], step):
            s += float(lazy[i:i + step][0, 0])
        return s

    def stream_npy():
        m = np.load(npy, mmap_mode="r")
        s = 0.0
        for i in range(0, m.shape[0], step):
            s += float(np.array(m[i:i + step])[0, 0])
        return s

    t_np = best(lambda: np.load(npy))
    t_store = best(lambda: st.features(key, "synthetic", "last"))
    t_np_stream = best(stream_npy)
    t_store_stream = best(stream_store)
    return {"bytes": nbytes, "numpy.load": nbytes / t_np / 1e9, "store": nbytes / t_store / 1e9,
            "numpy mmap streamed": nbytes / t_np_stream / 1e9, "store lazy streamed": nbytes / t_store_stream / 1e9}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=4)
    p.add_argument("--model", default=None)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--skip-extract", action="store_true")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_store-"))
    try:
        if not args.skip_extract:
            ex = bench_extract(pick_model(args.model), args.frames, tmp, args.shard_size)
            t = ex["times"]
            print(f"extraction of {ex['frames']} frames ({ex['atoms']} atoms) with {ex['model']} on the CPU:")
            for k, v in t.items():
                print(f"  {k:16s} {v:8.2f} s  ({ex['atoms'] / v:8.1f} atoms/s)")
            print(f"  speed-up serial/workers=2: cold {t['serial cold'] / t['workers=2 cold']:.2f}x, "
                  f"warm {t['serial warm'] / t['workers=2 warm']:.2f}x   "
                  f"(max |difference| of features between runs: {ex['max_diff']:.1e})")
        rd = bench_read(args.rows, args.width, tmp)
        print(f"read of a {rd['bytes'] / 1e9:.2f} GB float32 layer array (best of 5):")
        for k in ("numpy.load", "store", "numpy mmap streamed", "store lazy streamed"):
            print(f"  {k:22s} {rd[k]:6.2f} GB/s")
        print(f"  ratio store / numpy.load            = {rd['store'] / rd['numpy.load']:.2f}  (goal >= 0.5)")
        print(f"  ratio lazy streamed / numpy mmap    = {rd['store lazy streamed'] / rd['numpy mmap streamed']:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
