"""The extractor interface every model family implements, and the result it returns.

Like an ASE calculator, an extractor hides which package computes the numbers: callers see
``name``, ``family``, ``layers``, ``dims``, ``elements``, ``fingerprint`` and ``extract``.

Also the public helpers every adapter and the store share: :func:`make_fingerprint` (the
provenance dict stored with features; :func:`sha256_file`, :func:`sha256_files`,
:func:`package_version`) and :func:`check_finite` (no NaN feature is ever stored).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms

from mlipspace.errors import StructureError


@dataclass
class FeatureSet:
    """Per-atom features of some frames: ``layers[name]`` is (n_atoms, d) float32, rows as ``rows``.

    ``rows`` is a row table (:func:`mlipspace.data.rows.row_table`); ``skipped`` lists frames left out
    (index, reason) when extraction ran with ``on_unsupported="skip"``.
    """

    model: str
    layers: dict[str, np.ndarray]
    rows: dict[str, np.ndarray]
    fingerprint: dict = field(default_factory=dict)
    skipped: list[tuple[int, str]] = field(default_factory=list)


class Extractor(ABC):
    """A loaded model that turns ASE frames into per-atom latent features.

    Attributes set by each adapter: ``name`` (registry name), ``family``, ``layers`` (ordered layer
    names, backbone first, ``"last"`` at the end), ``dims`` (layer -> width), ``elements`` (supported
    atomic numbers), ``fingerprint`` (dict with registry name, checkpoint sha256, package and version,
    head), ``device``.
    """

    name: str
    family: str
    layers: tuple[str, ...]
    dims: dict[str, int]
    elements: frozenset[int]
    fingerprint: dict
    device: str

    @abstractmethod
    def extract(
        self,
        frames: Sequence[Atoms],
        layers: Sequence[str] = ("last",),
        batch_size: int = 8,
        on_unsupported: str = "raise",
    ) -> FeatureSet:
        """Features of ``layers`` for all atoms of ``frames``, rows in input order."""

    def calculator(self):
        """The model package's own ASE calculator for the same weights (energy and forces).

        Used to compare feature extraction with an ordinary energy+forces evaluation
        (``benchmarks/bench_extract.py``) and to check that the readout of ``"last"`` reproduces
        the model's energies. Adapters that can provide one override this.
        """
        raise NotImplementedError(f"{type(self).__name__} provides no ASE calculator")


# provenance

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of the file at ``path`` (cached on path, size and mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def sha256_files(paths: Iterable[str | os.PathLike]) -> str:
    """One sha256 for a checkpoint made of several files (e.g. a model directory).

    A single file gives its own sha256; several give the sha256 of the lines
    ``"<file name> <sha256>\\n"`` sorted by file name, so renaming the folder does not change it.
    """
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return sha256_file(paths[0])
    lines = sorted(f"{p.name} {sha256_file(p)}\n" for p in paths)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def package_version(distribution: str) -> str | None:
    """Installed version of ``distribution`` (its PyPI name), or ``None`` if unknown."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def make_fingerprint(
    name: str,
    family: str,
    checkpoint: Sequence[str | os.PathLike] | str | os.PathLike,
    package: str,
    head: str | None = None,
    **extra,
) -> dict:
    """The provenance dict of a loaded model, stored with its features.

    Keys: ``model`` (registry name), ``family``, ``checkpoint`` (file or folder name),
    ``checkpoint_sha256`` (:func:`sha256_files`), ``package``, ``package_version``, ``head``
    (``None`` for single-head models), plus ``extra``. Two feature sets are comparable only if
    their fingerprints are equal.
    """
    paths = [checkpoint] if isinstance(checkpoint, (str, os.PathLike)) else list(checkpoint)
    paths = [Path(p) for p in paths]
    label = paths[0].name if len(paths) == 1 else paths[0].parent.name
    return {
        "model": name,
        "family": family,
        "checkpoint": label,
        "checkpoint_sha256": sha256_files(paths),
        "package": package,
        "package_version": package_version(package),
        "head": head,
        **extra,
    }


def check_finite(model: str, layers: dict[str, np.ndarray], frame_of_row: np.ndarray,
                 frames: Sequence[Atoms] | None = None) -> None:
    """Raise :class:`StructureError` naming the first frame whose features are NaN/inf.

    ``frame_of_row`` gives each row's frame (index into ``frames`` when given, so the error can
    name the frame's source file and frame-in-file). A NaN feature is never stored silently.
    """
    from mlipspace.data.checks import frame_source

    for layer, arr in layers.items():
        ok = np.isfinite(arr).all(axis=1) if arr.ndim == 2 else np.isfinite(arr)
        if ok.all():
            continue
        bad_rows = np.flatnonzero(~ok)
        bad_frames = sorted({int(f) for f in np.asarray(frame_of_row)[bad_rows]})
        k = bad_frames[0]
        source, frame = frame_source(frames[k], k) if frames is not None else (None, k)
        more = f" (and {len(bad_frames) - 1} more frame(s))" if len(bad_frames) > 1 else ""
        raise StructureError(f"{model} returned non-finite (NaN/inf) features in layer {layer!r} "
                             f"for {len(bad_rows)} atom(s){more}", source=source, frame=frame)
