"""The message format between the main process and a model worker (:mod:`mlipspace.models.remote`).

A message is ``<u64 n><n bytes JSON header><u64 m><m bytes .npz>``: a JSON header (op, options,
results, errors) and NumPy arrays in ``.npz`` form, loaded with ``allow_pickle=False``. Plain
formats only, so the two sides may run different versions of Python, NumPy and ASE.

Frames travel as their arrays (numbers, positions, cell, pbc per frame) plus the ``info`` keys
error messages use (``source``, ``source_index``, ``subset``) and the model inputs ``charge`` and
``spin``; nothing else of an ``Atoms`` is sent.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np

#: atoms.info keys that travel: where the frame came from (error messages), its subset, and the
#: total charge / spin multiplicity some models take as input (UMA omol, ORB omol)
_INFO_KEYS = ("source", "source_index", "subset", "charge", "spin")


def write_message(stream, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    """Write one message to the binary ``stream`` and flush it."""
    head = json.dumps(header).encode()
    buf = io.BytesIO()
    if arrays:
        np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    body = buf.getvalue()
    stream.write(struct.pack("<Q", len(head)) + head + struct.pack("<Q", len(body)) + body)
    stream.flush()


def _read_exact(stream, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("the other side closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(stream) -> tuple[dict, dict[str, np.ndarray]]:
    """Read one message from the binary ``stream``; ``EOFError`` if the pipe is closed."""
    (n,) = struct.unpack("<Q", _read_exact(stream, 8))
    header = json.loads(_read_exact(stream, n))
    (m,) = struct.unpack("<Q", _read_exact(stream, 8))
    arrays = {}
    if m:
        with np.load(io.BytesIO(_read_exact(stream, m)), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    return header, arrays


def pack_frames(frames) -> tuple[dict, dict[str, np.ndarray]]:
    """Frames -> (JSON-able per-frame info, arrays) for :func:`write_message`."""
    counts = np.array([len(a) for a in frames], dtype=np.int64)
    arrays = {
        "natoms": counts,
        "numbers": np.concatenate([a.numbers for a in frames]).astype(np.int64) if len(frames) else np.zeros(0, np.int64),
        "positions": (np.concatenate([a.positions for a in frames]).astype(np.float64)
                      if len(frames) else np.zeros((0, 3))),
        "cell": np.array([np.asarray(a.cell[:], dtype=np.float64) for a in frames]).reshape(-1, 3, 3),
        "pbc": np.array([np.asarray(a.pbc, dtype=bool) for a in frames]).reshape(-1, 3),
    }
    info = [{k: _jsonable(a.info[k]) for k in _INFO_KEYS if k in a.info} for a in frames]
    return {"info": info}, arrays


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


def unpack_frames(header: dict, arrays: dict[str, np.ndarray]) -> list:
    """The inverse of :func:`pack_frames`: a list of ``ase.Atoms``."""
    from ase import Atoms

    bounds = np.concatenate([[0], np.cumsum(arrays["natoms"])])
    frames = []
    for i, info in enumerate(header["info"]):
        s, e = int(bounds[i]), int(bounds[i + 1])
        atoms = Atoms(numbers=arrays["numbers"][s:e], positions=arrays["positions"][s:e],
                      cell=arrays["cell"][i], pbc=arrays["pbc"][i])
        atoms.info.update(info)
        frames.append(atoms)
    return frames
