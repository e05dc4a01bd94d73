"""Helpers shared by the torch model adapters (CHGNet, DIEP, SevenNet, HIENet, ...).

Importing this module does not import torch (torch is imported inside the functions that need
it), so an adapter module can import it at top level and still be imported cheaply by
``mlipspace models`` to read its static metadata (``describe(spec)``).

What an adapter gets from here:

- :class:`TorchExtractor`: an :class:`~mlipspace.models.base.Extractor` whose ``extract`` does
  everything that is not model specific -- argument checks, the unsupported-element policy
  (``"raise"`` or ``"skip"``), batching, ``torch.inference_mode``, hook capture, float32 numpy
  output and the row table in input order. A subclass sets the attributes (``name``, ``family``,
  ``layers``, ``dims``, ``elements``, ``fingerprint``, ``device``, ``model``) and implements two
  methods:

  * ``_taps() -> dict[layer, Tap]``: where each layer's per-atom tensor is read;
  * ``_forward(frames)``: run the model (energy only, no backward) on a list of frames. Every
    tapped module must see the atoms of ``frames`` in order; the forward may batch them or loop
    over them (hooks fire once per call and the captured pieces are concatenated in call order).

  Optional, used by tests and ``benchmarks/bench_extract.py``: ``calculator()`` (the package's
  own ASE calculator on the same weights) and ``readout(last, numbers)`` (per-atom energies from
  ``last`` through the model's own readout; their sum plus ``energy_offset`` is the energy).

- For ``mlipspace models`` (cheap listing), an adapter module should define
  ``describe(spec) -> {"layers", "dims", "elements"}`` from static knowledge, and import neither
  torch nor its model package at module level; without it the listing shows "?" unless ``--load``.

- Pitfall: a model that builds a tensor cache lazily on its first forward pass (DIEP's quadrature
  grid) must have it built *outside* ``torch.inference_mode``, or a later forward with autograd
  (the ASE calculator on the same module) fails with "Inference tensors cannot be saved for
  backward". Hooks must return ``None`` (a pre-hook that returns a value replaces the input).

- :func:`checkpoint_options` (a checkpoint spec's file and options, unknown options refused) and
  :func:`readout_input` (the argument checks of every ``readout(last, numbers)``).

- :class:`Tap`, :func:`capture` (forward hooks / pre-hooks that store detached copies),
  :func:`check_frames`, :func:`unsupported_frames`, :func:`parse_layers`, :func:`with_vacuum`
  (non-periodic axes -> a box with enough vacuum that no periodic image is within the cutoff).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from mlipspace.data.rows import row_table
from mlipspace.errors import InputError, ModelUnavailableError, StructureError, UnsupportedElementsError
from mlipspace.models.base import Extractor, FeatureSet, check_finite

# --------------------------------------------------------------------------------------------
# hook capture
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tap:
    """Where one layer's per-atom features are read inside a torch model.

    ``module``: dotted submodule path (as in ``model.named_modules()``); ``pre``: read the input
    of the module (forward pre-hook) instead of its output; ``select``: maps the hook's value (the
    output, or the tuple of positional inputs for a pre-hook) to the (n_atoms, d) tensor.
    """

    module: str
    pre: bool = False
    select: Callable | None = None

    def pick(self, value):
        """The (n_atoms, d) tensor of this tap from a hook's output / input tuple."""
        if self.select is not None:
            return self.select(value)
        return value[0] if self.pre else value


