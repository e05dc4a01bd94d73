"""MACE adapter (mace-torch): user checkpoints ``mace:/path/model.model[?head=...&dtype=...]``.

The checkpoint is a whole pickled MACE module, the ``.model`` file ``mace_run_train`` writes and the
MACE-MP / MACE-OMAT / MACE-OFF releases ship (``mace-mp-0b3-medium.model``); it is loaded the way
``mace.calculators.MACECalculator`` loads it (``torch.load`` of the whole module, no state dict or
config needed). Both ``MACE`` and ``ScaleShiftMACE`` are accepted, with one or several heads.

Layers (``n`` = number of interactions, 2 for MACE-MP-0b3):

- ``interaction.{i}``, i = 0..n-1 (backbone): output of ``products.{i}`` (the node features after
  the i-th interaction and its symmetric-contraction product), keeping only the invariant ``0e``
  channels, located from ``products.{i}.linear.irreps_out`` (128 for the MACE-MP medium models).
- ``last``: the last-layer features in the LLPR sense used by the study: for each readout, in order,
  the features the energy is *linear* in -- for a linear readout (``readouts.{i}``, i < n-1) its
  input's ``0e`` channels (equal to ``interaction.{i}``), for the non-linear readout (the last one)
  its hidden activation, the input of ``linear_2`` -- concatenated. Width ``(n-1)*C + M``
  (MACE-MP-0b3 medium: 128 + 16 = 144). With several heads the hidden layer holds one block of
  ``M`` channels per head, masked to the atom's head; ``last`` keeps the selected head's block.

Energy: ``E = sum_i [E0(Z_i) + s*(sum_r readout_r(i) + zbl_i) + t]`` for ``ScaleShiftMACE`` (scale
``s``, shift ``t`` of the head), ``sum_i [E0(Z_i) + zbl_i + sum_r readout_r(i)]`` for ``MACE``.
:meth:`MACEExtractor.readout` evaluates the bracket from ``last`` (without ``zbl_i``), so with
``energy_offset = 0`` it reproduces ``MACECalculator``'s energy exactly for models without pair
repulsion. Models with the ZBL pair repulsion (``pair_repulsion=True``, e.g. MACE-MP-0b3) add a term
computed from interatomic distances that never passes through the readout: there
``readout(last).sum() + pair_energy(frame) == E`` (see :meth:`MACEExtractor.pair_energy`).

Options: ``head`` (multi-head models: one of ``model.heads``; default as ``MACECalculator``: the only
head, else the one called "default"), ``dtype`` (``float32``/``float64``; default the checkpoint's
own, as ``MACECalculator``). Features are returned as float32.

Geometry: mace's own graph code (``config_from_atoms`` / ``AtomicData.from_config``) handles
molecules (pbc False, no cell) and slabs by extending non-periodic axes, as the calculator does.

Environment: mace-torch 0.3.16 pins e3nn 0.4.4, which ``torch.load``s its constants; torch >= 2.6
refuses the ``slice`` in them unless ``torch.serialization.add_safe_globals([slice])``, done here
before mace is imported. The whole-model file needs ``weights_only=False`` (it unpickles code
objects: only load checkpoints you trust).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms

from mlipspace.errors import ModelUnavailableError
from mlipspace.models.base import make_fingerprint
from mlipspace.models._torch_utils import CheckpointExtractor, Tap, capture, readout_input

DISTRIBUTION = "mace-torch"
DTYPES = ("float32", "float64")


def _torch():
    """torch, with the e3nn 0.4.4 fix applied before mace/e3nn get imported."""
    import torch

    torch.serialization.add_safe_globals([slice])
    return torch


def _quiet_import_mace():
    """Import mace's modules, calculator and data code without its TorchScript/logging noise."""
    import contextlib
    import sys

    _torch()
    # mace prints a cuequivariance notice on stdout at import: keep stdout for the caller
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        import mace.data
        import mace.modules
        import mace.tools.torch_geometric
    return mace


