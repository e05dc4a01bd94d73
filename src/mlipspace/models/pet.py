"""PET adapter (metatrain / metatomic): ``pet:/path/model.pt`` or ``pet:/path/model.ckpt``.

Checkpoints:

- ``.pt`` (any suffix but ``.ckpt``): an exported metatomic model -- a TorchScript
  ``AtomisticModel``, the format of the PET-MAD releases and of ``mtt export`` -- loaded with
  ``metatomic.torch.load_atomistic_model`` (no metatrain code runs: the file carries its own
  compiled forward). Models that need compiled extensions are not supported.
- ``.ckpt``: a metatrain training checkpoint (``mtt train`` output, ``architecture_name`` "pet"),
  upgraded and loaded with ``metatrain.utils.io.model_from_checkpoint(..., "export")`` (the
  "best" weights, as ``mtt export`` takes them) and wrapped with the model's own ``export()``.
  ``torch.load(weights_only=False)``: only load checkpoints you trust.

Features are *outputs* of the model, requested through metatomic (a TorchScript model has no
hookable submodules). An output key the model does not declare would be silently dropped by
metatomic, so every key is checked against ``capabilities().outputs`` at load and again in each
result (a missing one raises, naming the checkpoint). Layers:

- ``interaction.{i}``: the per-atom output of GNN layer ``i`` as PET's heads read it: the node
  features (``d_node``) followed by the cutoff-weighted sum over neighbours of the edge features
  (``d_pet``); width ``d_node + d_pet``. These are column blocks of PET's ``feature`` output, whose
  layout is ``[node_0 .. node_{n-1}, edge_0 .. edge_{n-1}]`` over the ``n`` layers that reach the
  heads. With ``featurizer_type="residual"`` every GNN layer reaches the heads; with
  ``"feedforward"`` (metatrain's default) only the last one does, so only ``interaction.{L-1}``
  exists (the earlier layers are not an output of an exported model).
- ``backbone``: the whole ``feature`` output (all ``interaction`` blocks as PET lays them out),
  only when it holds more than one layer.
- ``last``: ``mtt::aux::{target}_last_layer_features``, the input of the energy's linear last
  layers: per readout layer ``i``, the node head output then the cutoff-weighted neighbour sum of
  the edge head output (``d_head`` each), concatenated; width ``2 * d_head * n``.

Energy (``target`` ``energy``, composition baseline ``c_Z``, scale ``s``)::

    E = sum_a [ s * ( sum_i (w_i . node_i(a) + b_i + v_i . edge_i(a) + u_i * C_a) ) + c_Z(a) ]

with ``C_a = sum_j f_c(r_aj)`` the cutoff-weighted neighbour count of atom ``a``: PET applies the
edge last layer (weight ``v_i``, bias ``u_i``) to every edge *before* the weighted sum, so each
edge bias is counted once per (weighted) neighbour. That term is a pair sum of the cutoff function,
a function of the geometry, not of ``last``: :meth:`PETExtractor.readout` gives the per-atom
``s * (w . last + b) + c_Z`` and :meth:`PETExtractor.pair_energy` the per-frame geometry-only rest
(edge biases, and ZBL when the model has it, evaluated by the model's own module), so that
``sum(readout(last)) + pair_energy == E``.

Options: ``head`` (also spelled ``target``, metatrain's word; default ``energy``): which energy-like
output's last-layer features are ``last``, one of the model's outputs that has ``mtt::aux::..._last_layer_features``.

Geometry: metatomic systems with the cell rows of non-periodic axes zero (molecules: no cell,
slabs: ``pbc=(T, T, F)``); neighbour lists from vesin with the model's own options.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms

from mlipspace.errors import ModelUnavailableError
from mlipspace.models.base import make_fingerprint
from mlipspace.models._torch_utils import CheckpointExtractor, Tap, readout_input

DISTRIBUTION = "metatrain"


def last_layer_features_name(target: str) -> str:
    """metatrain's name of the last-layer-features output of ``target`` (``energy`` -> ``mtt::aux::energy_...``)."""
    return f"mtt::aux::{target.replace('mtt::', '', 1)}_last_layer_features"