@contextlib.contextmanager
def capture(model, taps: dict[str, Tap]) -> Iterator[dict[str, list]]:
    """Register hooks for ``taps`` on ``model``; yields ``{layer: [tensor, ...]}`` filled per call.

    Each hook stores a detached float32 copy (``clone`` so later in-place updates of the model's
    tensors cannot change it) and returns ``None``, so the forward pass is unchanged. Hooks are
    removed on exit, also when the forward raises.
    """
    modules = dict(model.named_modules())
    store: dict[str, list] = {layer: [] for layer in taps}
    handles = []
    try:
        for layer, tap in taps.items():
            if tap.module not in modules:
                raise RuntimeError(f"{type(model).__name__} has no submodule {tap.module!r} (layer {layer!r})")
            mod = modules[tap.module]

            def _store(value, layer=layer, tap=tap):
                store[layer].append(tap.pick(value).detach().float().clone())

            if tap.pre:
                def _hook(_mod, inputs, _store=_store):
                    _store(inputs)  # returns None: the module's input is left untouched

                handles.append(mod.register_forward_pre_hook(_hook))
            else:
                def _hook(_mod, _inputs, output, _store=_store):
                    _store(output)  # returns None: the module's output is left untouched

                handles.append(mod.register_forward_hook(_hook))
        yield store
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def check_frames(frames) -> list[Atoms]:
    """``frames`` as a list of usable ``ase.Atoms``, else a :class:`StructureError` naming the frame.

    The structural checks of :func:`mlipspace.data.checks.validate` (empty frame, NaN/inf positions
    or cell, zero periodic cell vector, atoms closer than 0.3 Å); labels are not looked at, and
    elements are left to the unsupported-element policy. A model would otherwise return finite but meaningless features for such frames.
    """
    from mlipspace.data.checks import frame_problem, frame_source

    if isinstance(frames, Atoms):
        frames = [frames]
    frames = list(frames)
    for i, atoms in enumerate(frames):
        if not isinstance(atoms, Atoms):
            raise InputError(f"frame {i} is a {type(atoms).__name__}, expected ase.Atoms")
        reason = None
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if len(atoms) and not np.all(np.isfinite(atoms.positions)):
            reason = "positions contain NaN or inf"
        elif pbc.any() and np.all(np.isfinite(atoms.cell[:])) and np.any(atoms.cell.lengths()[pbc] < 1e-8):
            reason = (f"periodic along axes {np.flatnonzero(pbc).tolist()} but the cell vector of such an "
                      "axis is zero")
        else:
            reason = frame_problem(atoms, labels=False, elements=False)
        if reason is not None:
            source, frame = frame_source(atoms, i)
            raise StructureError(reason, source=source, frame=frame)
    return frames


def unsupported_frames(frames: Sequence[Atoms], elements: Iterable[int]) -> dict[int, list[int]]:
    """``{frame index: sorted unsupported Z}`` for the frames holding elements not in ``elements``."""
    allowed = set(int(z) for z in elements)
    bad = {}
    for i, atoms in enumerate(frames):
        extra = sorted(set(np.unique(atoms.numbers).tolist()) - allowed)
        if extra:
            bad[i] = extra
    return bad


def _symbols(zs: Iterable[int]) -> str:
    return ", ".join(chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}" for z in zs)


def unsupported_error(model: str, bad: dict[int, list[int]]) -> UnsupportedElementsError:
    """The :class:`UnsupportedElementsError` naming the elements, the frames and the model."""
    allz = sorted({z for zs in bad.values() for z in zs})
    frames = list(bad)
    shown = ", ".join(str(i) for i in frames[:20]) + (f", ... ({len(frames)} frames)" if len(frames) > 20 else "")
    reason = (
        f"model {model!r} does not support element(s) {_symbols(allz)} found in frame(s) {shown}; "
        "use on_unsupported='skip' (CLI: --skip-unsupported) to leave these frames out"
    )
    return UnsupportedElementsError(reason, frame=frames[0] if len(frames) == 1 else None)


def parse_layers(requested, available: Sequence[str]) -> list[str]:
    """Normalise a ``layers`` argument: ``"all"``, one name, or a sequence of names (kept unique, in order)."""
    if isinstance(requested, str):
        requested = list(available) if requested == "all" else [requested]
    requested = list(requested)
    if "all" in requested:
        requested = list(available)
    if not requested:
        raise InputError("no layers requested")
    unknown = [layer for layer in requested if layer not in available]
    if unknown:
        raise InputError(f"unknown layer(s) {', '.join(map(repr, unknown))}; this model has {', '.join(available)}")
    return list(dict.fromkeys(requested))


