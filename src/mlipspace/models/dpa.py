"""DPA-3 adapter (deepmd-kit, PyTorch backend) for user checkpoints: ``dpa:/path/DPA-3.1-3M.pt?head=Omat24``.

The file is a deepmd-kit PyTorch *training checkpoint* (``.pt``, what ``dp --pt train`` writes and
what DPA-3.1-3M is released as): ``{"model": state_dict}`` whose ``_extra_state["model_params"]``
holds the model's configuration. A multi-task checkpoint (``model_params["model_dict"]``) holds
several heads (e.g. ``Omat24``, ``MPtrj``, ...) sharing one descriptor; option ``head`` picks one
(required; deepmd's aliases and a case-insensitive match are accepted, as ``dp test --head`` does).
Frozen ``.pth`` TorchScript files are refused: hooks cannot reach inside a scripted module.

Layers, in forward order (``n`` = number of repflow layers):

- ``interaction.{i}``, i = 0..n-1: node embedding (N, n_dim) output by repflow layer ``i``
  (``descriptor.repflows.layers[i]``). deepmd calls ``layer.forward(...)`` directly, so module
  hooks never fire there; each layer's ``forward`` is wrapped to pass its node output through a
  parameter-free probe module (:class:`_Probe`) that the hooks can see.
- ``descriptor``: the DPA-3 descriptor output (N, dim_out), i.e. the fitting net's input.
- ``last``: the input of the last layer of the energy fitting net
  (``fitting_net.filter_layers.networks[0].layers[-1]``, a forward pre-hook): the last hidden
  activation of the energy readout. Per atom ``E_i = W·last_i + b + bias_atom_e[t_i] +
  out_bias[t_i]`` (:meth:`DPAExtractor.readout`), which sums to deepmd's own energy; it equals
  deepmd's ``DeepPot.eval_fitting_last_layer``.

Atom types are the index of each atom's symbol in the checkpoint's ``type_map``
(``type_map.index(symbol)``), as deepmd's own ASE calculator does. The study's script instead used
each structure's own sorted symbols, so the model saw other elements than the structure holds.
Elements outside ``type_map`` raise :class:`~mlipspace.errors.UnsupportedElementsError`.

Periodicity: fully periodic frames use their cell; frames without any periodic axis run without a
cell (deepmd's open-boundary mode); partly periodic frames (slabs, wires) get vacuum along their
open axes (:func:`~mlipspace.models._torch_utils.with_vacuum`) so no periodic image is within the
cutoff. (deepmd's ASE calculator instead treats any cell of a partly periodic frame as fully
periodic; the two agree when the frame already has more vacuum than the cutoff.)

deepmd-kit 3.2.0's wheel ships a compiled op library built for torch 2.11.0; on torch 2.13
``import deepmd.pt`` fails (and the wheel also wants ``mpich``). The custom ops serve only model
compression, LAMMPS and multi-GPU inference, not the energy forward used here, so
:func:`import_deepmd_pt` imports deepmd the way deepmd-kit runs when built without its op library.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from mlipspace.errors import InputError, ModelUnavailableError
from mlipspace.models.base import make_fingerprint
from mlipspace.models._torch_utils import CheckpointExtractor, Tap

FAMILY = "dpa"
DISTRIBUTION = "deepmd-kit"
#: how to treat deepmd-kit's compiled op library: "auto" (load it only when built for this torch
#: and its MPI library is present), "skip" (never), "load" (always; deepmd raises on a mismatch)
#: values of the ``ops`` option (deepmd's compiled op library): see :func:`import_deepmd_pt`
OPS_MODES = ("auto", "skip", "load")
_PROBE = "mlipspace_probe"


def _ops_loadable() -> bool:
    """Whether deepmd's ``libdeepmd_op_pt`` can load here: built for this torch, MPI present."""
    import importlib.metadata

    import torch
    from deepmd.env import GLOBAL_CONFIG
    from packaging.version import Version

    if GLOBAL_CONFIG.get("pt_version") != Version(torch.__version__).public:
        return False
    if GLOBAL_CONFIG.get("cibuildwheel", "0") == "1":  # wheels load libmpi from the mpich package
        try:
            importlib.metadata.files("mpich")
        except importlib.metadata.PackageNotFoundError:
            return False
    return True


