"""Low-level helpers of the store: atomic placement, zarr arrays written in row blocks, JSON files.

Everything that becomes visible in a store is first built under ``<store>/.tmp/<random>`` and then
moved into place with one ``os.rename`` (atomic on POSIX file systems, local or shared), so a
reader or a resumed run never sees half of an object: it either exists complete or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

#: Target size of one zarr chunk: large enough that per-chunk overhead is negligible when whole
#: arrays are read, small enough that streaming (Gram accumulation) needs little memory.
CHUNK_BYTES = 16 * 2**20


def _owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def tmp_dir(root: Path) -> Path:
    """A fresh, empty directory under ``root/.tmp`` (same file system, so ``rename`` is atomic).

    Its name starts with ``<host>-<pid>-`` so that :func:`clean_tmp` can tell debris of killed
    processes from work in progress.
    """
    path = root / ".tmp" / f"{_owner()}-{uuid.uuid4().hex}"
    path.mkdir(parents=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_tmp(root: Path) -> int:
    """Remove what killed processes of this host left under ``root/.tmp``; the number removed."""
    base = root / ".tmp"
    if not base.is_dir():
        return 0
    host = socket.gethostname()
    removed = 0
    for entry in base.iterdir():
        who, _, _ = entry.name.rpartition("-")
        h, _, pid = who.rpartition("-")
        if h == host and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def fsync_tree(path: Path) -> None:
    """Flush every file and directory below ``path`` to disk, so that what is renamed into place
    next is durable before it becomes visible (a crash never leaves a visible object with lost data)."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not fsync directories
        pass
    finally:
        os.close(fd)


def place(tmp: Path, final: Path) -> bool:
    """Move the finished ``tmp`` to ``final`` atomically; ``False`` (and ``tmp`` removed) if ``final`` exists.

    ``tmp`` is flushed to disk first and the rename after, so a visible object is a durable one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fsync_tree(tmp)
    try:
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        return True
    except OSError:
        if final.exists():  # someone placed the same deterministic object first
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path):
    with open(path) as fh:
        return json.load(fh)


def chunk_rows(shape: tuple[int, ...], itemsize: int) -> int:
    """Rows per chunk so that one chunk holds about :data:`CHUNK_BYTES`."""
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    return int(max(1, min(max(shape[0], 1), CHUNK_BYTES // row_bytes)))


def create_group(path: Path, attrs: dict | None = None):
    """Create a zarr v3 group at ``path`` with ``attrs``."""
    return zarr.open_group(store=LocalStore(str(path)), mode="w", zarr_format=3, attributes=attrs or {})


def write_array(path: Path, array: np.ndarray, attrs: dict | None = None):
    """Write an in-memory array as an uncompressed zarr v3 array at ``path``."""
    array = np.ascontiguousarray(array)
    return write_blocks(path, [array], array.shape, array.dtype, attrs)


def write_blocks(path: Path, blocks: Iterable[np.ndarray], shape: tuple[int, ...], dtype, attrs: dict | None = None):
    """Write an array given as consecutive row blocks, buffering so every write fills whole chunks.

    Memory stays at about one chunk plus one block, whatever the total size (larger than memory
    arrays are written this way from the staged shards).
    """
    dtype = np.dtype(dtype)
    rows = chunk_rows(shape, dtype.itemsize)
    arr = zarr.create_array(
        store=LocalStore(str(path)), shape=shape, chunks=(rows, *shape[1:]), dtype=dtype,
        compressors=None, fill_value=np.zeros((), dtype).item() if dtype.kind != "b" else False,
        zarr_format=3, attributes=attrs or {},
    )
    buf: list[np.ndarray] = []
    buffered = 0
    start = 0
    for block in blocks:
        block = np.asarray(block, dtype=dtype)
        if block.shape[1:] != tuple(shape[1:]):
            raise ValueError(f"block of shape {block.shape} does not fit an array of shape {shape}")
        buf.append(block)
        buffered += len(block)
        while buffered >= rows:
            data = np.concatenate(buf) if len(buf) > 1 else buf[0]
            n = (len(data) // rows) * rows
            arr[start:start + n] = data[:n]
            start += n
            rest = data[n:]
            buf = [rest] if len(rest) else []
            buffered = len(rest)
    if buffered:
        data = np.concatenate(buf) if len(buf) > 1 else buf[0]
        arr[start:start + len(data)] = data
        start += len(data)
    if start != shape[0]:
        raise ValueError(f"wrote {start} rows into an array of {shape[0]} rows")
    return arr


def open_array(path: Path):
    """Open a stored zarr array read-only (lazy: nothing is read until sliced)."""
    return zarr.open_array(store=LocalStore(str(path), read_only=True), mode="r")


_RAW_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}]


def _read_raw(path: Path, meta: dict) -> np.ndarray | None:
    """Whole-array read of an uncompressed zarr v3 array whose chunks span full rows, or ``None``.

    Such a chunk file is exactly the little-endian bytes of a block of consecutive rows (zarr v3
    spec, ``bytes`` codec, default chunk keys ``c/i/0/...``), so it is read straight into the
    result with one ``readinto`` per chunk: about the speed of ``numpy.load``, several times less
    overhead than zarr's generic path. A missing chunk holds the fill value.
    """
    shape = tuple(meta.get("shape", ()))
    grid = meta.get("chunk_grid", {})
    key_enc = meta.get("chunk_key_encoding", {})
    if (not shape or meta.get("codecs") != _RAW_CODECS or grid.get("name") != "regular"
            or key_enc.get("name") != "default" or key_enc.get("configuration", {}).get("separator", "/") != "/"
            or meta.get("data_type") not in ("float32", "float64", "int32", "int64", "uint8", "int8", "bool")):
        return None
    chunks = tuple(grid["configuration"]["chunk_shape"])
    if chunks[1:] != shape[1:]:
        return None
    dtype = np.dtype(meta["data_type"]).newbyteorder("<")
    out = np.empty(shape, dtype=dtype)
    fill = meta.get("fill_value")
    flat = out.reshape(-1).view(np.uint8)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    tail = "/".join(["0"] * (len(shape) - 1))
    for i, start in enumerate(range(0, shape[0], chunks[0])):
        stop = min(start + chunks[0], shape[0])
        target = flat[start * row_bytes: stop * row_bytes]
        name = path / "c" / (f"{i}/{tail}" if tail else f"{i}")
        try:
            with open(name, "rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                if size != chunks[0] * row_bytes:
                    return None  # not what this reader expects: let zarr decide
                got = fh.readinto(target)
                while got < len(target):  # readinto may return short reads on some file systems
                    more = fh.readinto(target[got:])
                    if not more:
                        return None
                    got += more
        except FileNotFoundError:
            out[start:stop] = fill if fill is not None else 0
    return out


def read_array(path: Path) -> np.ndarray:
    """Read a whole stored array into memory (raw fast path when possible, else through zarr)."""
    try:
        meta = read_json(path / "zarr.json")
    except (OSError, ValueError):
        meta = {}
    fast = _read_raw(path, meta) if meta else None
    if fast is not None:
        return fast
    arr = open_array(path)
    return arr[...] if arr.ndim else np.asarray(arr[()])


def disk_bytes(path: Path) -> int:
    """Bytes of all files below ``path``."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return total


