"""The extractor interface every model family implements, and the result it returns.

Like an ASE calculator, an extractor hides which package computes the numbers: callers see
``name``, ``family``, ``layers``, ``dims``, ``elements``, ``fingerprint`` and ``extract``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms


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
