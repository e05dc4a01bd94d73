"""ORB adapter (orb-models): user checkpoints ``orb:/path/model.ckpt[?arch=NAME]``.

Released ORB checkpoints (``orb-v3-conservative-inf-omat-20250404.ckpt``, ``orb-v2-20241011.ckpt``,
...) and ORB fine-tunes are bare state dicts (``torch.save(model.state_dict())``): the architecture
is not in the file. ``arch`` names the released model whose architecture the file has (default
``orb-v3-conservative-inf-omat``; :data:`ARCHS` lists them). The adapter builds that architecture
with orb-models' own builders (``pretrained.orb_v3_conservative_architecture``,
``orb_v3_direct_architecture``, ``orb_v2_architecture``) with the arch's ``SystemConfig`` (radius 6
Å; at most 20 neighbours for the ``-20-`` and v2 models, 120 for ``-inf-`` and omol ones), then
loads the file with ``pretrained.load_model(..., compile=False)``, the package's own loading code.
Widths and depths (latent size, MLP sizes, number of message-passing steps, charge/spin conditioner)
are read from the weights' shapes, so a released checkpoint gets exactly the released builder's
defaults and a fine-tuned or smaller model of the same family loads too. A file whose weights are of
another ORB kind than ``arch`` (direct vs conservative, v2 vs v3) is refused with the arch values
that fit it.

Layers (``n`` = number of message-passing steps, 5 for the released v3 models, width = latent
size, 256 for them):

- ``interaction.{i}``, i = 0..n-1: node features after the i-th attention interaction network
  (forward hook on ``model.gnn_stacks.{i}``, first output).
- ``last``: the input of the energy head (forward pre-hook on ``heads.energy``), i.e. the GNS's
  ``node_features``; it equals ``interaction.{n-1}`` (ORB has no normalisation between the last
  stack and the heads).

Energy (how ``readout`` reproduces ``ORBCalculator``): the energy head first *aggregates* the node
features of a structure (mean for ``predict_atom_avg=True``, all released models), then applies its
MLP: ``E = n * (sigma * MLP(mean_i last_i) + mu) + sum_i ref(Z_i) + E_ZBL``, with ``mu``, ``sigma``
the head's normaliser and ``ref`` its linear reference energies. :meth:`ORBExtractor.readout` gives
per-atom energies ``sigma * MLP(mean last) + mu + ref(Z_i)`` -- so the rows passed to it must be one
structure's atoms -- whose sum is ``E - E_ZBL``. The ZBL pair repulsion of the v3 models
(``pair_repulsion=True``) depends on interatomic distances only and never passes through the head:
it is :meth:`ORBExtractor.pair_energy` (zero unless two atoms are closer than the sum of their
covalent radii), and ``energy_offset = 0``.

Elements: Z = 1..117, every element the embedding table (119 rows) and the reference-energy
one-hot (118 classes) accept; ORB checkpoints do not record which elements were in the training data.

Geometry: ORB supports fully periodic or fully non-periodic systems only. Molecules (pbc False) go
in as they are; slabs and wires (pbc along some axes) are made fully periodic with vacuum along the
non-periodic axes (:func:`~mlipspace.models._torch_utils.with_vacuum`, length extent + 6 Å + 1 Å),
so no periodic image is within the cutoff and the graph is that of the isolated slab.
:meth:`ORBExtractor.calculator` does the same for such frames. Models with a charge/spin conditioner
(the omol ones) need ``atoms.info["charge"]`` and ``atoms.info["spin"]`` on every frame.

Speed: ``batch_size`` frames go through one batched graph (``base.batch_graphs``), energy head
only (no forces, stress, confidence head or backward pass), under ``torch.inference_mode``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms

from mlipspace.errors import InputError, ModelUnavailableError
from mlipspace.models.base import make_fingerprint
from mlipspace.models._torch_utils import CheckpointExtractor, Tap, check_frames, is_slab, load_weights_only, with_vacuum

DISTRIBUTION = "orb-models"
DEFAULT_ARCH = "orb-v3-conservative-inf-omat"
#: arch name (as in ``orb_models.forcefield.pretrained.ORB_PRETRAINED_MODELS``, orb-models 0.5.5)
#: -> (kind, max_num_neighbors, has_stress); kind is "conservative", "direct" (v3) or "v2"
ARCHS: dict[str, tuple[str, int, bool]] = {
    "orb-v3-conservative-inf-omat": ("conservative", 120, True),
    "orb-v3-conservative-20-omat": ("conservative", 20, True),
    "orb-v3-conservative-inf-mpa": ("conservative", 120, True),
    "orb-v3-conservative-20-mpa": ("conservative", 20, True),
    "orb-v3-conservative-omol": ("conservative", 120, False),
    "orb-v3-direct-inf-omat": ("direct", 120, True),
    "orb-v3-direct-20-omat": ("direct", 20, True),
    "orb-v3-direct-inf-mpa": ("direct", 120, True),
    "orb-v3-direct-20-mpa": ("direct", 20, True),
    "orb-v3-direct-omol": ("direct", 120, False),
    "separate-d3-3layer": ("direct", 120, True),
    "separate-d3-5layer": ("direct", 120, True),
    "separate-d4-3layer": ("direct", 120, True),
    "separate-d4-5layer": ("direct", 120, True),
    "orb-v2": ("v2", 20, True),
    "orb-d3-v2": ("v2", 20, True),
    "orb-d3-sm-v2": ("v2", 20, True),
    "orb-d3-xs-v2": ("v2", 20, True),
    "orb-mptraj-only-v2": ("v2", 20, True),
}
RADIUS = 6.0
#: Z accepted by the embedding table and the reference-energy one-hot
ELEMENTS = frozenset(range(1, 118))
_KIND_TEXT = {"conservative": "orb-v3 conservative", "direct": "orb-v3 direct", "v2": "orb-v2 (direct)"}


def _archs_text(kind: str | None = None) -> str:
    return ", ".join(a for a, (k, _, _) in ARCHS.items() if kind is None or k == kind)


# --------------------------------------------------------------------------------------------
# reading the state dict
# --------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict:
    """The state dict in ORB checkpoint ``path``, keys renamed as orb-models' loader renames them.

    Raises :class:`ModelUnavailableError` naming the file when it is missing, is not a weights-only
    torch file (e.g. a pickled whole model of another family), or holds no ORB weights.
    """
    path = Path(path)
    sd = load_weights_only(path, "ORB", "is not a weights-only torch state dict, as ORB checkpoints are "
                           "(torch.save(model.state_dict()))")
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise ModelUnavailableError(f"ORB checkpoint {str(path)!r} holds a {type(sd).__name__}, not a state dict")
    sd = dict(sd)
    # the renames of orb_models.forcefield.load.load_forcefield_state_dict (orb-v2 era names)
    for old, new in (("node_head.", "heads.forces."), ("graph_head.", "heads.energy."),
                     ("stress_head.", "heads.stress.")):
        for k in [k for k in sd if k.startswith(old)]:
            sd[new + k[len(old):]] = sd.pop(k)
    if "model.atom_emb.embeddings.weight" not in sd or not any(k.startswith("heads.energy.mlp.") for k in sd):
        keys = ", ".join(sorted(sd)[:6])
        raise ModelUnavailableError(
            f"ORB checkpoint {str(path)!r} holds no ORB forcefield weights (no model.atom_emb / "
            f"heads.energy entries; first keys: {keys}) -- a checkpoint of another family, or a "
            "headless ORB base model?"
        )
    return sd


def _mlp_shape(sd: dict, prefix: str) -> tuple[int, int]:
    """(hidden width, number of hidden layers) of the ``build_mlp`` stored under ``prefix``."""
    idx = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(re.escape(prefix) + r"NN-(\d+)\.weight", k)))
    if not idx:
        raise KeyError(prefix)
    return int(sd[f"{prefix}NN-0.weight"].shape[0]), len(idx) - 1


def weights_kind(sd: dict) -> str:
    """``"conservative"``, ``"direct"`` (orb-v3) or ``"v2"``, read from the state dict's keys."""
    if "model.rbf_transform.bessel_weights" not in sd:
        return "v2"
    return "direct" if any(k.startswith("heads.forces.") for k in sd) else "conservative"


