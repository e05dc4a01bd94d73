"""Resumable feature extraction into a store, serially or on a Dask cluster.

The frames are cut into shards of ``shard_size`` consecutive frames; one task = one shard × one
model. A task writes its features under ``staging/`` into a directory of its own, built aside and
renamed into place with a completion flag in its ``meta.json``, so a killed run leaves either a
complete shard or nothing visible. When all shards of a model are staged, the driver streams
them, in frame order, into one zarr array per layer (see :mod:`mlipspace.store.core`) and removes
the staging directory. A rerun skips stored layers and staged shards, so an interrupted
extraction resumes and ends with the same bytes as an uninterrupted one; the result does not
depend on the shard size, the number of workers or the order in which tasks finish.

Models are loaded once per process (a per-process cache keyed by name and device), never per
shard. On a Dask cluster each worker process loads a model the first time it gets one of its tasks.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from mlipspace.data.rows import check_aligned
from mlipspace.errors import AlignmentError, InputError, StoreError, StructureError, UnsupportedElementsError
from mlipspace.store import _io
from mlipspace.store._lock import StoreLock, lock_path
from mlipspace.store.core import RESERVED_MODEL_NAMES, FeatureStore, _check_name, model_fingerprint_sha

#: Frames per shard when none is given: small enough to resume cheaply and to balance workers.
DEFAULT_SHARD_SIZE = 32

_MODELS: dict[tuple[str, str], object] = {}
_MODELS_LOCK = threading.Lock()


# ------------------------------------------------------------------------------- per process
def _worker_device(device: str) -> str:
    """The device of this process: on a Dask worker with ``device="auto"`` and GPUs, GPU
    ``worker_index % n_gpus`` (LocalCluster names its workers 0, 1, ...), so each worker owns one."""
    if device != "auto":
        return device
    from mlipspace._device import resolve_device

    dev = resolve_device("auto")
    if dev != "cuda":
        return dev
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return dev
    import torch

    n = torch.cuda.device_count()
    if isinstance(name, int) and n > 1:
        return f"cuda:{name % n}"
    return dev


def get_model(model, device: str = "auto"):
    """The loaded extractor for ``model`` (a registry name or an Extractor), cached per process."""
    if not isinstance(model, str):
        return model
    from mlipspace.models import get_spec

    # a registry entry that needs no package (the numpy descriptor) runs on the CPU: no torch import
    dev = "cpu" if device == "auto" and not get_spec(model).requires else _worker_device(device)
    with _MODELS_LOCK:  # threads of one Dask worker share the cache: load once
        cached = _MODELS.get((model, dev))
        if cached is None:
            from mlipspace.models import load

            cached = _MODELS[(model, dev)] = load(model, device=dev)
    return cached


def describe(model, device: str = "auto", *, verbose: bool = False) -> dict:
    """What the driver needs to plan a model's tasks, computed where the model is loaded
    (``warnings``: what the model packages warned while loading, see :mod:`mlipspace.models.pkgwarnings`)."""
    from mlipspace.models.pkgwarnings import capture_warnings

    with capture_warnings(verbose=verbose) as log:
        m = get_model(model, device)
    return {"warnings": log.as_dict(), "name": m.name, "family": getattr(m, "family", None), "layers": list(m.layers),
            "dims": {k: int(v) for k, v in m.dims.items()}, "elements": sorted(int(z) for z in m.elements),
            "fingerprint": dict(m.fingerprint), "device": str(getattr(m, "device", device))}


def run_shard(store_path: str, key: str, model, model_name: str, device: str, start: int, stop: int,
              indices: Sequence[int], frames: Sequence[Atoms], layers: Sequence[str], batch_size: int,
              on_unsupported: str, fingerprint_sha: str, *, verbose: bool = False) -> dict:
    """Extract one shard and stage it under ``staging/<key>/<model>/shard_<start>_<stop>``.

    ``indices`` are the global frame indices of ``frames`` (the shard's frames the model supports).
    Returns ``{"atoms": n_rows, "seconds": t, "warnings": log}`` (log: what the model packages warned).
    """
    from mlipspace.models.pkgwarnings import capture_warnings

    with capture_warnings(verbose=verbose) as log:
        out = _run_shard(store_path, key, model, model_name, device, start, stop, indices, frames, layers,
                         batch_size, on_unsupported, fingerprint_sha)
    return {**out, "warnings": log.as_dict()}


def _run_shard(store_path, key, model, model_name, device, start, stop, indices, frames, layers, batch_size,
               on_unsupported, fingerprint_sha) -> dict:
    """The body of :func:`run_shard`."""
    t0 = time.perf_counter()
    root = Path(store_path)
    final = _io.staging_dir(root, key, model_name) / _io.shard_name(start, stop)
    extractor = get_model(model, device)
    indices = np.asarray(indices, dtype=np.int64)
    skipped: list[list] = []
    if len(frames):
        try:
            fs = extractor.extract(list(frames), layers=tuple(layers), batch_size=batch_size,
                                   on_unsupported=on_unsupported)
        except StructureError as exc:  # name the dataset's frame, not the shard-local position
            if exc.source is None and exc.frame is not None and 0 <= exc.frame < len(indices):
                raise type(exc)(exc.reason, frame=int(indices[exc.frame])) from exc
            raise
        local = np.asarray(fs.rows["frame"], dtype=np.int64)
        rows = {"frame": indices[local] if len(local) else local,
                "atom": np.asarray(fs.rows["atom"], np.int32), "Z": np.asarray(fs.rows["Z"], np.int32)}
        skipped = [[int(indices[i]), str(reason)] for i, reason in fs.skipped]
        feats = {}
        for layer in layers:
            arr = np.asarray(fs.layers[layer])
            if arr.ndim != 2 or arr.shape[0] != len(local):
                raise StoreError(f"{model_name}: layer {layer!r} of frames {start}..{stop - 1} has shape "
                                 f"{arr.shape}, expected ({len(local)}, d)")
            feats[layer] = arr.astype(np.float32, copy=False)
        from mlipspace.models import check_finite

        check_finite(model_name, feats, rows["frame"])  # never stage NaN features silently
    else:
        rows = {"frame": np.zeros(0, np.int64), "atom": np.zeros(0, np.int32), "Z": np.zeros(0, np.int32)}
        feats = {layer: np.zeros((0, int(extractor.dims[layer])), np.float32) for layer in layers}
    tmp = _io.tmp_dir(root)
    for name, arr in rows.items():
        np.save(tmp / f"rows.{name}.npy", arr)
    for layer, arr in feats.items():
        np.save(tmp / f"layer.{layer}.npy", arr)
    _io.write_json_atomic(tmp / _io.SHARD_META, {
        "complete": True, "start": start, "stop": stop, "n_rows": int(len(rows["frame"])),
        "layers": {k: int(v.shape[1]) for k, v in feats.items()}, "skipped": skipped,
        "fingerprint_sha256": fingerprint_sha,
    })
    if final.exists() and _io.read_shard_meta(final) is None:  # debris of a killed run: replace it
        shutil.rmtree(final, ignore_errors=True)
    _io.place(tmp, final)
    return {"atoms": int(len(rows["frame"])), "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------ driver
@dataclass
class _Plan:
    """One model's work: the layers to add, its shards and the frames it skips."""

    name: str
    model: object  # registry name or Extractor (what tasks load)
    info: dict
    layers: list[str]
    shards: list[tuple[int, int]]
    todo: list[tuple[int, int]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    keep: dict[tuple[int, int], list[int]] = field(default_factory=dict)


def _resolve_layers(layers, info: dict) -> list[str]:
    available = info["layers"]
    if isinstance(layers, str):
        if layers == "all":
            return list(available)
        layers = [p.strip() for p in layers.split(",") if p.strip()]
    layers = list(dict.fromkeys(layers))
    unknown = [x for x in layers if x not in available]
    if unknown or not layers:
        raise InputError(f"model {info['name']!r} has no layer(s) {unknown or layers}; "
                         f"layers: {', '.join(available)} (or 'all')")
    return layers


def _unsupported(frames: Sequence[Atoms], elements: set[int]) -> list[tuple[int, list[int]]]:
    out = []
    for i, atoms in enumerate(frames):
        bad = sorted({int(z) for z in np.unique(atoms.numbers)} - elements)
        if bad:
            out.append((i, bad))
    return out


def _plan_model(store: FeatureStore, key: str, frames, model, info: dict, layers, shard_size: int,
                on_unsupported: str) -> _Plan | None:
    name = info["name"]
    wanted = _resolve_layers(layers, info)
    store.begin_model(key, name, info["fingerprint"], info.get("family"))
    have = set(store.layers(key, name)) if name in store.models(key) else set()
    todo_layers = [x for x in wanted if x not in have]
    if not todo_layers:
        return None
    bad = _unsupported(frames, set(info["elements"]))
    if bad and on_unsupported == "raise":
        from ase.data import chemical_symbols

        shown = "; ".join(f"frame {i}: {', '.join(chemical_symbols[z] if z < len(chemical_symbols) else str(z) for z in zs)}"
                          for i, zs in bad[:5])
        more = f" and {len(bad) - 5} more frames" if len(bad) > 5 else ""
        raise UnsupportedElementsError(
            f"model {name!r} does not support the elements of {len(bad)} frame(s): {shown}{more} "
            "(use --on-unsupported skip / on_unsupported='skip' to leave them out)"
        )
    bad_set = {i for i, _ in bad}
    shards = [(s, min(s + shard_size, len(frames))) for s in range(0, len(frames), shard_size)]
    plan = _Plan(name, model, info, todo_layers, shards,
                 skipped=[(i, f"unsupported elements {zs}") for i, zs in bad])
    plan.keep = {(s, e): [i for i in range(s, e) if i not in bad_set] for s, e in shards}
    base = _io.staging_dir(store.path, key, name)
    base.mkdir(parents=True, exist_ok=True)
    plan_record = {"shards": [list(s) for s in shards], "layers": todo_layers,
                   "fingerprint_sha256": model_fingerprint_sha(info["fingerprint"])}
    try:
        old = _io.read_json(base / "plan.json")
    except (OSError, ValueError):
        old = None
    if old != plan_record:
        _io.write_json_atomic(base / "plan.json", plan_record)
    for s, e in shards:
        meta = _io.read_shard_meta(base / _io.shard_name(s, e))
        ok = (meta is not None and meta.get("fingerprint_sha256") == plan_record["fingerprint_sha256"]
              and set(todo_layers) <= set(meta.get("layers", {})))
        if not ok:
            plan.todo.append((s, e))
    return plan


def _finalize(store: FeatureStore, key: str, plan: _Plan) -> None:
    """Stream the staged shards of ``plan`` into the store's arrays, then drop the staging."""
    base = _io.staging_dir(store.path, key, plan.name)
    metas = []
    for s, e in plan.shards:
        meta = _io.read_shard_meta(base / _io.shard_name(s, e))
        if meta is None:
            raise StoreError(f"{store.path}: shard {s}..{e - 1} of {plan.name} is missing after extraction")
        metas.append((base / _io.shard_name(s, e), meta))
    skipped = sorted(set(plan.skipped) | {(int(f), str(r)) for _, m in metas for f, r in m["skipped"]})
    skipped_frames = {f for f, _ in skipped}
    ds_rows = store.rows(key)
    keep = ~np.isin(ds_rows["frame"], np.fromiter(skipped_frames, np.int64, len(skipped_frames)))
    rows = {k: v[keep] for k, v in ds_rows.items()}
    got = {
        k: np.concatenate([np.load(p / f"rows.{k}.npy") for p, _ in metas]) if metas else np.zeros(0)
        for k in ("frame", "atom", "Z")
    }
    try:
        check_aligned(rows, got, names=("the dataset", f"the features of {plan.name}"))
    except AlignmentError as exc:
        raise StoreError(f"{plan.name} returned features for other atoms than the frames it was given: {exc}") from exc

    def blocks(layer):
        for p, _ in metas:
            yield np.load(p / f"layer.{layer}.npy", mmap_mode="r")

    dims = {layer: plan.info["dims"][layer] for layer in plan.layers}
    for p, m in metas:
        for layer in plan.layers:
            if m["layers"].get(layer) != dims[layer]:
                raise StoreError(f"{plan.name}: shard {p.name} has width {m['layers'].get(layer)} for layer "
                                 f"{layer!r}, expected {dims[layer]}")
    store.write_model(key, plan.name, plan.info["fingerprint"], plan.info.get("family"), rows, skipped,
                      {layer: (blocks(layer), dims[layer]) for layer in plan.layers},
                      layer_order=plan.info["layers"])
    # the staging goes aside first (atomic), then is deleted: a kill here leaves nothing half-valid
    trash = _io.tmp_dir(store.path)
    os.rename(base, trash / "staging")
    shutil.rmtree(trash, ignore_errors=True)
    for empty in (base.parent, base.parent.parent):  # staging/<key>, staging: drop when empty
        try:
            empty.rmdir()
        except OSError:
            break


def _progress(enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class AtomsPerSecond(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text("-- atoms/s" if speed is None else f"{speed:,.0f} atoms/s", style="cyan")

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("atoms"), AtomsPerSecond(), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), disable=not enabled, transient=False)


def _tell_warnings(bar, enabled: bool, line: str | None) -> None:
    """Print a model's one-line warning summary above the progress bar (when there is one to tell)."""
    if enabled and line:
        from rich.text import Text

        bar.console.print(Text(f"  {line}", style="yellow"), soft_wrap=True)


def _gpu_count() -> int:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return 0
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # a broken CUDA setup counts as no GPU
        return 0


def dask_client(workers: int | None, scheduler: str | None, device: str = "auto"):
    """A Dask client: an existing scheduler, or a LocalCluster of ``workers`` processes.

    With GPUs (and a device other than ``cpu``) the cluster has one worker per GPU at most. On the
    CPU, each worker gets ``cores // workers`` threads for torch/BLAS (Dask's default is one).
    """
    if scheduler is None and not workers:
        return None, None
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise InputError("--workers/--scheduler need dask.distributed (pip install 'dask[distributed]')") from exc
    if scheduler is not None:
        return Client(scheduler), None
    n = int(workers)
    if n < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    gpus = _gpu_count() if device != "cpu" else 0
    if gpus and n > gpus:
        n = gpus  # one worker per GPU: more would only share a device
    threads = str(max(1, (os.cpu_count() or 1) // n))
    env = {name: threads for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=40, env=env)
    return Client(cluster), cluster


def extract_to_store(frames, models, store_path, layers="last", shard_size: int | None = None,
                     workers: int | None = None, scheduler: str | None = None, progress: bool = True,
                     on_unsupported: str = "raise", *, device: str = "auto", batch_size: int = 8,
                     spec: str | None = None, wait: bool = True, verbose: bool = False) -> dict:
    """Extract ``layers`` of ``models`` for ``frames`` into the store at ``store_path``, resumably.

    ``frames``: a list of ``Atoms`` or a spec for :func:`mlipspace.data.read` (then recorded as the
    dataset's spec). ``models``: registry names (or loaded extractors; a comma-separated string
    works too). ``layers``: ``"last"``, ``"all"``, or names (list or ``"L1,L2"``). ``workers``: run on
    a Dask LocalCluster of that many processes (one per GPU when GPUs exist); ``scheduler``: the
    address of an existing Dask cluster. ``on_unsupported``: ``"raise"`` (default) names frames
    with elements a model does not support; ``"skip"`` leaves them out and records them.

    Returns ``{"dataset": key, "fingerprint": ..., "models": {name: {"layers": [...], "extracted_shards": k,
    "skipped": n, "atoms": n_rows, "warnings": {...}}}}``; ``warnings`` is what the model packages
    warned while loading and extracting, caught rather than printed (``{"count", "first", "other",
    "distinct": [...]}``, see :class:`mlipspace.models.pkgwarnings.WarningLog`); with ``progress`` a
    one-line summary per model is printed. ``verbose=True`` shows every warning as it is raised.

    A failing write (disk full, no permission) raises :class:`StoreError` naming the store and the
    cause; whatever was stored before stays, and a rerun with space resumes from the staged shards.

    Each model is written under a lock of its own (dataset, model), so several processes may fill
    one store: writers of other models proceed in parallel; a writer of the same model waits
    (``wait=True``, printing who holds it) or raises :class:`StoreError` naming the holder
    (``wait=False``), and once it gets the lock finds the work done. Locks of dead holders are taken over.
    """
    try:
        return _extract_to_store(frames, models, store_path, layers, shard_size, workers, scheduler, progress,
                                 on_unsupported, device=device, batch_size=batch_size, spec=spec, wait=wait,
                                 verbose=verbose)
    except OSError as exc:
        err = _write_error(store_path, exc)
        if err is None:
            raise
        raise err from exc


def _write_error(store_path, exc: OSError) -> StoreError | None:
    """A one-line :class:`StoreError` for a failed write into the store (disk full, read-only, no
    permission), or ``None`` for other OS errors (e.g. a Dask connection), which keep their type."""
    import errno

    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not full and exc.errno is None:  # numpy's tofile reports a short write without an errno
        try:
            full = shutil.disk_usage(store_path).free < 16 * 2**20
        except OSError:
            pass
    if not full and exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
        return None
    cause = "no space left on device" if full else (exc.strerror or str(exc))
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return StoreError(f"{store_path}: cannot write the feature store: {cause}{where}; free space (or choose "
                      "another store) and rerun: everything stored so far is kept and finished shards are reused")


def _extract_to_store(frames, models, store_path, layers="last", shard_size: int | None = None,
                      workers: int | None = None, scheduler: str | None = None, progress: bool = True,
                      on_unsupported: str = "raise", *, device: str = "auto", batch_size: int = 8,
                      spec: str | None = None, wait: bool = True, verbose: bool = False) -> dict:
    """The body of :func:`extract_to_store` (which turns OS errors into a StoreError)."""
    frames, models, shard_size, spec = _check_inputs(frames, models, shard_size, on_unsupported, spec)
    store = FeatureStore(store_path, mode="a")
    _io.clean_tmp(store.path)
    key = store.add_dataset(frames, spec)
    client, cluster = dask_client(workers, scheduler, device)
    summary = {"dataset": key, "fingerprint": store.dataset_info(key)["fingerprint"], "models": {}}
    from mlipspace.models.pkgwarnings import WarningLog

    logs = {}  # model name -> WarningLog of its packages' warnings
    try:
        described = []
        for model in models:
            ref = model
            if client is not None and not isinstance(model, str):
                ref = client.scatter(model, broadcast=True)
            info = (client.submit(describe, ref, device, verbose=verbose, pure=False).result() if client is not None
                    else describe(model, device, verbose=verbose))
            logs[info["name"]] = WarningLog.from_dict(info.pop("warnings", {}))
            _check_name(info["name"], "model", RESERVED_MODEL_NAMES)  # it names the lock file too
            described.append((ref, info))
        pending = described
        while pending:  # the models whose locks are free now; then wait for the others, one by one
            batch, pending = _lock_some(store, key, pending, wait=wait)
            try:
                plans = []
                for ref, info, _ in batch:
                    plan = _plan_model(store, key, frames, ref, info, layers, shard_size, on_unsupported)
                    if plan is None:
                        summary["models"][info["name"]] = {"layers": _resolve_layers(layers, info),
                                                           "extracted_shards": 0, "status": "already stored",
                                                           "warnings": logs[info["name"]].as_dict()}
                    else:
                        plans.append(plan)
                _run_plans(store, key, frames, plans, client, progress=progress, device=device,
                           batch_size=batch_size, on_unsupported=on_unsupported, verbose=verbose, logs=logs)
                for plan in plans:
                    summary["models"][plan.name] = {
                        "layers": plan.layers, "extracted_shards": len(plan.todo), "status": "extracted",
                        "skipped": len(store.skipped(key, plan.name)),
                        "atoms": int(len(store.rows(key, plan.name)["frame"])),
                        "warnings": logs[plan.name].as_dict(),
                    }
            finally:
                for *_, lock in batch:
                    lock.release()
        summary["models"] = {info["name"]: summary["models"][info["name"]] for _, info in described}
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return summary


def _check_inputs(frames, models, shard_size, on_unsupported: str, spec):
    """Validated ``(frames, models, shard_size, spec)`` of an extraction: frames read from a spec if need be."""
    if on_unsupported not in ("raise", "skip"):
        raise InputError(f"on_unsupported must be 'raise' or 'skip', not {on_unsupported!r}")
    if isinstance(frames, (str, os.PathLike)) or (isinstance(frames, (list, tuple)) and frames
                                                  and not isinstance(frames[0], Atoms)):
        from mlipspace.data import read

        spec = spec if spec is not None else (str(frames) if not isinstance(frames, (list, tuple))
                                              else ",".join(map(str, frames)))
        frames = read(frames)  # validated by the reader
    else:
        from mlipspace.data.checks import validate

        validate(list(frames))  # bad structures fail here, naming file and frame, before any work is done
    frames = list(frames)
    if not frames:
        raise InputError("no frames to extract")
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    elif not isinstance(models, (list, tuple)):
        models = [models]
    if not models:
        raise InputError("no model given")
    names = [m for m in models if isinstance(m, str)]
    if len(set(names)) != len(names):
        raise InputError(f"a model is named twice in {names}")
    shard_size = DEFAULT_SHARD_SIZE if shard_size is None else int(shard_size)
    if shard_size < 1:
        raise InputError(f"shard_size must be >= 1, got {shard_size}")
    return frames, models, shard_size, spec


def _lock_some(store: FeatureStore, key: str, pending: list, *, wait: bool) -> tuple[list, list]:
    """Lock the models of ``pending`` (``(ref, info)`` pairs) whose writer locks are free.

    Returns ``([(ref, info, lock), ...], still pending)``. When every one is held by another writer,
    waits for the first (printing its holder once); with ``wait=False`` raises if any is held.
    """
    got, rest, held = [], [], []
    for ref, info in pending:
        lock = StoreLock(lock_path(store.path, key, info["name"]))
        holder = lock.try_acquire()
        if holder is None:
            got.append((ref, info, lock))
        else:
            rest.append((ref, info))
            held.append(holder)
    if rest and not wait:
        for *_, lock in got:
            lock.release()
        raise StoreError(f"{store.path}: dataset {key}, model {rest[0][1]['name']!r} is being written by "
                         f"{held[0].describe()} (lock {lock_path(store.path, key, rest[0][1]['name'])}); "
                         "rerun without --no-wait (wait=False) to wait for it")
    if got:
        return got, rest
    ref, info = rest[0]
    lock = StoreLock(lock_path(store.path, key, info["name"]))
    lock.acquire(wait=True, on_wait=lambda holder: print(
        f"{store.path}: dataset {key}, model {info['name']!r} is being written by {holder.describe()}; "
        "waiting for it to finish", file=sys.stderr, flush=True))
    return [(ref, info, lock)], rest[1:]


def _run_plans(store: FeatureStore, key: str, frames: list, plans: list[_Plan], client, *, progress: bool,
               device: str, batch_size: int, on_unsupported: str, verbose: bool, logs: dict) -> None:
    """Extract the shards to do of ``plans`` (here or on the Dask ``client``) and finalize each model;
    the model packages' warnings of each shard go into ``logs`` (one summary line per model)."""
    if not plans:
        return
    counts = np.array([len(a) for a in frames], dtype=np.int64)
    total = sum(int(counts[plan.keep[s]].sum()) for plan in plans for s in plan.shards)
    done_atoms = sum(int(counts[plan.keep[s]].sum()) for plan in plans for s in plan.shards if s not in plan.todo)
    with _progress(progress) as bar:
        task = bar.add_task(f"extract {len(frames)} frames", total=max(total, 1), completed=done_atoms)
        remaining = {plan.name: len(plan.todo) for plan in plans}
        by_name = {plan.name: plan for plan in plans}
        for plan in plans:
            if not plan.todo:
                _finalize(store, key, plan)

        def args(plan, s, e):
            idx = plan.keep[(s, e)]
            return (str(store.path), key, plan.model, plan.name, device, s, e, idx,
                    [frames[i] for i in idx], plan.layers, batch_size, on_unsupported,
                    model_fingerprint_sha(plan.info["fingerprint"]))

        if client is None:
            for plan in plans:
                if not plan.todo:
                    continue  # finalized above
                for s, e in plan.todo:
                    out = run_shard(*args(plan, s, e), verbose=verbose)
                    logs[plan.name].merge(out["warnings"])
                    bar.advance(task, out["atoms"])
                _finalize(store, key, plan)
                _tell_warnings(bar, progress and not verbose, logs[plan.name].summary(plan.name))
            return
        from distributed import as_completed

        futures = {}
        for plan in plans:
            for s, e in plan.todo:
                fut = client.submit(run_shard, *args(plan, s, e), verbose=verbose, pure=False,
                                    key=f"shard-{plan.name}-{s}-{uuid.uuid4().hex[:8]}")
                futures[fut] = plan.name
        for fut in as_completed(list(futures)):
            out = fut.result()
            bar.advance(task, out["atoms"])
            name = futures[fut]
            logs[name].merge(out["warnings"])
            remaining[name] -= 1
            if remaining[name] == 0:
                _finalize(store, key, by_name[name])
                _tell_warnings(bar, progress and not verbose, logs[name].summary(name))
