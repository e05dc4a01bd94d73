"""Training CHGNet with its own trainer, keeping every epoch's checkpoint (the fine-tuning trajectory).

Lives next to the CHGNet adapter: it is model code. :mod:`mlipspace.experiments.finetune` analyses
the checkpoints it writes.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlipspace.data import fingerprint as data_fingerprint
from mlipspace.errors import InputError, ModelUnavailableError, StructureError

_EPOCH_RE = re.compile(r"epoch[_-]?(\d+)", re.IGNORECASE)


def checkpoint_epoch(path: str | os.PathLike) -> int:
    """The epoch number written in a checkpoint's file name (``epoch12_...``, ``epoch_012``...)."""
    m = _EPOCH_RE.search(Path(path).name)
    if not m:
        raise InputError(f"{path}: cannot tell the epoch from the file name (expected 'epoch<N>' in it)")
    return int(m.group(1))


def sorted_checkpoints(pattern: str | Sequence[str]) -> list[Path]:
    """Checkpoint files of ``pattern`` (a glob or a list of paths) in epoch order.

    "best model so far" copies (``bestE_*``, ``bestF_*``) are left out: they are not points on the
    training trajectory. Raises if nothing matches or two files claim the same epoch.
    """
    paths = sorted(glob.glob(pattern)) if isinstance(pattern, str) else [str(p) for p in pattern]
    paths = [p for p in paths if not Path(p).name.lower().startswith("best")]
    if not paths:
        raise InputError(f"no checkpoint files match {pattern!r} (best-so-far copies are ignored)")
    by_epoch: dict[int, Path] = {}
    for p in paths:
        e = checkpoint_epoch(p)
        if e in by_epoch:
            raise InputError(f"two checkpoints for epoch {e}: {by_epoch[e]} and {p}")
        by_epoch[e] = Path(p)
    return [by_epoch[e] for e in sorted(by_epoch)]


def labels(frames: Sequence) -> tuple[list[float], list[np.ndarray], bool]:
    """Energies per atom (eV/atom), forces (eV/Å; zeros if absent) and whether all forces exist."""
    energies, forces, have_forces = [], [], True
    for i, atoms in enumerate(frames):
        if "energy" not in atoms.info:
            raise StructureError("no DFT energy label (atoms.info['energy']); fine-tuning needs labels", frame=i)
        energies.append(float(atoms.info["energy"]) / len(atoms))
        f = atoms.arrays.get("forces")
        if f is None and atoms.calc is not None:
            with contextlib.suppress(Exception):
                f = atoms.calc.get_forces()
        if f is None:
            have_forces = False
            f = np.zeros((len(atoms), 3))
        forces.append(np.asarray(f, dtype=np.float64))
    return energies, forces, have_forces