def architecture_kwargs(sd: dict, kind: str) -> dict:
    """Builder keyword arguments (sizes) read from the weights' shapes.

    For orb-v3: ``latent_dim`` (atom embedding width), ``base_mlp_hidden_dim``/``base_mlp_depth``
    (the node encoder's MLP), ``head_mlp_hidden_dim``/``head_mlp_depth`` (the energy head's MLP),
    ``num_message_passing_steps`` (number of ``gnn_stacks``) and ``has_charge_spin_cond``. orb-v2's
    builder takes only the number of steps (its widths are fixed; a mismatch fails the strict load).
    """
    steps = len({int(m.group(1)) for k in sd if (m := re.match(r"model\.gnn_stacks\.(\d+)\.", k))})
    if kind == "v2":
        return {"num_message_passing_steps": steps}
    base_hidden, base_depth = _mlp_shape(sd, "model._encoder._node_fn.mlp.")
    head_hidden, head_depth = _mlp_shape(sd, "heads.energy.mlp.")
    return {
        "latent_dim": int(sd["model.atom_emb.embeddings.weight"].shape[1]),
        "base_mlp_hidden_dim": base_hidden,
        "base_mlp_depth": base_depth,
        "head_mlp_hidden_dim": head_hidden,
        "head_mlp_depth": head_depth,
        "num_message_passing_steps": steps,
        "has_charge_spin_cond": any(k.startswith("model.conditioner.") for k in sd),
    }


