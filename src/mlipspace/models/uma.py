"""UMA / eSEN adapter (fairchem-core): user checkpoints ``uma:/path/uma-s-1p1.pt?task=omat``.

Released UMA checkpoints (``uma-s-1p1.pt``, ``uma-m-1p1.pt``, ...), eSEN checkpoints and fairchem
fine-tunes are *inference checkpoints*: a pickled ``MLIPInferenceCheckpoint`` holding the model's
hydra config, its weights (plain and EMA) and the task configs (normalisers, element references).
The adapter loads them with fairchem's own ``fairchem.core.units.mlip_unit.load_predict_unit`` (the
path ``FAIRChemCalculator`` uses), in full float32 with the mixture of linear experts (MoLE) left
unmerged and no ``torch.compile`` (fairchem's ``"batch"`` settings without activation
checkpointing), so frames of any composition can share a batch.

Option ``task`` (also accepted as ``head``, the name every checkpoint family shares; ``omat``,
``omol``, ``oc20``, ``odac``, ``omc`` for UMA; whatever datasets the checkpoint's tasks name): it selects the dataset embedding that is mixed into every atom's initial
features and the MoLE expert coefficients, so every layer depends on it -- each task is a separate
model here (display name ``<family>-<stem>@<task>``). It is passed as fairchem does, as
``AtomicData.dataset`` (``AtomicData.from_ase(..., task_name=task)``). A checkpoint with a single
task (eSEN) needs no option; an unknown task raises listing the valid ones. Total charge and spin
come from ``atoms.info["charge"]``/``["spin"]`` with fairchem's defaults (0, and spin 1 for omol, 0
otherwise), as the calculator does.

Layers (``n`` = number of blocks, 4 for UMA-S; width = ``sphere_channels``, 128 for UMA-S):

- ``interaction.{i}``, i = 0..n-1: invariant (l = 0) part of the node embedding after block i
  (forward hook on ``backbone.blocks.{i}``, ``out[:, 0, :]`` of the (N, (lmax+1)^2, C) output).
- ``last``: the input of the energy MLP (forward pre-hook on the head's ``energy_block``), i.e. the
  l = 0 part of the backbone's final ``norm`` output (``emb["node_embedding"][:, 0, :]``). It
  differs from ``interaction.{n-1}``: the final equivariant RMS norm rescales the scalars by the
  norm of all l components.

Energy (how :meth:`UMAExtractor.readout` reproduces ``FAIRChemCalculator``): the head maps each
atom's ``last`` row through ``energy_block`` (MLP, SiLU) and sums; the task's normaliser and element
references then give ``E = rmsd * sum_i MLP(last_i) + mean + sum_i ref[Z_i]``. ``readout`` returns
``rmsd * MLP(last_i) + ref[Z_i]`` per atom and ``energy_offset = mean``. For heads wrapped in
``DatasetSpecificMoEWrapper`` the MLP's linear layers are experts mixed one-hot by task; readout
uses the task's expert.

Elements: Z = 1 .. ``max_num_elements`` - 1 (the rows of the atom embedding; 1..99 for UMA).
Geometry: molecules (pbc False, no cell) and slabs/bulk with a cell go in as they are (the
backbone's internal radius graph honours ``pbc``); a frame periodic along some axes but without a
3-D cell is padded with vacuum (:func:`~mlipspace.models._torch_utils.with_vacuum`).

Not bit-deterministic: float32 scatter sums make repeated runs and batch vs single-frame results
differ by ~1e-6 relative. An isolated single atom runs through the network here, whereas the
calculator answers it from its isolated-atom lookup table.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
from ase import Atoms

from mlipspace.errors import InputError, ModelUnavailableError, StructureError
from mlipspace.models.base import make_fingerprint
from mlipspace.models._torch_utils import CheckpointExtractor, Tap, is_slab, with_vacuum

DISTRIBUTION = "fairchem-core"


def inference_settings():
    """fairchem ``InferenceSettings`` used here: fp32, MoLE unmerged, no compile, no activation checkpointing."""
    from fairchem.core.units.mlip_unit.api.inference import InferenceSettings

    return InferenceSettings(tf32=False, activation_checkpointing=False, merge_mole=False, compile=False,
                             external_graph_gen=False, internal_graph_gen_version=2)


@contextlib.contextmanager
def _quiet():
    """Silence fairchem's logging warnings (deprecated config keys, charge/spin defaults) for a block."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def load_unit(checkpoint: str | Path, device: str = "cpu", settings=None):
    """``load_predict_unit`` on ``checkpoint``; a file fairchem cannot load raises naming it."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ModelUnavailableError(f"UMA checkpoint {str(path)!r} does not exist (or is not a file)")
    import torch
    from fairchem.core.units.mlip_unit import load_predict_unit

    kind = "cuda" if str(device).startswith("cuda") else "cpu"  # fairchem takes "cpu" or "cuda" only
    if kind == "cuda" and ":" in str(device):
        torch.cuda.set_device(torch.device(device))  # fairchem then uses the current CUDA device
    try:
        with _quiet():
            return load_predict_unit(str(path), inference_settings=settings or inference_settings(), device=kind)
    except Exception as exc:  # torch.load / hydra raise many kinds for a foreign file
        msg = (str(exc).strip().splitlines() or [""])[0][:300]
        hint = ""
        if isinstance(exc, AttributeError) and "model_config" in msg:
            hint = " (the file holds no MLIPInferenceCheckpoint: a checkpoint of another family, or a training checkpoint?)"
        raise ModelUnavailableError(
            f"UMA checkpoint {str(path)!r} is not a fairchem inference checkpoint that "
            f"load_predict_unit can load: {type(exc).__name__}: {msg}{hint}"
        ) from exc


class UMAExtractor(CheckpointExtractor):
    """Per-atom features of one task of a fairchem UMA/eSEN checkpoint (see the module docstring)."""

    family = "uma"
    label = "UMA"
    usage = "uma:/path/uma-s-1p1.pt?task=omat"
    OPTIONS = {"head": None}
    HEAD_ALIAS = "task"  # fairchem's word: the dataset/task whose embedding and heads are used

    def __init__(self, name: str, checkpoint: str, *, device: str = "cpu", head: str | None = None):
        import torch

        task = head

        self.name = name
        self.checkpoint = str(checkpoint)
        self.device = device
        unit = load_unit(checkpoint, device)
        valid = sorted(unit.dataset_to_tasks)
        task = self._choose_head(valid, task)
        self.task = task
        energy_tasks = [t for t in unit.dataset_to_tasks[task] if t.property == "energy" and t.level == "system"]
        if len(energy_tasks) != 1:
            raise ModelUnavailableError(
                f"UMA checkpoint {self.checkpoint!r}: task {task!r} has {len(energy_tasks)} energy tasks, expected 1"
            )
        self.energy_task = energy_tasks[0]

        hydra = unit.model.module
        backbone = getattr(hydra, "backbone", None)
        if not all(hasattr(backbone, a) for a in ("blocks", "sphere_channels", "max_num_elements", "cutoff")):
            raise ModelUnavailableError(
                f"UMA checkpoint {self.checkpoint!r}: backbone {type(backbone).__name__} is not supported; this "
                "adapter reads eSCN-MD backbones (UMA's eSCNMDMoeBackbone, eSEN's eSCNMDBackbone)"
            )
        # features only: no forces, stress or hessian (no backward pass; works under inference_mode)
        regress = getattr(hydra.backbone, "regress_config", None)
        if regress is not None:
            regress.forces = regress.stress = regress.hessian = False
        # what MLIPPredictUnit does on its first prediction (no MoLE merge, no compile here)
        with _quiet():
            hydra.prepare_for_inference(self._data([Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])]),
                                        unit.inference_settings)
        unit.model.requires_grad_(False)
        unit.model.to(torch.float32)
        unit.move_to_device()
        hydra.eval()
        self.unit = unit
        self.device = str(unit.device)  # "cpu" or "cuda:<current device>"
        self.model = hydra
        backbone = hydra.backbone  # (prepare_for_inference may swap it when MoLE is merged; not here)

        self.n_blocks = len(backbone.blocks)
        self.cutoff = float(backbone.cutoff)
        self.energy_path, self.head = self._find_energy_block(hydra)
        modules = dict(hydra.named_modules())
        self.energy_block = modules[self.energy_path]
        width = int(backbone.sphere_channels)
        self.layers = tuple(f"interaction.{i}" for i in range(self.n_blocks)) + ("last",)
        self.dims = {layer: width for layer in self.layers}
        self.dims["last"] = int(getattr(self.energy_block[0], "in_features", width))
        self.elements = frozenset(range(1, int(backbone.max_num_elements)))
        norm = self.energy_task.normalizer
        self.energy_offset = float(norm.mean)
        self._rmsd = float(norm.rmsd)
        refs = self.energy_task.element_references
        self._refs = (refs.element_references.detach().double().cpu().numpy()
                      if refs is not None else np.zeros(int(backbone.max_num_elements)))
        self.fingerprint = make_fingerprint(
            name, self.family, self.checkpoint, DISTRIBUTION, head=task,
            backbone=type(backbone).__name__, model_id=getattr(hydra, "model_id", None),
        )

    # ----------------------------------------------------------------------------------------

    def _find_energy_block(self, hydra) -> tuple[str, object]:
        """Dotted path of the energy MLP the task's energy comes from, and its head module."""
        found = [n for n, _ in hydra.named_modules() if n.startswith("output_heads.") and n.endswith(".energy_block")]
        if len(found) > 1:  # several energy heads: keep the one serving this task (prefix or dataset names)
            heads = dict(hydra.output_heads.named_children())
            keep = []
            for n in found:
                head = heads[n.split(".")[1]]
                names = getattr(head, "dataset_names", None)
                inner = getattr(head, "head", head)
                if (names is not None and self.task in names) or getattr(inner, "prefix", None) == self.task:
                    keep.append(n)
            found = keep
        if len(found) != 1:
            raise ModelUnavailableError(
                f"UMA checkpoint {self.checkpoint!r}: expected one energy head (an 'energy_block' under "
                f"output_heads) for task {self.task!r}, found {found or 'none'}"
            )
        head = dict(hydra.named_modules())[found[0].rsplit(".", 1)[0]]
        wrapper = dict(hydra.output_heads.named_children())[found[0].split(".")[1]]
        return found[0], (head, wrapper)

    def _taps(self) -> dict[str, Tap]:
        taps = {f"interaction.{i}": Tap(f"backbone.blocks.{i}", select=lambda out: out[:, 0, :])
                for i in range(self.n_blocks)}
        taps["last"] = Tap(self.energy_path, pre=True)  # inputs = (scalar node embedding,)
        return taps

    def _check_frame(self, atoms: Atoms) -> str | None:
        """A charge/spin fairchem rejects (not an integer, out of range), checked as fairchem does."""
        probe = Atoms()
        probe.info = dict(atoms.info)  # fairchem's check sets defaults in info: work on a copy
        try:
            with _quiet():
                self.model.validate_atoms_data(probe, self.task)
        except (TypeError, ValueError) as exc:
            return f"{self.name} (task {self.task}): {exc}"
        return None

    def _prepared(self, atoms: Atoms, index: int) -> Atoms:
        """A copy of ``atoms`` with charge/spin set and checked as fairchem's calculator does."""
        work = atoms.copy()
        work.calc = None
        if is_slab(work) and abs(work.cell.volume) < 0.1:
            work = with_vacuum(work, self.cutoff)
        try:
            with _quiet():
                self.model.validate_atoms_data(work, self.task)
        except (TypeError, ValueError) as exc:
            raise StructureError(f"{self.name}: {exc}", frame=index) from exc
        return work

    def _data(self, frames: list[Atoms]):
        """Frames as one fairchem ``AtomicData`` batch (the calculator's conversion, one graph each)."""
        import torch
        from fairchem.core.datasets.atomic_data import (
            AtomicData,
            atomicdata_list_to_batch,
        )

        items = []
        for i, atoms in enumerate(frames):
            work = self._prepared(atoms, i) if self.model is not None else atoms
            if "charge" not in work.info or "spin" not in work.info:
                work.info.setdefault("charge", 0)
                work.info.setdefault("spin", 0)
            items.append(AtomicData.from_ase(work, task_name=self.task, r_edges=False, r_data_keys=["spin", "charge"],
                                             max_neigh=None, radius=6.0, target_dtype=torch.float32))
        batch = atomicdata_list_to_batch(items)
        return batch.to(self.device)

    def _forward(self, frames: list[Atoms]) -> None:
        # the HydraModel forward (backbone + heads, energy only), as MLIPPredictUnit.predict runs it
        data = self._data(frames)
        self.model(data)

    # ----------------------------------------------------------------------------------------

    def readout(self, last, numbers) -> np.ndarray:
        """Per-atom energies (eV) from ``last`` rows: ``rmsd * energy_block(last_i) + ref[Z_i]``.

        Their sum over one structure plus :attr:`energy_offset` (the normaliser's mean) is the
        ``FAIRChemCalculator`` energy for this task. For a ``reduce="mean"`` head the MLP part is
        divided by the number of rows (pass one structure's rows).
        """
        import torch

        x = np.asarray(last, dtype=np.float32)
        z = np.asarray(numbers, dtype=np.int64)
        if x.ndim != 2 or x.shape[0] != z.shape[0] or x.shape[1] != self.dims["last"]:
            raise InputError(f"readout needs (n_atoms, {self.dims['last']}) features and n_atoms numbers, got "
                             f"{x.shape} and {z.shape}")
        if len(z) and (z.min() < 0 or z.max() >= len(self._refs)):
            raise InputError(f"readout: atomic numbers outside 0..{len(self._refs) - 1}")
        head, wrapper = self.head
        with torch.inference_mode(), self._expert_for_task(wrapper, x.shape[0]):
            e = self.energy_block(torch.as_tensor(x, device=self.device)).reshape(-1).double().cpu().numpy()
        if getattr(head, "reduce", "sum") == "mean":
            e = e / max(len(e), 1)
        return self._rmsd * e + self._refs[z]

    @contextlib.contextmanager
    def _expert_for_task(self, wrapper, n_rows: int):
        """For a ``DatasetSpecificMoEWrapper`` head: select this task's expert for one block of rows."""
        import torch

        g = getattr(wrapper, "global_mole_tensors", None)
        if g is None or getattr(wrapper, "merged_on_dataset", None) is not None:
            yield
            return
        saved = (g.expert_mixing_coefficients, g.mole_sizes, g.ac_start_idx)
        coeff = torch.zeros(1, len(wrapper.dataset_name_to_exp), device=self.device)  # as the wrapper builds it
        coeff[0, wrapper.dataset_name_to_exp[self.task]] = 1.0
        g.expert_mixing_coefficients, g.mole_sizes, g.ac_start_idx = coeff, torch.tensor([n_rows]), 0
        try:
            yield
        finally:
            g.expert_mixing_coefficients, g.mole_sizes, g.ac_start_idx = saved

    def calculator(self):
        """``FAIRChemCalculator`` for this task on a fresh predict unit of the same file (forces, stress)."""
        from fairchem.core.calculate.ase_calculator import FAIRChemCalculator

        unit = load_unit(self.checkpoint, self.device)
        return FAIRChemCalculator(unit, task_name=self.task)


#: registry entry point: ``spec.options`` = ``checkpoint`` and ``head`` (or ``task``, fairchem's word)
load = UMAExtractor.from_spec