def load_model(checkpoint: str | os.PathLike, device: str = "cpu"):
    """The MACE module stored in ``checkpoint`` (a whole-model ``.model`` file), on ``device``.

    Raises :class:`ModelUnavailableError` naming the file when it is missing, is not a torch file,
    holds a state dict / training checkpoint (no architecture), a TorchScript export, or a module
    that is not an energy MACE (another family's checkpoint, a dipole model, ...).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise ModelUnavailableError(f"MACE checkpoint {str(path)!r} does not exist (or is not a file)")
    torch = _torch()
    mace = _quiet_import_mace()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=device, weights_only=False)
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("cuequivariance"):
            raise ModelUnavailableError(
                f"MACE checkpoint {str(path)!r} was saved with cuequivariance kernels ({exc.name} is not "
                "installed); convert it back with mace's `mace_convert_cueq_e3nn` and give that file"
            ) from exc
        raise ModelUnavailableError(
            f"MACE checkpoint {str(path)!r} cannot be unpickled here: it needs module {exc.name!r} "
            "(a checkpoint of another package? a MACE .model needs only mace-torch)"
        ) from exc
    except Exception as exc:  # torch raises many types for a bad file
        raise ModelUnavailableError(
            f"MACE checkpoint {str(path)!r} is not a readable torch file: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(obj, torch.jit.ScriptModule):
        raise ModelUnavailableError(
            f"MACE checkpoint {str(path)!r} is a TorchScript export (e.g. *-compiled.model or a LAMMPS "
            "file): its layers cannot be hooked; give the original .model file instead"
        )
    if isinstance(obj, dict):
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise ModelUnavailableError(
            f"MACE checkpoint {str(path)!r} holds a dict (keys: {keys}), i.e. a state dict or training "
            "checkpoint without the architecture; give the whole-model .model file that "
            "mace_run_train writes (or torch.save(model, path))"
        )
    if not isinstance(obj, mace.modules.MACE):
        raise ModelUnavailableError(
            f"MACE checkpoint {str(path)!r} holds a {type(obj).__module__}.{type(obj).__name__}, not an "
            "energy model of class mace.modules.MACE / ScaleShiftMACE"
        )
    return obj


def _scalar_columns(irreps) -> list[int]:
    """Column indices of the invariant ``0e`` channels of an e3nn ``Irreps``, in order."""
    cols: list[int] = []
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        if ir.l == 0 and ir.p == 1 and mul > 0:
            cols.extend(range(sl.start, sl.stop))
    return cols


def _columns(x, cols: list[int]):
    """``x[:, cols]`` (a copy), the index on ``x``'s device."""
    import torch

    return x[:, torch.as_tensor(cols, device=x.device)]


def _irreps_in(readout):
    """Input irreps of a MACE readout block (its first linear layer)."""
    first = readout.linear if hasattr(readout, "linear") else readout.linear_1
    return first.irreps_in