def load_model(checkpoint: str | Path, arch: str = DEFAULT_ARCH, device: str = "cpu"):
    """The ORB regressor of ``checkpoint`` built as ``arch``, loaded by ``pretrained.load_model``.

    Eval mode, parameters frozen, float32, not compiled. Raises :class:`ModelUnavailableError`
    naming the file for an unknown ``arch`` (listing the valid ones), weights of another ORB kind
    than ``arch`` (listing the arch values that fit), or weights that do not fit the architecture.
    """
    if arch not in ARCHS:
        raise ModelUnavailableError(
            f"ORB checkpoint {str(checkpoint)!r}: unknown arch {arch!r}; valid: {_archs_text()}"
        )
    kind, max_neighbors, has_stress = ARCHS[arch]
    sd = read_state_dict(checkpoint)
    found = weights_kind(sd)
    if found != kind:
        raise ModelUnavailableError(
            f"ORB checkpoint {str(checkpoint)!r} holds {_KIND_TEXT[found]} weights but arch={arch!r} is "
            f"an {_KIND_TEXT[kind]} architecture; arch values for this file: {_archs_text(found)}"
        )
    kwargs = architecture_kwargs(sd, kind)
    file_keys = set(sd)
    del sd
    from orb_models.forcefield import pretrained
    from orb_models.forcefield.atomic_system import SystemConfig

    system_config = SystemConfig(radius=RADIUS, max_num_neighbors=max_neighbors)
    if kind == "conservative":
        model = pretrained.orb_v3_conservative_architecture(**kwargs, has_stress=has_stress, device="cpu",
                                                            system_config=system_config)
    elif kind == "direct":
        model = pretrained.orb_v3_direct_architecture(**kwargs, has_stress=has_stress, device="cpu",
                                                      system_config=system_config)
    else:
        model = pretrained.orb_v2_architecture(**kwargs, device="cpu", system_config=system_config)
    expected = {k for k in model.state_dict() if k.startswith("heads.energy.")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = pretrained.load_model(model, str(checkpoint), device=device, precision="float32-high",
                                          compile=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:400]
        raise ModelUnavailableError(
            f"ORB checkpoint {str(checkpoint)!r} does not fit arch={arch!r} (sizes read from the file: "
            f"{kwargs}): {first}"
        ) from exc
    # load_model tolerates missing head weights; an energy head left at random init is an error here
    missing = sorted(expected - file_keys)
    if missing:
        raise ModelUnavailableError(f"ORB checkpoint {str(checkpoint)!r} lacks energy-head weights: {missing[:4]}")
    return model.eval()


# --------------------------------------------------------------------------------------------
# the extractor
# --------------------------------------------------------------------------------------------


class ORBExtractor(CheckpointExtractor):
    """Per-atom features of an ORB checkpoint (see the module docstring for layers and energy).

    ``arch`` is not an output selection (ORB checkpoints have one energy head) but the architecture
    the weights are built into, which the file does not record.
    """

    family = "orb"
    label = "ORB"
    usage = "orb:/path/model.ckpt[?arch=NAME]"
    OPTIONS = {"arch": DEFAULT_ARCH}
    pad_slabs = True
    #: energy added once per structure on top of the per-atom readout (the ZBL term is pair_energy)
    energy_offset = 0.0

    def __init__(self, name: str, checkpoint: str, *, device: str = "cpu", arch: str = DEFAULT_ARCH):
        self.name = name
        self.checkpoint = str(checkpoint)
        self.arch = arch
        self.device = device
        self.model = load_model(checkpoint, arch, device)
        self.system_config = self.model.system_config
        self.cutoff = float(self.system_config.radius)
        gns = self.model.model
        n = len(gns.gnn_stacks)
        width = int(gns.atom_emb.embeddings.weight.shape[1])
        self.layers = tuple(f"interaction.{i}" for i in range(n)) + ("last",)
        self.dims = {layer: width for layer in self.layers}
        self.elements = ELEMENTS
        self.needs_charge_spin = gns.conditioner is not None
        self.fingerprint = make_fingerprint(name, self.family, self.checkpoint, DISTRIBUTION, head=None, arch=arch)

    def _taps(self) -> dict[str, Tap]:
        taps = {f"interaction.{i}": Tap(f"model.gnn_stacks.{i}", select=lambda out: out[0])
                for i in range(len(self.layers) - 1)}
        taps["last"] = Tap("heads.energy", pre=True)  # inputs = (node_features, batch)
        return taps

    def _check_frame(self, atoms: Atoms) -> str | None:
        """Models with a charge/spin conditioner need ``atoms.info["charge"]`` and ``["spin"]``."""
        if self.needs_charge_spin and not ("charge" in atoms.info and "spin" in atoms.info):
            return (f"{self.name} has a charge/spin conditioner (an omol model): set atoms.info['charge'] and "
                    "atoms.info['spin']")
        return None

    def _batch(self, frames: list[Atoms]):
        from orb_models.forcefield.atomic_system import ase_atoms_to_atom_graphs
        from orb_models.forcefield.base import batch_graphs

        graphs = [ase_atoms_to_atom_graphs(self._prepare(a), system_config=self.system_config, device=self.device)
                  for a in frames]
        batch = graphs[0] if len(graphs) == 1 else batch_graphs(graphs)
        return batch.to(self.device)

    def _forward(self, frames: list[Atoms]) -> None:
        # the GNS then the energy head only, as the regressors call them (node order = input order)
        batch = self._batch(frames)
        out = self.model.model(batch)
        self.model.heads["energy"](out["node_features"], batch)

    def readout(self, last, numbers) -> np.ndarray:
        """Per-atom energies (eV) of ONE structure from its ``last`` rows, through ORB's energy head.

        ``e_i = sigma * MLP(agg_j last_j) + mu + ref(Z_i)`` (``agg`` = mean, times ``n`` spread over
        the atoms for a sum-aggregating head), so ``sum_i e_i = E - E_ZBL``: the ORBCalculator energy
        without the pair repulsion (:meth:`pair_energy`). ``last``: (n_atoms, d) of one structure;
        ``numbers``: Z of the same rows.
        """
        import torch

        head = self.model.heads["energy"]
        z = torch.as_tensor(np.asarray(numbers), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            x = torch.as_tensor(np.asarray(last), dtype=torch.float32, device=self.device)
            if x.ndim != 2 or x.shape[0] != z.shape[0] or x.shape[0] == 0:
                raise InputError(f"readout needs (n_atoms, d) features and n_atoms numbers, got {tuple(x.shape)} "
                                 f"and {tuple(z.shape)}")
            n = x.shape[0]
            agg = x.mean(dim=0) if head.node_aggregation == "mean" else x.sum(dim=0)
            e = head.normalizer.inverse(head.mlp(agg[None, :]).reshape(1)).reshape(())
            per_structure = e * n if head.atom_avg else e
            ref = head.reference.linear.weight.reshape(-1)[z]
            return (per_structure.double() / n + ref.double()).cpu().numpy()

    def pair_energy(self, frames) -> np.ndarray:
        """Per-frame energy (eV) of the ZBL pair repulsion as it enters ORB's energy (0 without it).

        Geometry only (it never passes through the energy head): ``readout(last).sum() +
        pair_energy == E``. Same graph and aggregation as the regressor's ``pair_repulsion_fn``.
        """
        import torch

        frames = check_frames(frames)
        out = np.zeros(len(frames))
        if not getattr(self.model, "pair_repulsion", False):
            return out
        pick = getattr(self.model, "_get_raw_repulsion", None)  # direct models: not for d3/d4 energy heads
        with torch.inference_mode():
            for k, atoms in enumerate(frames):
                rep = self.model.pair_repulsion_fn(self._batch([atoms]))
                e = rep["energy"] if pick is None else pick("energy", rep)
                out[k] = 0.0 if e is None else float(e.double().sum())
        return out

    def calculator(self):
        """``ORBCalculator`` on the same model; slabs/wires are padded with vacuum as for extraction."""
        from orb_models.forcefield.calculator import ORBCalculator

        cutoff = self.cutoff

        class _Calculator(ORBCalculator):
            """ORBCalculator that accepts slabs (pbc on some axes) by padding them with vacuum."""

            def calculate(self, atoms=None, properties=None, system_changes=None):
                if atoms is not None and is_slab(atoms):
                    super().calculate(with_vacuum(atoms, cutoff), properties)
                    self.atoms = atoms.copy()
                else:
                    super().calculate(atoms, properties)

        return _Calculator(self.model, device=self.device)


#: registry entry point: ``spec.options`` = ``checkpoint`` and optional ``arch``
load = ORBExtractor.from_spec
