"""SevenNet adapter (sevenn): SevenNet-0 (11Jul2024, 22May2024), SevenNet-l3i5, SevenNet-MF-0 heads.

Layers, in forward order (``n`` = number of interaction blocks, 5 for all bundled checkpoints):

- ``interaction.{i}``, i = 0..n-1 (backbone): output of module ``{i}_equivariant_gate``, keeping
  only its ``l = 0`` channels, located from ``gate.irreps_out`` (128 channels for the bundled
  checkpoints).
- ``last``: the input of ``reduce_input_to_hidden`` (forward pre-hook), i.e. the per-atom invariant
  vector that the energy readout ``reduce_input_to_hidden -> reduce_hidden_to_energy ->
  rescale_atomic_energy`` maps to the atomic energy. For SevenNet-MF-0 the readout appends the
  modality one-hot inside its forward; ``last`` is the node feature before that (128 columns).

SevenNet-MF-0 is one checkpoint with two heads selected by ``data["data_modality"]`` ('PBE' or
'R2SCAN', case-sensitive); the modality enters every layer, so each head is a separate model here
(``sevennet-mf-0-pbe``, ``sevennet-mf-0-r2scan``).

Features only: the ``force_output`` module is deleted and the model runs under inference mode,
so no backward pass is taken; frames are batched as a torch_geometric ``Batch``
(``set_is_batch_data(True)``), which gives features bit-identical to one frame per forward on CPU.
"""

from __future__ import annotations

import warnings

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

N_BLOCKS = 5
WIDTH = 128
#: Z of the type map of all four bundled checkpoints (MPtrj elements): H..Bi and Ac..Pu
ELEMENTS = frozenset(list(range(1, 84)) + list(range(89, 95)))
#: sevenn pretrained keys of the registry entries (shipped in the sevenn 0.13.0 wheel)
BUNDLED = ("7net-0", "7net-0_22May2024", "7net-l3i5", "7net-mf-0")


def describe(spec) -> dict:
    """Static metadata of a bundled SevenNet entry (no torch import, no weights): layers, dims, elements."""
    layers = tuple(f"interaction.{i}" for i in range(N_BLOCKS)) + ("last",)
    return {"layers": layers, "dims": {layer: WIDTH for layer in layers}, "elements": ELEMENTS, "cutoff": 5.0}


class SevenNetExtractor(SequentialGraphExtractor):
    """Features of a SevenNet checkpoint (one head of a multi-fidelity one)."""

    family = "sevennet"

    def __init__(self, name: str, checkpoint: str, device: str = "cpu", modality: str | None = None):
        import sevenn._keys as KEY
        import sevenn.util

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no TP accelerator" and similar notices
            try:
                cp = sevenn.util.load_checkpoint(checkpoint)
            except (ValueError, FileNotFoundError) as exc:
                raise ModelUnavailableError(f"model {name!r}: sevenn cannot load checkpoint {checkpoint!r}: {exc}") from exc
            model = cp.build_model()
        self._key = KEY
        self.name = name
        self.checkpoint = checkpoint
        self.checkpoint_path = str(cp.checkpoint_path)
        self.device = device
        self.config = cp.config
        self.cutoff = float(cp.config[KEY.CUTOFF])
        self.modality = modality

        modal_map = model.modal_map or {}
        if modal_map and modality not in modal_map:
            raise ModelUnavailableError(
                f"model {name!r}: checkpoint {checkpoint} needs a modality (head), one of "
                f"{sorted(modal_map)} (case-sensitive), got {modality!r}"
            )
        if not modal_map and modality is not None:
            raise ModelUnavailableError(f"model {name!r}: checkpoint {checkpoint} has no heads, got modality={modality!r}")

        model.delete_module_by_key("force_output")  # no forces: no backward pass
        model.key_grad = None  # do not set requires_grad on edge vectors
        model.set_is_batch_data(True)
        model.eval()
        model.to(device)
        self.model = model

        n = count_gates(model)
        self.hooks = gate_hooks(model, n)
        readout = model._modules[LAST_MODULE]
        self.hooks["last"] = LayerHook("last", LAST_MODULE, "pre", readout.key_input, None, readout_input_width(readout))
        self.layers = tuple(f"interaction.{i}" for i in range(n)) + ("last",)
        self.dims = {k: self.hooks[k].dim for k in self.layers}
        self.elements = frozenset(int(z) for z in cp.config[KEY.TYPE_MAP])
        if checkpoint in BUNDLED:  # a user's own sevenn checkpoint may have other widths/elements
            self.check_static(describe(None))
        self.fingerprint = make_fingerprint(name, self.family, self.checkpoint_path, "sevenn", head=modality,
                                            pretrained_name=checkpoint)

    def _graph(self, atoms: Atoms):
        import sevenn._keys as KEY
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        data = AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(atoms, self.cutoff))
        if self.modality is not None:
            data[KEY.DATA_MODALITY] = self.modality
        return data

    def calculator(self):
        """sevenn's own ASE calculator for this checkpoint and head (energies, forces, stress)."""
        from sevenn.calculator import SevenNetCalculator

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SevenNetCalculator(self.checkpoint, device=self.device, modal=self.modality)


def load(spec, device: str) -> SevenNetExtractor:
    """Registry entry point: build the extractor of ``spec`` (options ``checkpoint``, ``modality``)."""
    from mlipspace._device import resolve_device

    return SevenNetExtractor(
        spec.name, spec.options["checkpoint"], resolve_device(device), spec.options.get("modality")
    )
