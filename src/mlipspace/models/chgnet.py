"""CHGNet adapter (registry names ``chgnet-0.3.0``, ``chgnet-0.2.0``, ``chgnet-r2scan``).

Layers (all per atom, width 64, float32):

- ``interaction.{i}``, i = 0..3: output of the i-th atom interaction block
  (forward hook on ``atom_conv_layers.{i}``).
- ``last``: the per-atom invariant vector that enters the energy readout, i.e. the input of
  ``mlp`` (forward *pre*-hook on ``mlp``). CHGNet's energy is
  ``E = sum_i mlp(last_i) + sum_i AtomRef(Z_i)``, so ``last`` is exactly what the readout sees.
  For 0.3.0 and r2scan, ``last = LayerNorm(interaction.3)`` (``readout_norm``); 0.2.0 has no
  readout norm, so there ``last == interaction.3``.

  Trap: ``CHGNet.predict_structure(..., return_atom_feas=True)["atom_fea"]`` is *not* this
  vector: it is the output of ``atom_conv_layers.2`` (the input of the magnetic-moment head).

Elements: the 94 rows of the atom embedding, Z = 1..94 (only 89 of them occur in MPtrj).

Geometry: CHGNet builds its graph with pymatgen, which needs a full 3D cell. Non-periodic axes
(molecules, slabs, wires) are therefore replaced by vacuum: the cell vector of each non-periodic
axis becomes orthogonal to the periodic ones with length ``extent + 6 Å + 1 Å`` (6 Å = the atom
graph cutoff), so no periodic image is ever within the cutoff and the graph -- hence every
feature -- is that of the isolated system (:func:`mlipspace.models._torch_utils.with_vacuum`).
Isolated atoms (no neighbour within 6 Å) are allowed, as in ``CHGNetCalculator``; their
features come from the embedding alone plus the self-update of each block.

Speed: graphs of ``batch_size`` frames go through one batched forward pass (``task="e"``: no
forces, stress or magmoms), under ``torch.inference_mode``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

from ase import Atoms

from mlipspace.models.base import make_fingerprint
from mlipspace.models._torch_utils import Tap, TorchExtractor, with_vacuum

#: versions shipped in the chgnet 0.4.2 wheel (``CHGNet.load(model_name=...)``)
VERSIONS = ("0.3.0", "0.2.0", "r2scan")
N_CONV = 4
WIDTH = 64
N_ELEMENTS = 94


def describe(spec) -> dict:
    """Static metadata of a CHGNet registry entry (no torch import, no weights): layers, dims, elements."""
    layers = tuple(f"interaction.{i}" for i in range(N_CONV)) + ("last",)
    return {
        "layers": layers,
        "dims": {layer: WIDTH for layer in layers},
        "elements": frozenset(range(1, N_ELEMENTS + 1)),
        "cutoff": 6.0,
    }


def checkpoint_path(version: str) -> Path:
    """The checkpoint file of CHGNet ``version`` inside the installed chgnet package."""
    import importlib.util

    spec = importlib.util.find_spec("chgnet")
    root = Path(spec.origin).parent / "pretrained" / version
    files = sorted(root.glob("*.pth.tar"))
    if len(files) != 1:
        from mlipspace.errors import ModelUnavailableError

        raise ModelUnavailableError(f"CHGNet {version}: expected one checkpoint in {root}, found {len(files)}")
    return files[0]


def _structure(atoms: Atoms, cutoff: float):
    """A pymatgen ``Structure`` of ``atoms`` (non-periodic axes padded with vacuum), order kept."""
    from pymatgen.core import Lattice, Structure

    boxed = with_vacuum(atoms, cutoff)
    return Structure(Lattice(boxed.cell.array), boxed.numbers, boxed.positions, coords_are_cartesian=True)


class CHGNetExtractor(TorchExtractor):
    """Per-atom features of a pretrained CHGNet (see the module docstring for the layers)."""

    family = "chgnet"

    def __init__(self, name: str, model, version: str, device: str):
        from chgnet.graph import CrystalGraphConverter

        self.name = name
        self.model = model.eval()
        self.version = version
        self.device = device
        meta = describe(None)
        n_conv = len(model.atom_conv_layers)
        self.layers = tuple(f"interaction.{i}" for i in range(n_conv)) + ("last",)
        self.dims = {layer: int(model.atom_fea_dim) for layer in self.layers}
        self.elements = frozenset(range(1, model.atom_embedding.embedding.num_embeddings + 1))
        if self.layers != meta["layers"] or self.dims != meta["dims"] or self.elements != meta["elements"]:
            raise RuntimeError(f"{name}: checkpoint does not match the static metadata in describe()")
        conv = model.graph_converter
        self.cutoff = float(conv.atom_graph_cutoff)
        # own converter: isolated atoms allowed (like CHGNetCalculator), and the model's converter
        # (shared with calculator()) is left as it is
        self._converter = CrystalGraphConverter(
            atom_graph_cutoff=conv.atom_graph_cutoff,
            bond_graph_cutoff=conv.bond_graph_cutoff,
            algorithm=conv.algorithm,
            on_isolated_atoms="ignore",
        )
        self.fingerprint = make_fingerprint(name, self.family, checkpoint_path(version), "chgnet", head=None,
                                            version=version)

    def _taps(self) -> dict[str, Tap]:
        taps = {f"interaction.{i}": Tap(f"atom_conv_layers.{i}") for i in range(len(self.layers) - 1)}
        taps["last"] = Tap("mlp", pre=True)
        return taps

    def _graphs(self, frames: list[Atoms]) -> list:
        return [self._converter(_structure(a, self.cutoff)).to(self.device) for a in frames]

    def _forward(self, frames: list[Atoms]) -> None:
        # BatchedGraph keeps atoms in graph order = structure order = input order
        with warnings.catch_warnings():
            # chgnet converts a requires_grad volume to a scalar; harmless without a backward pass
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
            self.model(self._graphs(frames), task="e")

    #: energy added once per structure on top of the per-atom readout (none for CHGNet)
    energy_offset = 0.0

    def readout(self, last, numbers):
        """Per-atom energies (eV) computed from ``last`` features by CHGNet's own readout.

        ``mlp(last_i) + AtomRef(Z_i)``; summed over a structure's atoms (plus
        ``energy_offset``) this is CHGNet's total energy. ``last``: (n_atoms, 64); ``numbers``: Z
        of the same rows. Used by the tests to prove that ``last`` is the readout's input.
        """
        import numpy as np
        import torch

        with torch.inference_mode():
            x = torch.as_tensor(np.asarray(last), dtype=torch.float32, device=self.device)
            e = self.model.mlp(x).squeeze(1)
            if self.model.composition_model is not None:
                z = torch.as_tensor(np.asarray(numbers), dtype=torch.long, device=self.device)
                e = e + self.model.composition_model.fc.weight.view(-1)[z - 1]
        return e.double().cpu().numpy()

    def calculator(self):
        """``chgnet.model.dynamics.CHGNetCalculator`` on the same model and device (computes e, f, s, m)."""
        from chgnet.model.dynamics import CHGNetCalculator

        with contextlib.redirect_stdout(io.StringIO()):
            return CHGNetCalculator(model=self.model, use_device=self.device)


def load(spec, device: str) -> CHGNetExtractor:
    """Load the CHGNet checkpoint named by ``spec.options["version"]`` on ``device``."""
    from chgnet.model import CHGNet

    version = spec.options.get("version", "0.3.0")
    if version not in VERSIONS:
        from mlipspace.errors import ModelUnavailableError

        raise ModelUnavailableError(f"unknown CHGNet version {version!r}; known: {', '.join(VERSIONS)}")
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
        model = CHGNet.load(model_name=version, use_device=device, verbose=False)
    return CHGNetExtractor(spec.name, model, version, device)