class MACEExtractor(CheckpointExtractor):
    """Features of a MACE checkpoint (one head of a multi-head one); see the module docstring."""

    family = "mace"
    label = "MACE"
    usage = "mace:/path/model.model"
    OPTIONS = {"head": None, "dtype": None}

    def __init__(self, name: str, checkpoint: str, *, device: str = "cpu", head: str | None = None,
                 dtype: str | None = None):
        if dtype is not None and dtype not in DTYPES:
            raise ModelUnavailableError(
                f"MACE checkpoint {str(checkpoint)!r}: dtype must be one of {', '.join(DTYPES)}, not {dtype!r}"
            )
        torch = _torch()
        self.name = name
        self.checkpoint = str(checkpoint)
        self.device = device
        model = load_model(checkpoint, device)

        heads = list(getattr(model, "heads", None) or ["Default"])
        self.heads = heads
        default = next((h for h in heads if h.lower() == "default"), None)  # MACE's own default head
        head = self._choose_head(heads, head, default=default)
        self.head = head
        self.head_index = heads.index(head)

        own = {torch.float64: "float64", torch.float32: "float32"}.get(next(model.parameters()).dtype)
        if dtype is None:
            if own is None:
                raise ModelUnavailableError(f"MACE checkpoint {self.checkpoint!r} has parameters of dtype "
                                            f"{next(model.parameters()).dtype}; choose ?dtype=float32|float64")
            dtype = own
        model = model.double() if dtype == "float64" else model.float()
        self.dtype = dtype
        self.torch_dtype = torch.float64 if dtype == "float64" else torch.float32
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()
        self.model = model

        self.cutoff = float(model.r_max)
        self.elements = frozenset(int(z) for z in model.atomic_numbers.tolist())
        self.pair_repulsion = bool(getattr(model, "pair_repulsion", False))
        self.scale_shift = getattr(model, "scale_shift", None)

        n = len(model.interactions)
        self._product_cols = [_scalar_columns(model.products[i].linear.irreps_out) for i in range(n)]
        # the readouts: ("linear", 0e columns of its input) or ("mlp", this head's hidden columns)
        self._readouts: list[tuple[str, list[int]]] = []
        for i, ro in enumerate(model.readouts):
            if hasattr(ro, "linear_2"):
                width = int(ro.linear_2.irreps_in.dim)
                n_heads = int(getattr(ro, "num_heads", 1) or 1)
                if width % n_heads:
                    raise ModelUnavailableError(f"{self.checkpoint}: readout {i} hidden width {width} not divisible "
                                                f"by its {n_heads} heads")
                m = width // n_heads
                k = self.head_index if n_heads > 1 else 0
                self._readouts.append(("mlp", list(range(k * m, (k + 1) * m))))
            elif hasattr(ro, "linear"):
                self._readouts.append(("linear", _scalar_columns(_irreps_in(ro))))
            else:
                raise ModelUnavailableError(
                    f"{self.checkpoint}: readout {i} is a {type(ro).__name__}, neither a linear nor a "
                    "non-linear MACE readout"
                )
        self.layers = tuple(f"interaction.{i}" for i in range(n)) + ("last",)
        self.dims = {f"interaction.{i}": len(self._product_cols[i]) for i in range(n)}
        self.dims["last"] = sum(len(cols) for _, cols in self._readouts)
        self.fingerprint = make_fingerprint(
            name, self.family, self.checkpoint, DISTRIBUTION, head=head if len(heads) > 1 else None,
            dtype=dtype, model_class=type(model).__name__,
        )
        self._ro_store: dict[str, list] | None = None

    # ---------------------------------------------------------------------------------------------
    # forward pass and taps

    def _taps(self) -> dict[str, Tap]:
        from functools import partial

        taps = {f"interaction.{i}": Tap(f"products.{i}", select=partial(_columns, cols=cols))
                for i, cols in enumerate(self._product_cols)}
        # "last" is pieced together from the readouts' inputs captured during the same forward pass
        # (see _forward); the root module's forward hook fires once those are all recorded
        taps["last"] = Tap("", select=lambda _out: self._last_of_forward())
        return taps

    def _readout_taps(self) -> dict[str, Tap]:
        taps = {}
        for i, (kind, _cols) in enumerate(self._readouts):
            module = f"readouts.{i}.linear_2" if kind == "mlp" else f"readouts.{i}"
            taps[f"readout.{i}"] = Tap(module, pre=True)
        return taps

    def _last_of_forward(self):
        import torch

        store = self._ro_store
        parts = []
        for i, (_kind, cols) in enumerate(self._readouts):
            parts.append(_columns(store[f"readout.{i}"][-1], cols))
        return torch.cat(parts, dim=1)

    def _batch(self, frames: list[Atoms]):
        """mace's own batch of ``frames`` (as ``MACECalculator._atoms_to_batch``), nodes in input order."""
        from mace import data as mace_data
        from mace.tools import torch_geometric, torch_tools, utils

        keyspec = mace_data.KeySpecification(
            info_keys={"total_spin": "spin", "total_charge": "charge", "external_field": "external_field"},
            arrays_keys={"charges": "Qs"},
        )
        z_table = utils.AtomicNumberTable([int(z) for z in self.model.atomic_numbers])
        graphs = []
        with torch_tools.default_dtype(self.torch_dtype):
            for atoms in frames:
                config = mace_data.config_from_atoms(atoms, key_specification=keyspec, head_name=self.head)
                graphs.append(mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=self.cutoff,
                                                               heads=self.heads))
        return torch_geometric.Batch.from_data_list(graphs).to(self.device)

    def _run(self, frames: list[Atoms]):
        """The model's output dict for ``frames`` (energy only: no forces, stress or backward)."""
        batch = self._batch(frames)
        return self.model(batch.to_dict(), compute_force=False, training=False)

    def _forward(self, frames: list[Atoms]):
        with capture(self.model, self._readout_taps()) as store:
            self._ro_store = store
            try:
                return self._run(frames)
            finally:
                self._ro_store = None

    # ---------------------------------------------------------------------------------------------
    # energy from "last"

    #: energy added once per structure on top of the per-atom readout (E0 and shift are per atom)
    energy_offset = 0.0

    def readout(self, last: np.ndarray, numbers) -> np.ndarray:
        """Per-atom energies (eV) from ``last`` through the model's own readouts, E0s and scale/shift.

        ``E0(Z_i) + s*sum_r readout_r(last_i) + t`` (``ScaleShiftMACE``; plain ``MACE``: ``s=1,
        t=0``), for the selected head. Each block of ``last`` is put back where the readout reads
        it (a linear readout's ``0e`` input channels, zeros elsewhere -- a ``0e`` output sees no
        other channel; the non-linear readout's hidden channels of this head, zeros for the other
        heads, as the model's own head mask does) and the readout's linear layer applied. Summed
        over a structure it is ``MACECalculator``'s energy, minus the ZBL term for
        ``pair_repulsion`` models (:meth:`pair_energy`).
        """
        torch = _torch()
        last, numbers = readout_input(self, last, numbers)
        if len(numbers) == 0:
            return np.zeros(0)
        h = self.head_index
        with torch.inference_mode():
            x = torch.as_tensor(last, dtype=self.torch_dtype, device=self.device)
            n = x.shape[0]
            heads = torch.full((n,), h, dtype=torch.long, device=self.device)
            total = torch.zeros(n, dtype=self.torch_dtype, device=self.device)
            start = 0
            for ro, (kind, cols) in zip(self.model.readouts, self._readouts):
                block = x[:, start:start + len(cols)]
                start += len(cols)
                if kind == "mlp":
                    hidden = torch.zeros(n, int(ro.linear_2.irreps_in.dim), dtype=x.dtype, device=x.device)
                    hidden[:, cols] = block
                    out = ro.linear_2(hidden)
                else:
                    full = torch.zeros(n, int(_irreps_in(ro).dim), dtype=x.dtype, device=x.device)
                    full[:, cols] = block
                    out = ro(full, heads)
                total = total + out[:, h]
            if self.scale_shift is not None:
                total = self.scale_shift(total, heads)
            index = {z: k for k, z in enumerate(int(v) for v in self.model.atomic_numbers.tolist())}
            one_hot = torch.zeros(n, len(index), dtype=x.dtype, device=x.device)
            rows = torch.arange(n, device=x.device)
            one_hot[rows, torch.as_tensor([index[int(z)] for z in numbers], device=x.device)] = 1.0
            e0 = self.model.atomic_energies_fn(one_hot)[:, h]
            return (e0 + total).double().cpu().numpy()

    def pair_energy(self, frames) -> np.ndarray:
        """Per-frame energy (eV) of the ZBL pair repulsion as it enters ``E`` (times the head's scale).

        Zero for models without ``pair_repulsion``. This geometry-only term is the part of a
        ZBL model's energy that ``last`` cannot carry: ``readout(last).sum() + pair_energy == E``.
        """
        torch = _torch()
        from mlipspace.models._torch_utils import check_frames

        frames = check_frames(frames)
        if not self.pair_repulsion:
            return np.zeros(len(frames))
        out = np.zeros(len(frames))
        tap = {"zbl": Tap("pair_repulsion_fn")}
        for k, atoms in enumerate(frames):
            with capture(self.model, tap) as store, torch.inference_mode():
                self._run([atoms])
            e = store["zbl"][-1].double().reshape(-1)
            if self.scale_shift is not None:
                e = e * torch.atleast_1d(self.scale_shift.scale)[self.head_index].double().cpu()
            out[k] = float(e.sum())
        return out

    def calculator(self):
        """``mace.calculators.MACECalculator`` on a fresh load of the same file, head and dtype."""
        import logging

        from mace.calculators import MACECalculator

        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # "Using head ..." notices
        try:
            return MACECalculator(models=[load_model(self.checkpoint, self.device)], device=self.device,
                                  default_dtype=self.dtype, head=self.head)
        finally:
            logging.getLogger().setLevel(level)


#: registry entry point: ``spec.options`` = ``checkpoint`` and optional ``head``, ``dtype``
load = MACEExtractor.from_spec
