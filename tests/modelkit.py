"""Helpers shared by the model adapter tests (tests/test_models_*.py)."""

from pathlib import Path

import numpy as np
import pytest

MAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "mad-bench-mad-reduced.xyz"


def mad_frames(indices):
    """Frames ``indices`` of the shared MAD sample; skips the test when ../shared/data is absent."""
    if not MAD.exists():
        pytest.skip(f"shared data not found at {MAD}")
    import ase.io

    frames = ase.io.read(MAD, ":")
    return [frames[i] for i in indices]


def frame_slices(frames):
    """Row slice of each frame in a concatenated per-atom array."""
    ends = np.cumsum([len(a) for a in frames])
    return [slice(e - len(a), e) for a, e in zip(frames, ends)]


def rel(a, b):
    """Largest absolute difference relative to the largest |b|."""
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(b)), 1e-12))


def synthetic_frames():
    """Four small frames covering the periodicities: rattled NaCl (3-D), a Cu(111) slab (pbc T,T,F),
    a water molecule (no cell, pbc False) and a rattled Si supercell."""
    from ase.build import bulk, fcc111, molecule

    nacl = bulk("NaCl", "rocksalt", a=5.64)
    nacl.rattle(0.05, seed=1)
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
    water = molecule("H2O")
    si = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    si.rattle(0.05, seed=2)
    return [nacl, slab, water, si]


def check_alone_equals_batched(model, frames, rel_tol):
    """Every layer of each frame extracted alone equals its rows in one batch of all ``frames``
    (relative difference :func:`rel` at most ``rel_tol``)."""
    batched = model.extract(frames, layers="all", batch_size=len(frames))
    for i, sl in enumerate(frame_slices(frames)):
        alone = model.extract([frames[i]], layers="all")
        for layer in model.layers:
            assert rel(alone.layers[layer], batched.layers[layer][sl]) <= rel_tol, (i, layer)


def check_two_runs_bit_identical(model, frames):
    """Two extractions of ``frames`` (batches of 2) give bit-identical features in every layer."""
    a = model.extract(frames, layers="all", batch_size=2)
    b = model.extract(frames, layers="all", batch_size=2)
    for layer in model.layers:
        np.testing.assert_array_equal(a.layers[layer], b.layers[layer])


#: Python source (for a subprocess that a test kills mid-run) defining ``SlowDescriptor(delay)``:
#: descriptor-rdf, same name, fingerprint and features, whose ``extract`` first sleeps ``delay`` s,
#: so every shard task takes long enough to be killed between two shards or inside one.
SLOW_DESCRIPTOR = """
import time

from mlipspace.models import load


class SlowDescriptor:
    def __init__(self, delay):
        inner = load("descriptor-rdf", device="cpu")
        self.inner, self.delay = inner, delay
        for attr in ("name", "family", "layers", "dims", "elements", "fingerprint", "device"):
            setattr(self, attr, getattr(inner, attr))

    def extract(self, *args, **kwargs):
        time.sleep(self.delay)
        return self.inner.extract(*args, **kwargs)
"""
