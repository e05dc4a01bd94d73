"""Cross-model GFRE on a Dask LocalCluster vs serially, side by side, on a synthetic feature store.

Builds a store of ``--models`` synthetic models (widths 64..512, as the bundled models) on ``--atoms``
atoms, written straight into a FeatureStore, then runs the atom-level GFRE comparison of every
ordered pair (i) serially (one process, one thread), (ii) with ``--workers`` Dask worker processes
whose tasks read their two matrices from the store (each worker keeping the scaled matrices it has
read, :class:`mlipspace.experiments.distributed.ScaledCache`) and (iii) for reference on
``--workers`` threads of one process (``mlipspace compare`` without ``--workers``). Prints the wall
times, the ratios, whether the records are identical, the per-task costs (task stream) and the peak
memory (RSS high-water mark) of each worker and of the driver.

    PYTHONPATH=src python benchmarks/bench_compare_dask.py --atoms 100000 --models 10 --workers 2
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

WIDTHS = (64, 96, 128, 160, 192, 256, 320, 384, 448, 512)


def build_store(path: Path, n_models: int, n_atoms: int, per_frame: int = 20, seed: int = 0) -> str:
    """``n_models`` synthetic models correlated through a shared 32-d latent (a GFRE well inside (0, 1))."""
    from ase import Atoms

    from mlipspace.store import FeatureStore

    rng = np.random.default_rng(seed)
    n_frames = n_atoms // per_frame
    frames = [Atoms(numbers=np.full(per_frame, 14), positions=rng.random((per_frame, 3)) * 10, cell=[10] * 3,
                    pbc=True) for _ in range(n_frames)]
    st = FeatureStore(path, mode="a")
    key = st.add_dataset(frames)
    rows = st.rows(key)
    n = len(rows["frame"])
    z = rng.standard_normal((n, 32)).astype(np.float32)
    block = 16384
    for i in range(n_models):
        d = WIDTHS[i % len(WIDTHS)]
        w = rng.standard_normal((32, d)).astype(np.float32) / np.sqrt(32)
        blocks = (np.tanh(z[s:s + block] @ w) + 0.1 * rng.standard_normal((len(z[s:s + block]), d), dtype=np.float32)
                  for s in range(0, n, block))
        st.write_model(key, f"m{i:02d}-d{d}", {"model": f"m{i}"}, "synthetic", rows, [], {"last": (blocks, d)})
    return key


def peak_mib() -> float:
    """This process's peak resident memory in MiB (Linux VmHWM: unlike ru_maxrss it is not inherited
    from the parent across fork + exec, as Dask's spawned workers are)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_memory() -> dict:
    import psutil

    return {"peak_mib": peak_mib(), "rss_mib": psutil.Process().memory_info().rss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--atoms", type=int, default=100_000)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--no-threads", action="store_true", help="Skip the reference run on threads of one process")
    ap.add_argument("--tmp", default=None, help="Folder for the store (default: a temporary one)")
    args = ap.parse_args()

    from distributed import Client, LocalCluster, get_task_stream

    from mlipspace.experiments.cross_model import cross_model
    from mlipspace.experiments.distributed import StoreFeatures, StoreSpec
    from mlipspace.experiments.study import blas_threads, load_features
    from mlipspace.store import FeatureStore

    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="bench-compare-dask-"))
    path = tmp / "fs.zarr"
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    key = build_store(path, args.models, args.atoms)
    st = FeatureStore(path)
    models = st.models(key)
    store_mib = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    print(f"store: {args.models} models x {args.atoms} atoms, widths {[st.features(key, m, lazy=True).shape[1] for m in models]}, "
          f"{store_mib:.0f} MiB on disk, built in {time.perf_counter() - t0:.0f} s")
    feats, rows = load_features(st, key, models)
    opts = dict(metrics=("gfre",), seeds=list(range(args.seeds)))

    with blas_threads(1):
        t0 = time.perf_counter()
        serial = cross_model(feats, rows, n_jobs=1, **opts)
        t_serial = time.perf_counter() - t0
        print(f"serial (1 thread): {t_serial:.1f} s for {len(serial)} pair records", flush=True)
        if not args.no_threads:
            t0 = time.perf_counter()
            threaded = cross_model(feats, rows, n_jobs=args.workers, **opts)
            t_threads = time.perf_counter() - t0
            print(f"{args.workers} threads, one process: {t_threads:.1f} s ({t_serial / t_threads:.2f}x); records "
                  f"identical: {json.dumps(threaded) == json.dumps(serial)}", flush=True)

    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=40, env={v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                                  "MKL_NUM_THREADS")})
    client = Client(cluster)
    try:
        src = StoreFeatures(StoreSpec(str(path), key), models, feats)
        with get_task_stream(client) as ts:
            t0 = time.perf_counter()
            dist = cross_model(src, rows, client=client, **opts)
            t_dist = time.perf_counter() - t0
        mem = client.run(worker_memory)
    finally:
        client.close()
        cluster.close()
    units = [t for t in ts.data if t["key"].startswith("fre_pointwise")]
    compute = [sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == "compute") for t in units]
    same = json.dumps(dist) == json.dumps(serial)
    print(f"dask ({args.workers} workers): {t_dist:.1f} s; records identical: {same}")
    print(f"speed-up serial/dask: {t_serial / t_dist:.2f}x (goal >= 1.6x on 2 workers)")
    print(f"tasks: {len(units)} (one per unordered pair and seed), compute per task: mean {np.mean(compute):.2f} s, "
          f"max {np.max(compute):.2f} s, total {np.sum(compute):.1f} s")
    widths = [st.features(key, m, lazy=True).shape[1] for m in models]
    per_pair = [4 * args.atoms * (a + b) for i, a in enumerate(widths) for b in widths[i + 1:]]
    print(f"bytes read per task: mean {np.mean(per_pair) / 2**20:.0f} MiB, max {np.max(per_pair) / 2**20:.0f} MiB "
          "(two float32 matrices)")
    for w, m in sorted(mem.items()):
        print(f"worker {w}: peak RSS {m['peak_mib']:.0f} MiB (now {m['rss_mib']:.0f} MiB)")
    print(f"driver: peak RSS {peak_mib():.0f} MiB (holds every matrix for the serial run)")
    if args.tmp is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