def import_deepmd_pt(ops: str = "auto") -> bool:
    """Import ``deepmd.pt``; returns whether deepmd's compiled op library is in use.

    ``deepmd/pt/cxx_op.py`` loads ``libdeepmd_op_pt.so`` at import and raises when it was built
    for another torch (3.2.0 wheels: torch 2.11.0). When the library is absent, deepmd-kit runs
    with ``ENABLE_CUSTOMIZED_OP = False`` and pure-PyTorch code everywhere except compression /
    LAMMPS / multi-GPU ops. With ``ops="skip"`` (spec option ``?ops=skip``), or ``"auto"``
    (default) when the library does not fit this torch / lacks MPI, this registers a ``deepmd.pt.cxx_op`` module equal to that library-absent one
    before the import, so the same pure-PyTorch path runs; deepmd's own files are not changed.
    """
    import types

    if "deepmd.pt" in sys.modules:
        return bool(getattr(sys.modules.get("deepmd.pt.cxx_op"), "ENABLE_CUSTOMIZED_OP", False))
    mode = str(ops).strip().lower() or "auto"
    if mode not in OPS_MODES:
        raise InputError(f"dpa option ops must be one of {', '.join(OPS_MODES)}, not {ops!r}")
    use_ops = mode == "load" or (mode == "auto" and _ops_loadable())
    if not use_ops:
        stub = types.ModuleType("deepmd.pt.cxx_op")
        stub.__doc__ = "mlipspace: deepmd-kit without its compiled op library (built for another torch)."
        stub.ENABLE_CUSTOMIZED_OP = False
        stub.__all__ = ["ENABLE_CUSTOMIZED_OP"]
        sys.modules["deepmd.pt.cxx_op"] = stub
    import deepmd.pt  # noqa: F401

    return use_ops


def _read_checkpoint(path: Path) -> tuple[dict, dict]:
    """``(state_dict, model_params)`` of a deepmd-kit PyTorch training checkpoint, else a clear error."""
    import pickle

    import torch

    if path.suffix == ".pth":
        raise ModelUnavailableError(
            f"dpa checkpoint {path}: a frozen TorchScript model (.pth) cannot be read layer by layer; "
            "give the training checkpoint (.pt) it was frozen from (DPA-3.1-3M is released as .pt)")
    if not path.is_file():
        raise ModelUnavailableError(f"dpa checkpoint {path} is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailableError(
            f"dpa checkpoint {path}: not a deepmd-kit PyTorch checkpoint that torch can read ({first})") from None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    extra = state.get("_extra_state") if isinstance(state, dict) else None
    params = extra.get("model_params") if isinstance(extra, dict) else None
    if not isinstance(params, dict) or not params:
        keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise ModelUnavailableError(
            f"dpa checkpoint {path}: not a deepmd-kit training checkpoint (expected a dict with 'model' "
            f"holding '_extra_state' -> 'model_params'; found {keys})")
    return state, params


def _select_head(path: Path, params: dict, head: str | None) -> tuple[str, dict]:
    """``(branch key in the state dict, that branch's model params)`` for the requested head."""
    if "model_dict" not in params:
        if head is not None:
            raise ModelUnavailableError(
                f"dpa checkpoint {path} is a single-task model and has no heads; drop '?head={head}'")
        return "Default", params
    branches = params["model_dict"]
    aliases = {key: key for key in branches}
    for key, p in branches.items():
        for alias in p.get("model_branch_alias", []) or []:
            aliases.setdefault(alias, key)
    listing = ", ".join(sorted(branches)) + (
        f" (aliases: {', '.join(sorted(a for a in aliases if a not in branches))})" if len(aliases) > len(branches)
        else "")
    if head is None:
        raise ModelUnavailableError(f"dpa checkpoint {path} is multi-task: choose a head with '?head=NAME', "
                                    f"one of {listing}")
    key = aliases.get(head) or next((v for a, v in aliases.items() if a.lower() == head.lower()), None)
    if key is None:
        raise ModelUnavailableError(f"dpa checkpoint {path} has no head {head!r}; heads: {listing}")
    return key, branches[key]