def checkpoint_options(spec, allowed: Sequence[str], family: str, usage: str) -> tuple[str, dict]:
    """``(checkpoint path, other options)`` of a checkpoint spec (``FAMILY:/path?key=value``).

    A spec without a file or with an option not in ``allowed`` raises :class:`InputError` naming the
    checkpoint and the valid options (``usage`` shows the spec syntax).
    """
    options = dict(spec.options)
    checkpoint = options.pop("checkpoint", None)
    if not checkpoint:
        raise InputError(f"a {family} spec needs a checkpoint file: {usage}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = f"valid options: {', '.join(allowed)}" if allowed else f"{family} checkpoints take no options"
        raise InputError(f"{family} checkpoint {checkpoint!r}: unknown option(s) {', '.join(unknown)}; {valid}")
    return checkpoint, options


def readout_input(extractor, last, numbers) -> tuple[np.ndarray, np.ndarray]:
    """``(last, numbers)`` checked for an adapter's ``readout``: ``last`` must be (n_atoms, dims["last"])
    and every atomic number one the model has a readout for, else :class:`InputError`."""
    numbers = np.asarray(numbers, dtype=int).reshape(-1)
    last = np.asarray(last)
    width = extractor.dims["last"]
    if last.shape != (len(numbers), width):
        raise InputError(f"last has shape {last.shape}, expected ({len(numbers)}, {width}) for {len(numbers)} atoms")
    unknown = sorted(set(numbers.tolist()) - set(extractor.elements))
    if unknown:
        raise InputError(f"{extractor.name} has no readout for atomic number(s) {unknown}")
    return last, numbers


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------


def with_vacuum(atoms: Atoms, cutoff: float, margin: float = 1.0) -> Atoms:
    """A fully periodic copy of ``atoms`` in which non-periodic axes are replaced by vacuum.

    For packages that need a cell (e.g. CHGNet builds its graph with pymatgen). Each non-periodic
    cell vector is replaced by a vector orthogonal to the periodic ones, of length
    ``L = extent + cutoff + margin`` where ``extent`` is the size of the structure along that
    direction. Any periodic image along a new axis is then at least ``L - extent > cutoff`` away
    from every atom, so the neighbour list (and thus every feature) is that of the isolated
    molecule / slab / wire. Positions, species and order are unchanged; fully periodic input is
    returned as is (a copy).
    """
    out = atoms.copy()
    out.calc = None
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.all():
        return out
    pos = atoms.positions
    periodic = [np.asarray(atoms.cell[i], float) for i in range(3) if pbc[i]]
    # orthonormal directions spanning the complement of the periodic vectors
    if len(periodic) == 0:
        normals = list(np.eye(3))
    elif len(periodic) == 1:
        v = periodic[0] / np.linalg.norm(periodic[0])
        trial = np.eye(3)[np.argmin(np.abs(v))]
        n1 = np.cross(v, trial)
        n1 /= np.linalg.norm(n1)
        n2 = np.cross(v, n1)
        normals = [n1, n2 / np.linalg.norm(n2)]
    else:
        n = np.cross(periodic[0], periodic[1])
        norm = np.linalg.norm(n)
        if norm < 1e-8:
            raise StructureError("the two periodic cell vectors are parallel")
        normals = [n / norm]
    cell = np.zeros((3, 3))
    it = iter(normals)
    for i in range(3):
        if pbc[i]:
            cell[i] = atoms.cell[i]
        else:
            d = next(it)
            proj = pos @ d
            length = float(proj.max() - proj.min()) + float(cutoff) + float(margin)
            cell[i] = d * length
    if np.linalg.det(cell) < 0:  # keep a right-handed cell (pymatgen is fine either way; be tidy)
        j = int(np.flatnonzero(~pbc)[0])
        cell[j] = -cell[j]
    out.set_cell(cell, scale_atoms=False)
    out.pbc = True
    return out


# --------------------------------------------------------------------------------------------
# the generic extractor
# --------------------------------------------------------------------------------------------


class TorchExtractor(Extractor):
    """Shared ``extract`` for torch models; subclasses implement ``_taps`` and ``_forward``.

    Attributes a subclass sets in ``__init__``: ``name``, ``family``, ``layers`` (backbone names
    ``"interaction.{i}"`` in order, then ``"last"``), ``dims``, ``elements`` (frozenset of Z),
    ``fingerprint``, ``device`` and ``model`` (the ``torch.nn.Module`` carrying the hooks).
    """

    model = None

    def _taps(self) -> dict[str, Tap]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward(self, frames: list[Atoms]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _batches(self, frames: list[Atoms], batch_size: int) -> Iterator[list[int]]:
        """Indices of consecutive batches of at most ``batch_size`` frames."""
        for start in range(0, len(frames), batch_size):
            yield list(range(start, min(start + batch_size, len(frames))))

    def extract(
        self,
        frames: Sequence[Atoms],
        layers: Sequence[str] | str = ("last",),
        batch_size: int = 8,
        on_unsupported: str = "raise",
    ) -> FeatureSet:
        """Features of ``layers`` (names or ``"all"``) for every atom of ``frames``, rows in input order.

        Runs the energy forward pass only (no forces, stress or backward) under
        ``torch.inference_mode``, ``batch_size`` frames per forward. Frames with elements outside
        ``self.elements`` raise :class:`~mlipspace.errors.UnsupportedElementsError`
        (``on_unsupported="raise"``) or are left out and listed in ``FeatureSet.skipped``
        (``"skip"``); the ``frame`` column of the rows always counts input positions.
        """
        import torch

        if on_unsupported not in ("raise", "skip"):
            raise InputError(f"on_unsupported must be 'raise' or 'skip', not {on_unsupported!r}")
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, not {batch_size}")
        wanted = parse_layers(layers, self.layers)
        frames = check_frames(frames)
        bad = unsupported_frames(frames, self.elements)
        skipped: list[tuple[int, str]] = []
        if bad:
            if on_unsupported == "raise":
                raise unsupported_error(self.name, bad)
            skipped = [(i, f"unsupported element(s) {_symbols(zs)} for {self.name}") for i, zs in bad.items()]
        keep = [i for i in range(len(frames)) if i not in bad]
        kept = [frames[i] for i in keep]

        taps = {layer: tap for layer, tap in self._taps().items() if layer in wanted}
        pieces: dict[str, list[np.ndarray]] = {layer: [] for layer in wanted}
        with capture(self.model, taps) as store, torch.inference_mode():
            for idx in self._batches(kept, int(batch_size)):
                batch = [kept[i] for i in idx]
                for lst in store.values():
                    lst.clear()
                self._forward(batch)
                n_atoms = sum(len(a) for a in batch)
                for layer in wanted:
                    if not store[layer]:
                        raise RuntimeError(f"{self.name}: layer {layer!r} was not reached by the forward pass")
                    arr = torch.cat(store[layer], dim=0).cpu().numpy()
                    if arr.shape != (n_atoms, self.dims[layer]):
                        raise RuntimeError(
                            f"{self.name}: layer {layer!r} gave shape {arr.shape} for a batch of "
                            f"{n_atoms} atoms (expected ({n_atoms}, {self.dims[layer]}))"
                        )
                    pieces[layer].append(arr)
        feats = {
            layer: (np.concatenate(p, axis=0) if p else np.zeros((0, self.dims[layer]), np.float32)).astype(
                np.float32, copy=False
            )
            for layer, p in pieces.items()
        }
        rows = row_table(kept)
        check_finite(self.name, feats, rows["frame"], kept)
        rows["frame"] = np.repeat(np.asarray(keep, dtype=np.int64), [len(a) for a in kept]).astype(np.int64)
        return FeatureSet(model=self.name, layers=feats, rows=rows, fingerprint=dict(self.fingerprint), skipped=skipped)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, layers={list(self.layers)}, device={self.device!r})"


# --------------------------------------------------------------------------------------------
# checkpoint adapters (FAMILY:/path?key=value specs)
# --------------------------------------------------------------------------------------------


def is_slab(atoms: Atoms) -> bool:
    """Periodic along some axes but not all (a slab or a wire)."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    return bool(pbc.any() and not pbc.all())



def load_weights_only(path, label: str, expected: str):
    """``torch.load(path, weights_only=True)`` on the CPU, as the family's own loader reads it.

    A missing file or one that is not such a torch file raises :class:`ModelUnavailableError`
    "LABEL checkpoint 'path' does not exist" / "LABEL checkpoint 'path' EXPECTED: Type: message --
    a checkpoint of another family?".
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelUnavailableError(f"{label} checkpoint {str(path)!r} does not exist (or is not a file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelUnavailableError(
            f"{label} checkpoint {str(path)!r} {expected}: {type(exc).__name__}: {msg[:300]} -- a checkpoint of "
            "another family?"
        ) from exc

class CheckpointExtractor(TorchExtractor):
    """Base of the adapters loaded from a user checkpoint spec ``FAMILY:/path[?key=value&...]``.

    What every checkpoint family shares lives here once: the options table and its validation
    (:meth:`from_spec`), the device resolved once (``"auto"`` -> CUDA when visible), one name for
    the output selection, the per-frame input check (:meth:`_check_frame`, e.g. charge/spin) and
    the per-frame preparation (:meth:`_prepare`, slabs padded with vacuum when ``pad_slabs``).

    A subclass sets ``family``, ``label`` (the name in messages), ``usage`` (spec syntax),
    ``OPTIONS`` (option -> default, ``head`` included when the family selects an output) and,
    when the family's own word for the output differs, ``HEAD_ALIAS`` (UMA ``task``, PET
    ``target``): the spec may use either spelling, the constructor receives ``head``. Its
    ``__init__(name, checkpoint, *, device, **OPTIONS)`` loads the weights.
    """

    label: str = ""
    usage: str = ""
    OPTIONS: dict[str, object] = {}
    HEAD_ALIAS: str | None = None
    #: pad slabs and wires with vacuum to ``cutoff`` in :meth:`_prepare` (packages that need a 3D cell)
    pad_slabs: bool = False
    cutoff: float = 0.0

    @classmethod
    def spec_options(cls, spec) -> tuple[str, dict]:
        """``(checkpoint, options)`` of ``spec``: unknown options refused, the head alias mapped to ``head``."""
        allowed = list(cls.OPTIONS) + ([cls.HEAD_ALIAS] if cls.HEAD_ALIAS else [])
        checkpoint, options = checkpoint_options(spec, allowed, cls.label, cls.usage)
        if cls.HEAD_ALIAS and cls.HEAD_ALIAS in options:
            if "head" in options:
                raise InputError(f"{cls.label} checkpoint {checkpoint!r}: give head or {cls.HEAD_ALIAS}, not both "
                                 "(they are the same option)")
            options["head"] = options.pop(cls.HEAD_ALIAS)
        return checkpoint, {**cls.OPTIONS, **options}

    @classmethod
    def from_spec(cls, spec, device: str = "auto"):
        """Registry entry point (each adapter module's ``load``): the extractor of ``spec`` on ``device``."""
        from mlipspace._device import resolve_device

        checkpoint, options = cls.spec_options(spec)
        return cls(spec.name, checkpoint, device=resolve_device(device), **options)

    def _choose_head(self, valid: Sequence[str], head: str | None, *, default: str | None = None) -> str:
        """The model output ``head`` among ``valid`` (in the family's own word, ``HEAD_ALIAS``): the
        only one, else ``default`` when given; otherwise a ModelUnavailableError naming the choices."""
        word = self.HEAD_ALIAS or "head"
        if head is None:
            if len(valid) == 1:
                return valid[0]
            if default is not None:
                return default
            raise ModelUnavailableError(f"{self.label} checkpoint {self.checkpoint!r} has several {word}s: choose "
                                        f"one with ?{word}=, one of {', '.join(valid)}")
        if head not in valid:
            raise ModelUnavailableError(f"{self.label} checkpoint {self.checkpoint!r}: unknown {word} {head!r}; "
                                        f"valid {word}s: {', '.join(valid)}")
        return head

    def _check_frame(self, atoms: Atoms) -> str | None:
        """Why this model cannot take ``atoms`` (e.g. a missing charge/spin), or ``None``."""
        return None

    def _prepare(self, atoms: Atoms) -> Atoms:
        """``atoms`` as the model package takes it: slabs and wires padded with vacuum when ``pad_slabs``."""
        return with_vacuum(atoms, self.cutoff) if self.pad_slabs and is_slab(atoms) else atoms

    def extract(self, frames, layers=("last",), batch_size: int = 8, on_unsupported: str = "raise") -> FeatureSet:
        """As :meth:`TorchExtractor.extract`, after :meth:`_check_frame` on every frame
        (a :class:`StructureError` naming the frame's source file and position)."""
        from mlipspace.data.checks import frame_source

        frames = check_frames(frames)
        for i, atoms in enumerate(frames):
            reason = self._check_frame(atoms)
            if reason is not None:
                source, frame = frame_source(atoms, i)
                raise StructureError(reason, source=source, frame=frame)
        return super().extract(frames, layers=layers, batch_size=batch_size, on_unsupported=on_unsupported)
