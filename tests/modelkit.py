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