def _flat(x):
    """(nf, nloc, d) -> (nf * nloc, d)."""
    return x.reshape(-1, x.shape[-1])


def _check_model_params(path: Path, mparams: dict) -> None:
    """Refuse (naming the file) a model this adapter does not read: not DPA-3, not energy, ZBL/spin."""
    desc = mparams.get("descriptor", {})
    if not isinstance(desc, dict) or desc.get("type") != "dpa3":
        kind = desc.get("type") if isinstance(desc, dict) else desc
        raise ModelUnavailableError(f"dpa checkpoint {path}: descriptor type {kind!r}; this adapter reads "
                                    "DPA-3 models (descriptor type 'dpa3')")
    if mparams.get("type", "standard") not in ("standard", "ener") or mparams.get("fitting_net", {}).get(
            "type", "ener") != "ener":
        raise ModelUnavailableError(f"dpa checkpoint {path}: not an energy model (model type "
                                    f"{mparams.get('type')!r}, fitting {mparams.get('fitting_net', {}).get('type')!r})")
    extra = [k for k in ("use_srtab", "spin") if mparams.get(k)]
    if extra:
        raise ModelUnavailableError(f"dpa checkpoint {path}: a model with {' and '.join(extra)} (ZBL pair "
                                    "table / spin) is not supported; plain DPA-3 energy models only")


def _build_model(path: Path, mparams: dict, state: dict, branch: str, device: str):
    """deepmd's model of ``mparams`` with the weights of ``branch`` loaded, in eval mode on ``device``."""
    from deepmd.pt.model.model import get_model

    try:
        model = get_model(mparams)
    except Exception as exc:  # deepmd raises many kinds on a config it cannot build
        raise ModelUnavailableError(f"dpa checkpoint {path}: deepmd-kit cannot build its model "
                                    f"({type(exc).__name__}: {exc})") from exc
    prefix = f"model.{branch}."
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ModelUnavailableError(f"dpa checkpoint {path}: no weights under {prefix!r}")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    params_missing = [k for k in missing if k in dict(model.named_parameters())]
    if params_missing or unexpected:
        raise ModelUnavailableError(
            f"dpa checkpoint {path}: weights do not match the model it describes (missing parameters "
            f"{params_missing[:5]}, unexpected {unexpected[:5]})")
    if missing:
        warnings.warn(f"dpa checkpoint {path}: buffers {missing[:5]} absent, left at their defaults",
                      stacklevel=3)
    model.eval()
    model.to(device)
    return model


def _check_fitting(path: Path, am) -> None:
    """Refuse a fitting net that needs what mlipspace cannot supply (per-type nets, fparam, aparam, charge)."""
    fit = am.fitting_net
    if not getattr(fit, "mixed_types", False):
        raise ModelUnavailableError(f"dpa checkpoint {path}: the fitting net has one network per type; "
                                    "only mixed-type fitting (DPA-3) is supported")
    if fit.numb_fparam > 0 and getattr(fit, "default_fparam_tensor", None) is None:
        raise ModelUnavailableError(f"dpa checkpoint {path}: the model needs {fit.numb_fparam} frame "
                                    "parameter(s) (fparam) per structure, which mlipspace cannot supply")
    if fit.numb_aparam > 0 and not getattr(fit, "use_aparam_as_mask", False):
        raise ModelUnavailableError(f"dpa checkpoint {path}: the model needs atomic parameters (aparam)")
    if am.add_chg_spin_ebd and am.descriptor.get_default_chg_spin() is None:
        raise ModelUnavailableError(f"dpa checkpoint {path}: the model needs a charge/spin per structure "
                                    "and has no default")