def train_chgnet(
    frames: Sequence,
    out_dir: str | os.PathLike,
    *,
    model: str = "chgnet-0.3.0",
    epochs: int = 5,
    from_scratch: bool = False,
    learning_rate: float | None = None,
    batch_size: int = 8,
    seed: int = 0,
    targets: str | None = None,
    quiet: bool = True,
) -> list[Path]:
    """Train CHGNet on labelled ``frames`` with CHGNet's own trainer; one checkpoint per epoch.

    Starts from the pre-trained ``model`` (fine-tuning) or, with ``from_scratch``, from a random
    initialisation of the same architecture (the control). Writes ``epoch000.pth.tar`` (the starting
    point) and ``epoch{e:03d}.pth.tar`` after each epoch ``e`` into ``out_dir`` and returns them in
    epoch order. 10% of the frames are held out for CHGNet's validation loss. ``targets``: CHGNet's
    training targets (default ``"ef"`` when every frame has forces, else ``"e"``).
    """
    try:  # fail early, with a clear error, where chgnet's trainer cannot be imported
        import chgnet.trainer  # noqa: F401
        import pymatgen.io.ase  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ModelUnavailableError(f"fine-tuning needs chgnet (not importable: {exc})") from exc
    from mlipspace.models import get_spec

    if epochs < 1:
        raise InputError(f"epochs must be >= 1, got {epochs}")
    if len(frames) < 3:
        raise InputError(f"fine-tuning needs at least 3 labelled structures, got {len(frames)}")
    spec = get_spec(model)
    if spec.family != "chgnet":
        raise InputError(f"live fine-tuning supports CHGNet models only, got {model!r} ({spec.family})")
    energies, forces, have_forces = labels(frames)
    if targets is not None and ("f" in targets and not have_forces or not set(targets) <= set("efsm")):
        raise InputError(f"training targets {targets!r} need labels the frames lack (forces: {have_forces})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"model": model, "epochs": int(epochs), "from_scratch": bool(from_scratch), "lr": learning_rate,
                "batch_size": int(batch_size), "seed": int(seed), "targets": targets,
                "data": data_fingerprint(frames), "energies": [round(e, 9) for e in energies]}
    done = _finished(out, manifest, epochs)
    if done is not None:  # a finished series with the same inputs is reused (reruns do not retrain)
        return done
    _run_trainer(spec, frames, energies, forces, out, epochs=epochs, from_scratch=from_scratch,
                 learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                 targets=targets or ("ef" if have_forces else "e"), quiet=quiet)
    (out / "manifest.json").write_text(json.dumps(manifest) + "\n")
    return sorted_checkpoints(str(out / "epoch*.pth.tar"))


def _finished(out: Path, manifest: dict, epochs: int) -> list[Path] | None:
    """The checkpoints of a finished series trained with the same ``manifest``; else clear ``out``."""
    mpath = out / "manifest.json"
    if mpath.is_file() and (out / f"epoch{epochs:03d}.pth.tar").is_file():
        with contextlib.suppress(ValueError):
            if json.loads(mpath.read_text()) == manifest:
                return sorted_checkpoints(str(out / "epoch*.pth.tar"))
    for old in out.glob("epoch*.pth.tar"):
        old.unlink()
    return None


def _run_trainer(spec, frames, energies, forces, out: Path, *, epochs, from_scratch, learning_rate, batch_size,
                 seed, targets, quiet) -> None:
    """CHGNet's own ``Trainer`` from the pre-trained model (or a fresh one of its architecture),
    saving ``epoch000.pth.tar`` and one checkpoint after every epoch into ``out``."""
    import torch
    from chgnet.data.dataset import StructureData, get_train_val_test_loader
    from chgnet.model import CHGNet
    from chgnet.trainer import Trainer
    from pymatgen.io.ase import AseAtomsAdaptor

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    sink = io.StringIO() if quiet else None
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        parent = CHGNet.load(model_name=spec.options.get("version", "0.3.0"), use_device="cpu", verbose=False)
        net = CHGNet(**parent.model_args) if from_scratch else parent
        structures = [AseAtomsAdaptor.get_structure(a) for a in frames]
        data = StructureData(structures, energies, forces, shuffle=True)
        train_loader, val_loader = get_train_val_test_loader(
            data, batch_size=batch_size, train_ratio=0.9, val_ratio=0.1, return_test=False, pin_memory=False
        )

        class _TrajectoryTrainer(Trainer):
            """CHGNet's trainer, but keeping the checkpoint of every epoch (it deletes the previous one)."""

            def save_checkpoint(self, epoch, mae_error, save_dir):  # noqa: ARG002
                self.save(filename=os.path.join(save_dir, f"epoch{epoch + 1:03d}.pth.tar"))

        lr = learning_rate if learning_rate is not None else (1e-3 if from_scratch else 1e-4)
        trainer = _TrajectoryTrainer(
            model=net, targets=targets, optimizer="Adam", scheduler="CosLR",
            criterion="MSE", epochs=epochs, learning_rate=lr, use_device="cpu", print_freq=10**6,
            torch_seed=seed, data_seed=seed,
        )
        trainer.save(filename=str(out / "epoch000.pth.tar"))
        trainer.train(train_loader, val_loader, None, save_dir=str(out), train_composition_model=from_scratch)