def is_node(path: Path) -> bool:
    """``True`` if ``path`` is a placed zarr group or array (hidden temporary names excluded)."""
    return not path.name.startswith(".") and (path / "zarr.json").is_file()


def children(path: Path) -> list[str]:
    """Sorted names of the placed zarr nodes directly below ``path``."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_dir() and is_node(p))


def attrs(path: Path) -> dict:
    """Attributes of the zarr node at ``path`` (read from its ``zarr.json``)."""
    return read_json(path / "zarr.json").get("attributes", {})


def shape_dtype(path: Path) -> tuple[tuple[int, ...], str]:
    """Shape and dtype of the zarr array at ``path`` without opening it through zarr."""
    meta = read_json(path / "zarr.json")
    return tuple(meta["shape"]), str(meta["data_type"])


# --------------------------------------------------------------------------- staging (shards)
SHARD_META = "meta.json"


def staging_dir(root: Path, key: str, model: str) -> Path:
    return root / "staging" / key / model


def staged_models(root: Path, key: str) -> list[str]:
    """Models with an extraction of dataset ``key`` in progress (a plan in ``staging/``)."""
    base = root / "staging" / key
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "plan.json").is_file())


def shard_name(start: int, stop: int) -> str:
    return f"shard_{start:09d}_{stop:09d}"


def read_shard_meta(path: Path) -> dict | None:
    """The metadata of a completed shard, or ``None`` if ``path`` is not a valid completed shard."""
    try:
        meta = read_json(path / SHARD_META)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("complete") is not True:
        return None
    return meta


def staging_progress(root: Path, key: str, model: str) -> dict | None:
    """``{"shards_done", "shards_total", "layers"}`` of an extraction in progress, else ``None``."""
    base = staging_dir(root, key, model)
    try:
        plan = read_json(base / "plan.json")
    except (OSError, ValueError):
        return None
    done = sum(1 for s, e in plan.get("shards", []) if read_shard_meta(base / shard_name(s, e)) is not None)
    return {"shards_done": done, "shards_total": len(plan.get("shards", [])), "layers": plan.get("layers", [])}
