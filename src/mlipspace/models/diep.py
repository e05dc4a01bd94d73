"""DIEP adapter (registry name ``diep-r2scan``: the released MatPES-r2SCAN model, fold 1).

DIEP 2.0 (PyTorch Geometric backend) is an M3GNet-style network whose two- and three-body
inputs come from integrals over model electron densities. The energy model is extensive:
``E = data_std * sum_i final_layer(h_i) + data_mean + sum_i AtomRef(Z_i)`` with ``h`` the node
features after the last block.

Layers (all per atom, width 64, float32):

- ``interaction.{i}``, i = 0..2: node features output by the i-th graph block
  (forward hook on ``graph_layers.{i}``, element ``[1]`` of its ``(edge, node, state)`` output).
- ``last``: the node features entering the final readout, i.e. ``g.node_feat`` as seen by a
  forward *pre*-hook on ``final_layer`` (a gated MLP applied per atom). The readout reads the
  last block's output unchanged, so ``last == interaction.2``; it is kept as its own name so every
  family has a ``last`` layer with the same meaning (the energy readout's input).

Elements: the 89 ``element_types`` of the checkpoint (H-Bi, Ac-Pu); node types index that list.

Geometry: DIEP's own ``Atoms2Graph`` handles any periodicity (``find_points_in_spheres`` over the
periodic axes only; a fully non-periodic structure uses Cartesian coordinates and no images), so
no vacuum padding is needed. Periodic structures are wrapped into the cell first, as
``DIEPCalculator`` does (exact, and it keeps the neighbour search small).

Speed: ``batch_size`` graphs are merged with ``torch_geometric.data.Batch`` and run in one forward
pass of the model alone (no forces, no stress), under ``torch.inference_mode``.
"""

from __future__ import annotations

from ase import Atoms

from mlipspace.models.base import make_fingerprint
from mlipspace.models._torch_utils import Tap, TorchExtractor

N_BLOCKS = 3
WIDTH = 64
#: Z of the released model's element_types: H..Bi (1-83) and Ac..Pu (89-94)
ELEMENTS = frozenset(list(range(1, 84)) + list(range(89, 95)))
CHECKPOINT_FILES = ("model.json", "model.pt", "state.pt")


def describe(spec) -> dict:
    """Static metadata of the DIEP registry entry (no torch import, no weights): layers, dims, elements."""
    layers = tuple(f"interaction.{i}" for i in range(N_BLOCKS)) + ("last",)
    return {"layers": layers, "dims": {layer: WIDTH for layer in layers}, "elements": ELEMENTS, "cutoff": 5.0}


