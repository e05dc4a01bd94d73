"""``descriptor-rdf``: a fast, non-learned per-atom radial density descriptor (numpy + ASE only).

It is the honest baseline of the study ("how far is a learned space from a plain radial
descriptor?") and the fast model of the tests. For atom :math:`i` with neighbours :math:`j` within
:math:`r_c` (periodic images included when ``pbc`` is set),

.. math::

    \\rho_{i,c,b} = \\sum_j w_c(Z_j)\\, f_c(r_{ij})\\, \\exp\\!\\left(-\\frac{(r_{ij}-\\mu_b)^2}{2\\sigma^2}\\right),
    \\qquad f_c(r) = \\tfrac12\\left(1+\\cos\\frac{\\pi r}{r_c}\\right),

with ``n_bins`` Gaussian centres :math:`\\mu_b` evenly spaced on :math:`[0, r_c]`, width
:math:`\\sigma = r_c/n_{bins}`, and four neighbour-element channels
:math:`w(Z) = (1,\\ Z/100,\\ g(Z)/18,\\ p(Z)/7)` (constant, atomic number, periodic-table group,
period). Layer ``"radial"`` is :math:`\\rho_i` flattened channel-major (4·16 = 64 columns).
Layer ``"last"`` adds the centre atom's own element: :math:`\\tanh(W [\\rho_i/s;\\ w(Z_i)])` with a
fixed Gaussian random matrix :math:`W` (64 × 68, seed 0, variance 1/68) and :math:`s = 1`, a crude
"readout" that mixes environment and species non-linearly, as learned last layers do.

Every element 1..118 is supported; molecules (``pbc=False``) and periodic cells alike.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from mlipspace.data.rows import row_table
from mlipspace.errors import InputError, UnsupportedElementsError
from mlipspace.models.base import Extractor, FeatureSet, check_finite

VERSION = "1"
_NOBLE = (0, 2, 10, 18, 36, 54, 86, 118)


def period_group(z: int) -> tuple[int, int]:
    """Period (1..7) and group (1..18; lanthanides and actinides count as group 3) of element ``z``."""
    if not 1 <= z <= 118:
        raise ValueError(f"atomic number {z} outside 1..118")
    period = next(p for p in range(1, 8) if z <= _NOBLE[p])
    pos = z - _NOBLE[period - 1]  # position in the period, from 1
    if period == 1:
        group = 1 if pos == 1 else 18
    elif period in (2, 3):
        group = pos if pos <= 2 else pos + 10
    elif period in (4, 5):
        group = pos
    else:  # periods 6 and 7 carry the 15 f-block elements in group 3
        group = pos if pos <= 2 else (3 if pos <= 17 else pos - 14)
    return period, group


def element_channels(z: np.ndarray) -> np.ndarray:
    """Channel weights ``(1, Z/100, group/18, period/7)`` of each atomic number, shape (n, 4)."""
    table = _channel_table()
    return table[np.asarray(z, dtype=np.int64)]


_TABLE: np.ndarray | None = None


def _channel_table() -> np.ndarray:
    global _TABLE
    if _TABLE is None:
        t = np.zeros((119, 4))
        for z in range(1, 119):
            p, g = period_group(z)
            t[z] = (1.0, z / 100.0, g / 18.0, p / 7.0)
        _TABLE = t
    return _TABLE


class RadialDescriptor(Extractor):
    """The ``descriptor-rdf`` extractor: see the module docstring for the formula."""

    family = "descriptor"
    layers = ("radial", "last")

    def __init__(self, name: str = "descriptor-rdf", *, cutoff: float = 5.0, n_bins: int = 16,
                 seed: int = 0, scale: float = 1.0, device: str = "cpu"):
        if cutoff <= 0 or n_bins < 2:
            raise InputError(f"descriptor needs cutoff > 0 and n_bins >= 2 (got {cutoff}, {n_bins})")
        self.name = name
        self.cutoff = float(cutoff)
        self.n_bins = int(n_bins)
        self.seed = int(seed)
        self.scale = float(scale)
        self.device = device  # numpy only: the device is recorded, never used
        width = 4 * self.n_bins
        self.dims = {"radial": width, "last": width}
        self.elements = frozenset(range(1, 119))
        self.centres = np.linspace(0.0, self.cutoff, self.n_bins)
        self.sigma = self.cutoff / self.n_bins
        rng = np.random.default_rng(self.seed)
        self.projection = rng.normal(0.0, 1.0 / np.sqrt(width + 4), size=(width + 4, width))
        hyper = {"cutoff": self.cutoff, "n_bins": self.n_bins, "seed": self.seed, "scale": self.scale,
                 "channels": ["1", "Z/100", "group/18", "period/7"], "version": VERSION}
        hyper_sha = hashlib.sha256(json.dumps(hyper, sort_keys=True).encode()).hexdigest()
        # same keys as the torch adapters' fingerprints; no checkpoint file: the hyper-parameters
        # (and the descriptor's own version string) define the model, so they are hashed instead
        self.fingerprint = {
            "model": name,
            "family": self.family,
            "checkpoint": None,
            "checkpoint_sha256": hyper_sha,
            "package": "mlipspace.models.descriptor",
            "package_version": VERSION,
            "head": None,
            "hyperparameters": hyper,
        }

    # -- features of one frame -------------------------------------------------------------------
    def radial(self, atoms: Atoms) -> np.ndarray:
        """The ``"radial"`` layer of one frame, (n_atoms, 4·n_bins) float64."""
        from ase.neighborlist import neighbor_list

        n = len(atoms)
        out = np.zeros((n, 4, self.n_bins))
        if n == 0:
            return out.reshape(0, -1)
        i, j, d = neighbor_list("ijd", atoms, self.cutoff, self_interaction=False)
        if len(i):
            fc = 0.5 * (1.0 + np.cos(np.pi * d / self.cutoff))
            g = np.exp(-0.5 * ((d[:, None] - self.centres[None, :]) / self.sigma) ** 2) * fc[:, None]
            w = element_channels(atoms.numbers[j])  # (pairs, 4)
            contrib = (w[:, :, None] * g[:, None, :]).reshape(len(i), -1)
            # sum pair contributions per centre atom (i is sorted by neighbor_list, but do not rely on it)
            order = np.argsort(i, kind="stable")
            i_sorted = i[order]
            starts = np.flatnonzero(np.r_[True, i_sorted[1:] != i_sorted[:-1]])
            sums = np.add.reduceat(contrib[order], starts, axis=0)
            out = out.reshape(n, -1)
            out[i_sorted[starts]] = sums
        return out.reshape(n, -1)

    def last(self, atoms: Atoms, radial: np.ndarray | None = None) -> np.ndarray:
        """The ``"last"`` layer: ``tanh(W [radial/scale; w(Z_i)])``, (n_atoms, 4·n_bins) float64."""
        if radial is None:
            radial = self.radial(atoms)
        x = np.concatenate([radial / self.scale, element_channels(atoms.numbers)], axis=1)
        return np.tanh(x @ self.projection)

    # -- the Extractor interface -----------------------------------------------------------------
    def extract(self, frames: Sequence[Atoms], layers: Sequence[str] = ("last",), batch_size: int = 8,
                on_unsupported: str = "raise") -> FeatureSet:
        """Features of ``layers`` (``"radial"``, ``"last"`` or ``"all"``) for all atoms of ``frames``."""
        if isinstance(layers, str):
            layers = self.layers if layers == "all" else (layers,)
        unknown = [name for name in layers if name not in self.layers]
        if unknown:
            raise InputError(f"{self.name} has no layer(s) {unknown}; layers: {', '.join(self.layers)}")
        if on_unsupported not in ("raise", "skip"):
            raise InputError(f"on_unsupported must be 'raise' or 'skip', not {on_unsupported!r}")
        from mlipspace.models._torch_utils import check_frames  # imports no torch

        frames = check_frames(frames)
        kept, skipped = [], []
        for k, atoms in enumerate(frames):
            bad = sorted({int(z) for z in atoms.numbers if int(z) not in self.elements})
            if bad:
                reason = f"unsupported atomic numbers {bad} (supported: 1..118)"
                if on_unsupported == "raise":
                    raise UnsupportedElementsError(f"{self.name}: {reason}", frame=k)
                skipped.append((k, reason))
                continue
            kept.append(k)
        out = {name: [] for name in layers}
        for k in kept:
            rad = self.radial(frames[k])
            if "radial" in out:
                out["radial"].append(rad)
            if "last" in out:
                out["last"].append(self.last(frames[k], rad))
        feats = {
            name: (np.concatenate(v).astype(np.float32) if v else np.zeros((0, self.dims[name]), np.float32))
            for name, v in out.items()
        }
        rows = row_table([frames[k] for k in kept])
        check_finite(self.name, feats, rows["frame"], [frames[k] for k in kept])
        rows["frame"] = np.asarray(kept, dtype=np.int64)[rows["frame"]] if kept else rows["frame"]
        return FeatureSet(self.name, feats, rows, dict(self.fingerprint), skipped)


_PARAMS = ("cutoff", "n_bins", "seed", "scale")


def load(spec, device: str = "cpu") -> RadialDescriptor:
    """Registry entry point: build the descriptor with the options of ``spec``.

    With a ``checkpoint`` option (a spec ``FAMILY:/path/params.json`` of a recipe whose
    ``"module"`` is ``descriptor``) the hyper-parameters are read from that JSON file, and
    string options of the spec's query override them.
    """
    options = dict(spec.options)
    path = options.pop("checkpoint", None)
    if path is not None:
        from mlipspace.errors import ModelUnavailableError

        try:
            params = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelUnavailableError(f"{path}: not a descriptor parameter file ({exc})") from None
        if not isinstance(params, dict):
            raise ModelUnavailableError(f"{path}: a descriptor parameter file holds a JSON object")
        unknown = sorted((set(params) | set(options)) - set(_PARAMS))
        if unknown:
            raise ModelUnavailableError(f"{path}: unknown descriptor parameter(s) {unknown}; valid: {list(_PARAMS)}")
        params.update(options)
        try:
            options = {k: (int(v) if k in ("n_bins", "seed") else float(v)) for k, v in params.items()}
        except ValueError as exc:
            raise ModelUnavailableError(f"{path}: bad descriptor parameter value ({exc})") from None
    return RadialDescriptor(spec.name, device=device, **options)