class DPAExtractor(CheckpointExtractor):
    """Per-atom features of a DPA-3 energy model (one head) from a deepmd-kit ``.pt`` checkpoint."""

    family = FAMILY
    label = "dpa"
    usage = "dpa:/path/file.pt[?head=NAME]"
    OPTIONS = {"head": None, "ops": "auto"}
    pad_slabs = True
    _calculator = None

    def __init__(self, name: str, checkpoint: str, *, device: str = "cpu", head: str | None = None,
                 ops: str = "auto"):
        import torch

        self.name = name
        self.device = device
        path = Path(checkpoint)
        self.checkpoint = str(path)
        state, params = _read_checkpoint(path)  # checks first: torch only, no deepmd import
        branch, mparams = _select_head(path, params, head)
        self.head = branch if "model_dict" in params else None
        _check_model_params(path, mparams)
        if device == "cpu":
            os.environ.setdefault("DEVICE", "cpu")  # deepmd's own setting: it builds neighbour lists on env.DEVICE
        self.custom_ops = import_deepmd_pt(ops)
        self.model = _build_model(path, mparams, state, branch, device)
        am = self.model.atomic_model
        _check_fitting(path, am)
        self._read_type_map()
        self._set_taps(am)
        self.precision = str(am.fitting_net.precision)
        self.fingerprint = make_fingerprint(
            name, FAMILY, path, DISTRIBUTION, head=self.head, descriptor="dpa3", type_map=self.type_map,
            precision=self.precision, torch=torch.__version__.split("+")[0], custom_ops=self.custom_ops)

    def _read_type_map(self) -> None:
        """``type_map``, ``rcut`` (= ``cutoff``), the Z -> type table and ``elements`` of the model."""
        self.type_map = list(self.model.get_type_map())
        self.rcut = self.cutoff = float(self.model.get_rcut())
        self._z2type = np.full(119, -1, dtype=np.int64)
        for t, sym in enumerate(self.type_map):
            z = atomic_numbers.get(sym)
            if z is not None and self._z2type[z] < 0:
                self._z2type[z] = t
        self.elements = frozenset(int(z) for z in np.flatnonzero(self._z2type >= 0))

    def _set_taps(self, am) -> None:
        """Taps, ``layers`` and ``dims``: every repflow layer, the descriptor, and the fitting net's last input."""
        fit = am.fitting_net
        # repflow layers: deepmd calls layer.forward(...) directly, so give hooks a probe to see
        self._blocks = list(am.descriptor.repflows.layers)
        for layer in self._blocks:
            _attach_probe(layer)
        fnet = fit.filter_layers.networks[0]
        self._readout_layer = fnet.layers[-1]
        n_last = len(fnet.layers) - 1
        base = "atomic_model.descriptor.repflows.layers"
        self._tap = {f"interaction.{i}": Tap(f"{base}.{i}.{_PROBE}", select=_flat) for i in range(len(self._blocks))}
        self._tap["descriptor"] = Tap("atomic_model.descriptor", select=lambda out: _flat(out[0]))
        self._tap["last"] = Tap(f"atomic_model.fitting_net.filter_layers.networks.0.layers.{n_last}", pre=True,
                                select=lambda inp: _flat(inp[0]))
        self.layers = tuple(self._tap)
        self.dims = {f"interaction.{i}": int(am.descriptor.repflows.n_dim) for i in range(len(self._blocks))}
        self.dims["descriptor"] = int(am.descriptor.get_dim_out())
        self.dims["last"] = int(self._readout_layer.matrix.shape[0])

    # ---------------------------------------------------------------------------------------
    def _taps(self) -> dict[str, Tap]:
        return dict(self._tap)

    def atom_types(self, numbers) -> np.ndarray:
        """deepmd atom types of atomic numbers ``numbers``: their index in the model's ``type_map``."""
        numbers = np.asarray(numbers, dtype=np.int64)
        types = self._z2type[np.clip(numbers, 0, 118)]
        if (types < 0).any() or (numbers > 118).any():
            bad = sorted(set(numbers[(types < 0) | (numbers > 118)].tolist()))
            raise InputError(f"{self.name}: atomic number(s) {bad} are not in the type_map {self.type_map}")
        return types

    def _inputs(self, atoms: Atoms):
        """``(coord (1, n, 3), atype (1, n), box (1, 9) or None)`` of one frame, as deepmd wants them."""
        import torch
        from deepmd.pt.utils.env import GLOBAL_PT_FLOAT_PRECISION

        atoms = self._prepare(atoms)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        kw = {"device": self.device}
        coord = torch.as_tensor(atoms.positions.reshape(1, -1, 3), dtype=GLOBAL_PT_FLOAT_PRECISION, **kw)
        atype = torch.as_tensor(self.atom_types(atoms.numbers).reshape(1, -1), dtype=torch.long, **kw)
        box = (torch.as_tensor(atoms.cell.array.reshape(1, 9), dtype=GLOBAL_PT_FLOAT_PRECISION, **kw)
               if pbc.all() else None)
        return coord, atype, box

    def _forward(self, frames: list[Atoms]) -> None:
        """deepmd's gradient-free ``forward_embedding`` (descriptor + fitting net), one frame at a time.

        deepmd takes (nframes, nloc) batches of equal-size frames only; frames of different sizes
        run one by one (hooks then fire once per frame, in order).
        """
        for atoms in frames:
            coord, atype, box = self._inputs(atoms)
            self.model.forward_embedding(coord, atype, box)

    # ---------------------------------------------------------------------------------------
    #: energy not produced by ``readout(last)``: none (per-type biases are part of the readout)
    energy_offset = 0.0

    def readout(self, last: np.ndarray, numbers: Sequence[int]) -> np.ndarray:
        """Per-atom energies (eV) from ``last`` through the model's own readout.

        ``E_i = layers[-1](last_i) + bias_atom_e[t_i] + out_bias[t_i]`` with ``t_i`` the type_map
        index of atom i: the last fitting layer, the fitting net's per-type bias and the atomic
        model's output statistics, exactly as deepmd's energy forward adds them.
        """
        import torch

        am = self.model.atomic_model
        fit = am.fitting_net
        if getattr(fit, "remove_vaccum_contribution", None) is not None:
            raise NotImplementedError(f"{self.name}: fitting with atom_ener (vacuum contribution removed)")
        types = torch.as_tensor(self.atom_types(numbers), device=self.device)
        x = torch.as_tensor(np.asarray(last), dtype=fit.prec, device=self.device)
        with torch.inference_mode():
            e = self._readout_layer(x)[:, 0].double() + fit.bias_atom_e[types, 0].double()
            out_bias, _ = am._fetch_out_stat(am.bias_keys)
            e = e + out_bias["energy"][types, 0].double()
            if am.atom_excl is not None:
                e = e * am.atom_excl(types.unsqueeze(0))[0].double()
        return e.cpu().numpy()

    def calculator(self):
        """deepmd-kit's own ASE calculator (``deepmd.calculator.DP``) on the same file and head.

        Made once per extractor (deepmd TorchScript-compiles the model for it, seconds on a CPU).
        """
        if self._calculator is None:
            from deepmd.calculator import DP

            self._calculator = DP(model=self.checkpoint, head=self.head)
        return self._calculator


def _attach_probe(layer) -> None:
    """Route ``layer``'s node output through a hookable, parameter-free probe (idempotent).

    ``DescrptBlockRepflows`` calls ``layer.forward(...)`` rather than ``layer(...)``, which skips
    module hooks; the instance's ``forward`` is replaced by one that calls the original and then
    ``probe(node_ebd)``, an identity module whose forward hooks do fire. Outputs are unchanged.
    """
    import torch

    if hasattr(layer, _PROBE):
        return

    class _Probe(torch.nn.Module):
        def forward(self, x):
            return x

    layer.add_module(_PROBE, _Probe())
    original = layer.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        getattr(layer, _PROBE)(out[0])
        return out

    layer.forward = forward


#: registry entry point: ``spec.options`` = ``checkpoint``, optional ``head`` and ``ops``
load = DPAExtractor.from_spec