def load_atomistic(checkpoint: str | os.PathLike, device: str = "cpu"):
    """The metatomic ``AtomisticModel`` of a PET ``checkpoint`` (exported ``.pt`` or metatrain ``.ckpt``).

    Raises :class:`ModelUnavailableError` naming the file when it is missing, unreadable, a
    checkpoint of another architecture, or an exported model that is not a PET.
    """
    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise ModelUnavailableError(f"PET checkpoint {str(path)!r} does not exist (or is not a file)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.suffix == ".ckpt":
            import metatomic.torch  # noqa: F401 - registers the TorchScript classes a checkpoint pickles

            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:
                raise ModelUnavailableError(
                    f"PET checkpoint {str(path)!r} is not a readable metatrain checkpoint: "
                    f"{type(exc).__name__}: {exc}") from exc
            arch = ckpt.get("architecture_name") if isinstance(ckpt, dict) else None
            if arch != "pet":
                what = f"architecture {arch!r}" if arch else f"a {type(ckpt).__name__} without 'architecture_name'"
                raise ModelUnavailableError(
                    f"PET checkpoint {str(path)!r} holds {what}, not a metatrain 'pet' checkpoint")
            from metatrain.utils.io import model_from_checkpoint

            try:
                model = model_from_checkpoint(ckpt, context="export")
            except Exception as exc:
                raise ModelUnavailableError(
                    f"PET checkpoint {str(path)!r} cannot be loaded by metatrain: {type(exc).__name__}: {exc}"
                ) from exc
            atomistic = model.export()
        else:
            from metatomic.torch import load_atomistic_model

            try:
                atomistic = load_atomistic_model(str(path))
            except Exception as exc:
                raise ModelUnavailableError(
                    f"PET checkpoint {str(path)!r} is not an exported metatomic model "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    "a metatrain training checkpoint must end in .ckpt") from exc
    module = atomistic.module
    arch = getattr(module, "original_name", None) or type(module).__name__
    if arch != "PET":
        raise ModelUnavailableError(
            f"PET checkpoint {str(path)!r} holds a metatomic model of architecture {arch!r}, not PET")
    return atomistic.to(device=torch.device(device)).eval()


def _probe_frame(z: int) -> Atoms:
    """Two atoms of element ``z`` 1.5 Å apart (a frame every model of the family can run)."""
    return Atoms(numbers=[z, z], positions=[[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])


def _runner_class():
    import torch

    class Runner(torch.nn.Module):
        """Root module of the extractor: ``forward(frames)`` -> ``{output key: per-atom tensor}``.

        Holds the ``AtomisticModel`` as a child; TorchExtractor's capture hooks the root's output.
        """

        def __init__(self, extractor, atomistic):
            super().__init__()
            self.atomistic = atomistic
            self._extractor = [extractor]  # a list: not registered as a submodule

        def forward(self, frames):
            return self._extractor[0]._evaluate(frames)

    return Runner


class PETExtractor(CheckpointExtractor):
    """Features of a PET model from its metatomic outputs; see the module docstring."""

    family = "pet"
    label = "PET"
    usage = "pet:/path/model.pt or pet:/path/model.ckpt"
    OPTIONS = {"head": "energy"}
    HEAD_ALIAS = "target"  # metatrain's word: which energy-like output

    def __init__(self, name: str, checkpoint: str, *, device: str = "cpu", head: str = "energy"):
        import torch

        target = head

        self.name = name
        self.checkpoint = str(checkpoint)
        self.device = device
        atomistic = load_atomistic(checkpoint, device)
        self.atomistic = atomistic
        caps = atomistic.capabilities()
        self.outputs = dict(caps.outputs)
        self.length_unit = caps.length_unit
        self.dtype = {"float32": torch.float32, "float64": torch.float64}.get(caps.dtype)
        if self.dtype is None:
            raise ModelUnavailableError(f"PET checkpoint {self.checkpoint!r} has dtype {caps.dtype!r}")
        self.elements = frozenset(int(z) for z in caps.atomic_types)
        self._atomic_types = [int(z) for z in caps.atomic_types]

        targets = [k for k in self.outputs if last_layer_features_name(k) in self.outputs]
        if target not in targets:
            raise ModelUnavailableError(
                f"PET checkpoint {self.checkpoint!r} has no target {target!r} with last-layer features; "
                f"valid targets: {', '.join(targets) or '(none)'}")
        self.target = target
        self.last_key = last_layer_features_name(target)
        self.feature_key = next((k for k in ("feature", "features") if k in self.outputs), None)
        if self.feature_key is None:
            raise ModelUnavailableError(
                f"PET checkpoint {self.checkpoint!r} declares no 'feature' output (outputs: "
                f"{', '.join(self.outputs)})")

        from vesin.metatomic import neighbor_lists_for_model

        self._nl = neighbor_lists_for_model(self.length_unit, atomistic)
        self._requested_inputs = dict(atomistic.requested_inputs(use_new_names=True))
        self.model = _runner_class()(self, atomistic)
        self._find_architecture()
        self._ro = None

        # widths from one forward on a dimer: the exported file tells its own shapes
        with torch.inference_mode():
            probe = self._evaluate([_probe_frame(min(self.elements))])
        width_feature = int(probe[self.feature_key].shape[1])
        width_last = int(probe[self.last_key].shape[1])
        n, d_node, d_pet, d_head = self.n_readout, self.d_node, self.d_pet, self.d_head
        if width_feature != n * (d_node + d_pet) or width_last != 2 * n * d_head:
            raise ModelUnavailableError(
                f"PET checkpoint {self.checkpoint!r}: outputs of width {width_feature} ({self.feature_key}) and "
                f"{width_last} ({self.last_key}) do not match {n} readout layer(s) of d_node={d_node}, "
                f"d_pet={d_pet}, d_head={d_head}; this PET version's layout is not supported")
        first = self.num_gnn_layers - n
        self._blocks = {
            f"interaction.{first + i}": list(range(i * d_node, (i + 1) * d_node))
            + list(range(n * d_node + i * d_pet, n * d_node + (i + 1) * d_pet))
            for i in range(n)
        }
        self.layers = tuple(self._blocks) + (("backbone",) if n > 1 else ()) + ("last",)
        self.dims = {layer: len(cols) for layer, cols in self._blocks.items()}
        if n > 1:
            self.dims["backbone"] = width_feature
        self.dims["last"] = width_last
        self.fingerprint = make_fingerprint(
            name, self.family, self.checkpoint, DISTRIBUTION, head=None if target == "energy" else target,
            format="checkpoint" if Path(self.checkpoint).suffix == ".ckpt" else "exported",
            featurizer=self.featurizer_type, dtype=caps.dtype,
        )

    # ---------------------------------------------------------------------------------------------
    # the architecture, read from the module's attributes and parameter names

    def _find_architecture(self) -> None:
        module = self.atomistic.module
        params = dict(module.named_parameters())
        target = re.escape(self.target)
        pattern = re.compile(rf"^(.*?)node_last_layers\.{target}\.(\d+)\.([^.]+)\.(weight|bias)$")
        found: dict[int, dict[str, str]] = {}
        prefix = None
        for pname in params:
            m = pattern.match(pname)
            if m:
                prefix = m.group(1)
                found.setdefault(int(m.group(2)), {})[m.group(4)] = m.group(3)
        if not found:
            raise ModelUnavailableError(
                f"PET checkpoint {self.checkpoint!r} has no last layers for target {self.target!r} "
                "(no parameters '*node_last_layers.<target>.<i>.*')")
        self.n_readout = len(found)
        self._prefix = prefix
        self._ll_names = []
        for i in range(self.n_readout):
            if i not in found or len(set(found[i].values())) != 1:
                raise ModelUnavailableError(
                    f"PET checkpoint {self.checkpoint!r}: target {self.target!r} readout layer {i} is not a "
                    "single linear block (a tensorial target?); only energy-like targets are supported")
            block = next(iter(found[i].values()))
            self._ll_names.append(block)
        w = params[f"{prefix}node_last_layers.{self.target}.0.{self._ll_names[0]}.weight"]
        self.d_head = int(w.shape[1])
        if int(w.shape[0]) != 1:
            raise ModelUnavailableError(
                f"PET checkpoint {self.checkpoint!r}: target {self.target!r} has {int(w.shape[0])} properties, "
                "not a single energy")

        def attr(name, default=None):
            for obj in (module, getattr(module, prefix.rstrip("."), None) if prefix else None):
                if obj is not None and hasattr(obj, name):
                    return getattr(obj, name)
            return default

        def shape(suffix, dim):
            hits = [v for k, v in params.items() if k == f"{prefix}{suffix}"]
            return int(hits[0].shape[dim]) if hits else None

        # attributes of the scripted/eager module, else the embedding tables' shapes
        gnn = {int(m.group(1)) for k in params if (m := re.match(rf"^{re.escape(prefix)}gnn_layers\.(\d+)\.", k))}
        self.d_node = attr("d_node") or shape("node_embedders.0.weight", 1)
        self.d_pet = attr("d_pet") or shape("edge_embedder.weight", 1)
        self.num_gnn_layers = attr("num_gnn_layers") or (max(gnn) + 1 if gnn else None)
        if None in (self.d_node, self.d_pet, self.num_gnn_layers):
            raise ModelUnavailableError(
                f"PET checkpoint {self.checkpoint!r}: cannot tell d_node / d_pet / num_gnn_layers of this PET "
                "version (no such attributes nor embedding tables)")
        self.d_node, self.d_pet, self.num_gnn_layers = int(self.d_node), int(self.d_pet), int(self.num_gnn_layers)
        self.featurizer_type = str(attr("featurizer_type", "residual" if self.n_readout > 1 else "feedforward"))

    # ---------------------------------------------------------------------------------------------
    # running the model

    def _systems(self, frames: list[Atoms]):
        """metatomic ``System``s of ``frames`` (cell rows of non-periodic axes zero), with neighbour lists."""
        import torch
        from metatomic.torch import System

        systems = []
        for atoms in frames:
            pbc = np.asarray(atoms.pbc, dtype=bool)
            cell = np.zeros((3, 3))
            cell[pbc] = np.asarray(atoms.cell[:])[pbc]
            system = System(
                types=torch.as_tensor(atoms.numbers, dtype=torch.int32, device=self.device),
                positions=torch.as_tensor(atoms.positions, dtype=self.dtype, device=self.device),
                cell=torch.as_tensor(cell, dtype=self.dtype, device=self.device),
                pbc=torch.as_tensor(pbc, device=self.device),
            )
            if self._requested_inputs:  # e.g. charge / spin of system-conditioned PET models
                from metatomic_ase._calculator import _get_ase_input

                for key, option in self._requested_inputs.items():
                    system.add_data(key, _get_ase_input(atoms, key, option, dtype=self.dtype,
                                                        device=torch.device(self.device)))
            systems.append(system)
        for calculator in self._nl:
            calculator.add_neighbor_list(systems)
        return systems

    def _evaluate(self, frames: list[Atoms]) -> dict:
        """``{output key: (n_atoms, d) tensor}`` of the feature outputs for ``frames`` (rows in input order)."""
        import torch
        from metatomic.torch import ModelEvaluationOptions, ModelOutput

        systems = self._systems(frames)
        keys = [self.feature_key, self.last_key]
        options = ModelEvaluationOptions(
            length_unit=self.length_unit,
            outputs={k: ModelOutput(sample_kind="atom") for k in keys},
        )
        # TorchScript's simple executor: the profiling one spends seconds of CPU optimising the graph
        # on the first calls and was 2-3x slower per call on small CPU batches afterwards
        with warnings.catch_warnings(), torch.jit.optimized_execution(False):
            warnings.simplefilter("ignore")  # "'features' is deprecated" for old files
            result = self.atomistic(systems, options, check_consistency=False)
        n_atoms = sum(len(a) for a in frames)
        out = {}
        for key in keys:
            got = key if key in result else ("features" if key == "feature" and "features" in result else None)
            if got is None:
                raise RuntimeError(
                    f"{self.name}: PET checkpoint {self.checkpoint!r} returned no {key!r} output (got "
                    f"{', '.join(result) or 'nothing'}); metatomic drops outputs a model does not compute")
            block = result[got].block()
            samples = block.samples.values
            expect = np.concatenate([np.stack([np.full(len(a), k), np.arange(len(a))], axis=1)
                                     for k, a in enumerate(frames)]) if frames else np.zeros((0, 2))
            if tuple(block.values.shape[:1]) != (n_atoms,) or not np.array_equal(samples.cpu().numpy(), expect):
                raise RuntimeError(f"{self.name}: output {key!r} does not hold one row per atom in input order")
            out[key] = block.values
        for layer, cols in getattr(self, "_blocks", {}).items():
            out[layer] = out[self.feature_key][:, torch.as_tensor(cols, device=out[self.feature_key].device)]
        if getattr(self, "_blocks", None) is not None:
            out["backbone"] = out[self.feature_key]
            out["last"] = out[self.last_key]
        return out

    def _taps(self) -> dict[str, Tap]:
        return {layer: Tap("", select=lambda out, layer=layer: out[layer]) for layer in self.layers}

    def _forward(self, frames: list[Atoms]) -> None:
        self.model(frames)

    # ---------------------------------------------------------------------------------------------
    # energy from "last"

    #: energy added once per structure on top of the per-atom readout (all terms are per atom)
    energy_offset = 0.0

    def _readout_parameters(self):
        """``(w (n_readout, 2*d_head) as last's columns, b_node+b_edge*C split, scale, composition)``."""
        if self._ro is not None:
            return self._ro
        import metatensor.torch as mts

        module = self.atomistic.module
        params = dict(module.named_parameters())
        buffers = dict(module.named_buffers())
        p, t = self._prefix, self.target
        w = np.zeros(2 * self.n_readout * self.d_head)
        b_node = 0.0
        b_edge = 0.0
        for i, block in enumerate(self._ll_names):
            for k, kind in enumerate(("node", "edge")):
                lin_w = params[f"{p}{kind}_last_layers.{t}.{i}.{block}.weight"].detach().double().cpu().numpy()
                lin_b = float(params[f"{p}{kind}_last_layers.{t}.{i}.{block}.bias"].detach().double().cpu().sum())
                start = (2 * i + k) * self.d_head
                w[start:start + self.d_head] = lin_w[0]
                if kind == "node":
                    b_node += lin_b
                else:
                    b_edge += lin_b
        scale_key = f"scaler.{t}_scaler_buffer"
        comp_key = f"additive_models.0.{t}_composition_buffer"
        if scale_key not in buffers or comp_key not in buffers:
            raise NotImplementedError(f"{self.name}: no {scale_key} / {comp_key} in the model: unknown "
                                      "scaler/composition layout, readout unavailable")
        scales = mts.load_buffer(buffers[scale_key].cpu())
        comp = mts.load_buffer(buffers[comp_key].cpu())
        sb, cb = scales.block(), comp.block()
        s_values = sb.values.detach().double().cpu().numpy().reshape(-1)
        s_samples = sb.samples.values.cpu().numpy().reshape(-1)
        types = sorted(self.elements)
        if s_values.size == 1 and int(s_samples[0]) == -1:
            scale = {z: float(s_values[0]) for z in types}
        elif s_values.size == len(types):  # per-type scales; samples index the model's atomic_types
            scale = {self._atomic_types[int(i)]: float(v) for i, v in zip(s_samples, s_values)}
        else:
            raise NotImplementedError(f"{self.name}: scaler block of shape {tuple(sb.values.shape)} not understood")
        c_samples = cb.samples.values.cpu().numpy().reshape(-1)
        c_values = cb.values.detach().double().cpu().numpy().reshape(-1)
        if c_values.size != c_samples.size:
            raise NotImplementedError(f"{self.name}: composition block of shape {tuple(cb.values.shape)} not understood")
        composition = {z: 0.0 for z in types}
        composition.update({int(z): float(v) for z, v in zip(c_samples, c_values)})
        self._ro = (w, b_node, b_edge, scale, composition)
        return self._ro

    def _coordination_of(self, systems) -> np.ndarray:
        """Per-atom ``C_a = sum_j f_c(r_aj)`` with the model's own (compiled) preprocessing."""
        import torch
        from metatrain.pet.modules.structures import concatenate_structures

        module = self.atomistic.module
        backend = getattr(module, self._prefix.rstrip("."), None) if self._prefix else module
        if backend is None or not hasattr(backend, "preprocess"):
            raise NotImplementedError(f"{self.name}: this PET version has no backend.preprocess; the "
                                      "cutoff-weighted neighbour counts of the edge biases are unavailable")
        options = self.atomistic.requested_neighbor_lists()[0]
        inputs = concatenate_structures(systems, options)
        with torch.jit.optimized_execution(False):
            data = backend.preprocess(*inputs[:7], float(getattr(module, "cutoff_width_adaptive", 1.0)))
        weights = data["cutoff_factors"] * data["padding_mask"].to(data["cutoff_factors"].dtype)
        return weights.sum(dim=1).double().cpu().numpy()

    def coordination(self, frames) -> np.ndarray:
        """Per-atom cutoff-weighted neighbour counts ``C_a`` of ``frames`` (all atoms, input order)."""
        import torch

        from mlipspace.models._torch_utils import check_frames

        frames = check_frames(frames)
        with torch.inference_mode():
            return self._coordination_of(self._systems(frames)) if frames else np.zeros(0)

    def _additive_models(self) -> list:
        """The model's additive models after the composition baseline (ZBL), as callable modules."""
        holder = getattr(self.atomistic.module, "additive_models", None)
        if holder is None:
            return []
        names = sorted({n.split(".")[0] for n, _ in holder.named_children()} - {"0"}, key=int)
        return [getattr(holder, n) for n in names]

    def readout(self, last: np.ndarray, numbers) -> np.ndarray:
        """Per-atom energies (model units, eV for PET-MAD) from ``last`` through the model's last layers.

        ``s * (w . last_a + b) + c_Z(a)``: ``w`` the node and edge last-layer weights laid out as
        ``last``'s columns, ``b`` the node biases, ``s`` the energy scale, ``c_Z`` the composition
        baseline. The model's energy is ``sum(readout(last)) + pair_energy(frame)``: the edge
        biases (counted once per weighted neighbour) and a ZBL term depend on the geometry only.
        """
        last, numbers = readout_input(self, last, numbers)
        w, b_node, _b_edge, scale, composition = self._readout_parameters()
        s = np.array([scale[int(z)] for z in numbers])
        c = np.array([composition[int(z)] for z in numbers])
        return s * (last.astype(np.float64) @ w + b_node) + c

    def pair_energy(self, frames) -> np.ndarray:
        """Per-frame energy of the geometry-only terms that do not pass through ``last``.

        ``sum_a s_a * u * C_a`` -- the edge last layers' biases ``u`` (summed over readout layers),
        applied to every edge before PET's cutoff-weighted neighbour sum, hence counted
        ``C_a = sum_j f_c(r_aj)`` times (a pair sum of the cutoff function) -- plus the energy of
        the additive models after the composition baseline (ZBL), evaluated by the model's own
        modules. ``sum(readout(last)) + pair_energy == E`` for every frame.
        """
        import torch
        from metatomic.torch import ModelOutput

        from mlipspace.models._torch_utils import check_frames

        frames = check_frames(frames)
        _w, _b_node, b_edge, scale, _composition = self._readout_parameters()
        extra = self._additive_models()
        out = np.zeros(len(frames))
        with torch.inference_mode():
            for k, atoms in enumerate(frames):
                systems = self._systems([atoms])
                if b_edge != 0.0:
                    s = np.array([scale[int(z)] for z in atoms.numbers])
                    out[k] += float(np.sum(s * b_edge * self._coordination_of(systems)))
                for additive in extra:
                    with torch.jit.optimized_execution(False):
                        res = additive(systems, {self.target: ModelOutput(sample_kind="system")}, None)
                    if self.target in res:
                        out[k] += float(res[self.target].block().values.double().sum())
        return out

    def calculator(self):
        """``metatomic_ase.MetatomicCalculator`` on a fresh load of the same file, energy only.

        For another ``target`` than ``energy``, an ASE calculator whose energy is that output of the
        same ``MetatomicCalculator`` (its ``run_model``, per system).
        """
        from metatomic_ase import MetatomicCalculator

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # energy only: ``get_potential_energy`` needs no forces (and no backward pass)
            calc = MetatomicCalculator(load_atomistic(self.checkpoint, self.device), device=self.device,
                                       do_gradients_with_energy=False)
        return calc if self.target == "energy" else _target_calculator(calc, self.target)


def _target_calculator(metatomic_calculator, target: str):
    """An ASE calculator whose ``energy`` is output ``target`` of ``metatomic_calculator.run_model``."""
    from ase.calculators.calculator import Calculator, all_changes
    from metatomic.torch import ModelOutput

    class TargetCalculator(Calculator):
        implemented_properties = ("energy",)

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            out = metatomic_calculator.run_model([self.atoms], {target: ModelOutput(sample_kind="system")})
            self.results["energy"] = float(out[target].block().values.double().sum())

    return TargetCalculator()


#: registry entry point: ``spec.options`` = ``checkpoint`` and optional ``head`` (or ``target``)
load = PETExtractor.from_spec
