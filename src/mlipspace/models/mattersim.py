"""MatterSim adapter (mattersim): user checkpoints ``mattersim:/path/mattersim-v1.0.0-5M.pth``.

MatterSim v1 is an M3GNet (``mattersim.forcefield.m3gnet.m3gnet.M3Gnet``). Its checkpoints
(``mattersim-v1.0.0-1M.pth``, ``mattersim-v1.0.0-5M.pth``, fine-tunes) are what ``Potential.save``
writes: a torch dict with ``model_name`` (``"m3gnet"``), ``model`` (the state dict), ``model_args``
(``num_blocks``, ``units``, ``max_l``, ``max_n``, ``cutoff``, ``max_z``, ``threebody_cutoff``) and
training state (optimizer, EMA, scheduler, metrics). The adapter loads the file with the package's
own ``Potential.from_checkpoint(load_path=..., load_training_state=False)``, after checking that it
is such a dict; since ``from_checkpoint`` loads the state dict with ``strict=False``, a file lacking
weights of the architecture it declares is refused here rather than run with random weights.
There are no options (no heads or tasks).

Layers (``n`` = ``num_blocks``, 4 for the released models; width = ``units``, 256 for the 5M
model and 128 for the 1M one):

- ``interaction.{i}``, i = 0..n-1: atom features after the i-th M3GNet main block (forward hook on
  ``graph_conv.{i}``, first output; the second is the bond features).
- ``last``: the input of the energy readout ``final`` (forward pre-hook). MatterSim has nothing
  between the last block and ``final``, so ``last == interaction.{n-1}``.

Energy (how ``readout`` reproduces ``MatterSimCalculator``): ``E = sum_i (s(Z_i) * final(last_i) +
m(Z_i))``, ``final`` the gated MLP (units -> units -> units -> 1) and ``s``, ``m`` the per-element
scale and shift of the model's ``AtomScaling`` normaliser (buffers in the checkpoint, so they carry
the elemental reference energies); ``energy_offset = 0``.

Elements: Z = 1..``max_z`` (94 for the released models): the atom embedding is a one-hot of
``max_z + 1`` classes. The checkpoint does not record which elements the training data held.

Geometry: MatterSim's graph builder (``GraphConvertor``) puts a fully non-periodic structure in a
cubic box of side extent + 5 x cutoff, as its calculator does; molecules go in as they are. For
partly periodic frames (slabs, wires) it would keep the cell along the non-periodic axes and wrap
the atoms into it, so such frames are made fully periodic with vacuum along those axes
(:func:`~mlipspace.models._torch_utils.with_vacuum`, extent + cutoff + 1 Å): no periodic image is
within the cutoff, and the graph is that of the isolated slab.

Speed: ``batch_size`` frames go through one batched graph (mattersim's ``build_dataloader`` and
``batch_to_dict``) and ``Potential.forward`` without forces or stress, under ``torch.inference_mode``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from ase import Atoms

from mlipspace.errors import InputError, ModelUnavailableError
from mlipspace.models.base import make_fingerprint
from mlipspace.models._torch_utils import CheckpointExtractor, Tap, load_weights_only

DISTRIBUTION = "mattersim"
MODEL_NAME = "m3gnet"
_ARGS = ("num_blocks", "units", "cutoff", "max_z", "threebody_cutoff")


def read_checkpoint(path: str | Path) -> dict:
    """The dict in MatterSim checkpoint ``path`` (``model_name``, ``model``, ``model_args``, ...).

    Raises :class:`ModelUnavailableError` naming the file when it is missing, is not a weights-only
    torch file, or is not a MatterSim (``Potential.save``) checkpoint.
    """
    path = Path(path)
    ckpt = load_weights_only(path, "MatterSim", "cannot be read as a weights-only torch file, as "
                             "Potential.from_checkpoint reads it")
    if not isinstance(ckpt, dict) or not {"model_name", "model", "model_args"} <= set(ckpt):
        keys = ", ".join(sorted(map(str, ckpt))[:6]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelUnavailableError(
            f"{str(path)!r} is not a MatterSim checkpoint: expected the dict Potential.save writes "
            f"(model_name, model, model_args, ...), found {keys} -- a checkpoint of another family?"
        )
    if ckpt["model_name"] != MODEL_NAME:
        raise ModelUnavailableError(
            f"MatterSim checkpoint {str(path)!r} holds a {ckpt['model_name']!r} model; mattersim "
            f"loads only {MODEL_NAME!r} (M3GNet) checkpoints"
        )
    missing = [k for k in _ARGS if k not in ckpt["model_args"]]
    if missing:
        raise ModelUnavailableError(
            f"MatterSim checkpoint {str(path)!r}: model_args lacks {', '.join(missing)}"
        )
    return ckpt


def load_potential(checkpoint: str | Path, device: str = "cpu"):
    """``Potential.from_checkpoint`` of ``checkpoint`` on ``device``, eval mode, every weight present.

    ``from_checkpoint`` tolerates a state dict lacking entries (``strict=False``) and would leave
    those weights at random init; such a file raises :class:`ModelUnavailableError` here.
    """
    from mattersim.forcefield.potential import Potential

    path = Path(checkpoint).absolute()  # a bare released name would make mattersim download it
    stored = set(read_checkpoint(path)["model"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            potential = Potential.from_checkpoint(load_path=str(path), device=device, load_training_state=False)
    except RuntimeError as exc:  # a state dict whose shapes do not fit its model_args
        first = str(exc).strip().splitlines()[0][:400]
        raise ModelUnavailableError(f"MatterSim checkpoint {str(path)!r} does not fit its model_args: {first}") from exc
    missing = sorted(set(potential.model.state_dict()) - stored)
    if missing:
        more = f" (and {len(missing) - 4} more)" if len(missing) > 4 else ""
        raise ModelUnavailableError(
            f"MatterSim checkpoint {str(path)!r} lacks weights of its M3GNet: {', '.join(missing[:4])}{more}"
        )
    potential.model.eval()
    return potential.eval()


class MatterSimExtractor(CheckpointExtractor):
    """Per-atom features of a MatterSim checkpoint (see the module docstring for layers and energy)."""

    family = "mattersim"
    label = "MatterSim"
    usage = "mattersim:/path/mattersim-v1.0.0-5M.pth"
    pad_slabs = True
    #: energy added once per structure on top of the per-atom readout (none for MatterSim)
    energy_offset = 0.0

    def __init__(self, name: str, checkpoint: str, *, device: str = "cpu"):
        self.name = name
        self.checkpoint = str(checkpoint)
        self.device = device
        self.potential = load_potential(checkpoint, device)
        self.model = self.potential.model  # the M3Gnet, carrying the hooks
        args = self.model.model_args
        self.cutoff = float(args["cutoff"])
        self.threebody_cutoff = float(args["threebody_cutoff"])
        n = len(self.model.graph_conv)
        width = int(args["units"])
        self.layers = tuple(f"interaction.{i}" for i in range(n)) + ("last",)
        self.dims = {layer: width for layer in self.layers}
        self.elements = frozenset(range(1, int(args["max_z"]) + 1))
        self.fingerprint = make_fingerprint(name, self.family, self.checkpoint, DISTRIBUTION, head=None,
                                            num_blocks=n, units=width, cutoff=self.cutoff)

    def _taps(self) -> dict[str, Tap]:
        taps = {f"interaction.{i}": Tap(f"graph_conv.{i}", select=lambda out: out[0])
                for i in range(len(self.layers) - 1)}
        taps["last"] = Tap("final", pre=True)  # inputs = (atom_attr,)
        return taps

    def _input(self, frames: list[Atoms]) -> dict:
        """mattersim's input dict of one batched graph of ``frames`` (atoms in input order)."""
        from mattersim.datasets.utils.build import build_dataloader
        from mattersim.forcefield.potential import batch_to_dict

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No PBC detected")
            loader = build_dataloader([self._prepare(a) for a in frames], model_type=MODEL_NAME,
                                      cutoff=self.cutoff, threebody_cutoff=self.threebody_cutoff,
                                      batch_size=len(frames), only_inference=True)
        (batch,) = list(loader)
        return batch_to_dict(batch, device=self.device)

    def _forward(self, frames: list[Atoms]) -> None:
        self.potential.forward(self._input(frames), include_forces=False, include_stresses=False)

    def readout(self, last, numbers) -> np.ndarray:
        """Per-atom energies (eV) from ``last`` through MatterSim's readout and normaliser.

        ``e_i = scale(Z_i) * final(last_i) + shift(Z_i)``; summed over a structure's atoms (plus
        ``energy_offset`` = 0) this is ``MatterSimCalculator``'s energy. ``last``: (n_atoms, units);
        ``numbers``: Z of the same rows.
        """
        import torch

        x = np.asarray(last)
        z = np.asarray(numbers)
        if x.ndim != 2 or x.shape[0] != z.shape[0]:
            raise InputError(f"readout needs (n_atoms, d) features and n_atoms numbers, got {x.shape} and {z.shape}")
        with torch.inference_mode():
            xt = torch.as_tensor(x, dtype=torch.float32, device=self.device)
            zt = torch.as_tensor(z, dtype=torch.long, device=self.device)
            e = self.model.normalizer(self.model.final(xt).view(-1), zt)
        return e.double().cpu().numpy()

    def calculator(self):
        """``MatterSimCalculator`` on the same ``Potential`` and device (energy, forces, stress)."""
        from mattersim.forcefield.potential import MatterSimCalculator

        return MatterSimCalculator(potential=self.potential, device=self.device)


#: registry entry point: ``spec.options`` = ``checkpoint`` (MatterSim takes no other option)
load = MatterSimExtractor.from_spec