class DIEPExtractor(TorchExtractor):
    """Per-atom features of a DIEP potential (see the module docstring for the layers)."""

    family = "diep"

    def __init__(self, name: str, potential, model_dir, device: str):
        from ase.data import atomic_numbers

        from diep.ext.ase import Atoms2Graph

        self.name = name
        self.potential = potential.eval()
        self.model = potential.model
        self.device = device
        m = self.model
        self.layers = tuple(f"interaction.{i}" for i in range(len(m.graph_layers))) + ("last",)
        self.dims = {layer: int(m.final_layer.in_feats) for layer in self.layers}
        self._z_to_type = {atomic_numbers[el]: i for i, el in enumerate(m.element_types)}
        self.elements = frozenset(self._z_to_type)
        self.cutoff = float(m.cutoff)
        self._converter = Atoms2Graph(m.element_types, m.cutoff)
        self._build_grid()
        self.fingerprint = make_fingerprint(
            name, self.family, [model_dir / f for f in CHECKPOINT_FILES], "diep", head=None,
            model_dir=model_dir.name,
        )

    def _build_grid(self) -> None:
        """Build the integrator's lazily cached quadrature grid now, in normal (grad) mode.

        ``DIEPIntegrator`` creates its grid on the first forward pass and caches it per device. If
        that first pass ran under ``torch.inference_mode`` (our ``extract``), the cached tensors
        would be inference tensors and every later forward *with* forces (the ASE calculator, on
        the same potential) would fail with "Inference tensors cannot be saved for backward".
        """
        integrator = getattr(self.model, "diep_integrator", None)
        if integrator is not None and hasattr(integrator, "_ensure_grid"):
            # the device the forward will pass (that of the graph = that of the weights, e.g. cuda:0)
            integrator._ensure_grid(next(self.model.parameters()).device)

    def _taps(self) -> dict[str, Tap]:
        taps = {f"interaction.{i}": Tap(f"graph_layers.{i}", select=lambda out: out[1])
                for i in range(len(self.layers) - 1)}
        taps["last"] = Tap("final_layer", pre=True, select=lambda inputs: inputs[0].node_feat)
        return taps

    def _graph(self, atoms: Atoms):
        work = atoms.copy()
        work.calc = None
        work.wrap()  # only periodic axes are wrapped
        graph, lattice, _ = self._converter.get_graph(work)
        return graph, lattice

    def _forward(self, frames: list[Atoms]) -> None:
        import torch
        from torch_geometric.data import Batch

        graphs, lattices = zip(*(self._graph(a) for a in frames))
        batch = Batch.from_data_list(list(graphs)).to(self.device)  # nodes stay in input order
        lattice = torch.cat([lat.reshape(1, 3, 3) for lat in lattices], dim=0).to(self.device)
        # positions and image shifts from fractional coordinates, exactly as Potential.forward does
        self.potential._set_positions(batch, lattice)
        self.model(g=batch, state_attr=None)

    @property
    def energy_offset(self) -> float:
        """Energy added once per structure on top of the per-atom readout (``data_mean``)."""
        return float(self.potential.data_mean)

    def readout(self, last, numbers):
        """Per-atom energies (eV) computed from ``last`` features by DIEP's own readout.

        ``data_std * final_layer(last_i) + AtomRef(Z_i)``; summed over a structure's atoms plus
        ``energy_offset`` this is DIEP's total energy. Used by the tests to prove that ``last`` is the
        readout's input. A ZBL repulsion term (``calc_repuls``, off in the released model) is not
        included.
        """
        import numpy as np
        import torch

        with torch.inference_mode():
            x = torch.as_tensor(np.asarray(last), dtype=torch.float32, device=self.device)
            e = self.model.final_layer.gated(x).squeeze(1) * self.potential.data_std
            refs = self.potential.element_refs
            if refs is not None:
                types = torch.as_tensor([self._z_to_type[int(z)] for z in numbers], dtype=torch.long,
                                        device=self.device)
                e = e + refs.property_offset.to(self.device)[types]
        return e.double().cpu().numpy()

    def calculator(self):
        """``diep.pretrained.DIEPCalculator`` on the same potential (energy and forces, no stress)."""
        from diep.pretrained import DIEPCalculator

        return DIEPCalculator(potential=self.potential, stress_unit="eV/A3")


def load(spec, device: str) -> DIEPExtractor:
    """Load the DIEP model directory (``spec.options["path"]``, default: the released model)."""
    from pathlib import Path

    from diep.pretrained import DEFAULT_MODEL_DIR, load_potential

    from mlipspace.errors import ModelUnavailableError

    model_dir = Path(spec.options.get("path", DEFAULT_MODEL_DIR))
    try:
        potential = load_potential(model_dir, device=device, stress=False)
    except FileNotFoundError as exc:
        raise ModelUnavailableError(f"model {spec.name!r}: {exc}") from None
    if potential.model.is_intensive:
        raise ModelUnavailableError(
            f"model {spec.name!r}: intensive DIEP models pool atoms before the readout; only extensive "
            "(per-atom readout) models have a per-atom 'last' layer"
        )
    return DIEPExtractor(spec.name, potential, model_dir, device)
