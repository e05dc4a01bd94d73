"""Fine-tuning bias: does a fine-tuned model stay close to the model it started from?

Two analyses:

* :func:`finetune_bundled` — CHGNet-r2SCAN (transfer-learned from CHGNet 0.3.0 on r2SCAN data)
  against its parent, against CHGNet 0.2.0 (same architecture, trained independently) and against
  DIEP (trained from scratch on r2SCAN data). The study: fine-tuned models stay within GFRE
  0.03–0.07 of their parent; a model trained from scratch on the same data sits 0.13–0.20 away.
* :func:`finetune_track` — live: fine-tune CHGNet on a labelled dataset with CHGNet's own trainer,
  keep a checkpoint after *every* epoch (the training trajectory, not "best so far"), train the same
  architecture from random initialisation as a control, and compute the FRE of every checkpoint
  against the pre-trained model and against the control at the same epoch.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import pickle
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mlipspace.errors import InputError, ModelUnavailableError, StructureError
from mlipspace.experiments._common import atom_splits
from mlipspace.experiments.cross_model import check_features, pair_errors
from mlipspace.records import record, select

#: (fine-tuned model, [(other model, relation)]): the comparison the bundled models allow.
BUNDLED_FINETUNE = (
    "chgnet-r2scan",
    (
        ("chgnet-0.3.0", "parent (pre-trained)"),
        ("chgnet-0.2.0", "same architecture, trained independently"),
        ("diep-r2scan", "trained from scratch on r2SCAN data"),
    ),
)


def finetune_bundled(
    features: Mapping[str, np.ndarray],
    rows: Mapping[str, np.ndarray],
    *,
    metrics: Sequence[str] = ("gfre", "lfre"),
    seeds: Sequence[int] = (0, 1, 2),
    n_test: int | None = None,
    layer: str = "last",
    dataset: str = "",
    fingerprints: Mapping[str, Mapping] | None = None,
    lfre_max_test: int | None = 500,
    spec=BUNDLED_FINETUNE,
) -> list[dict]:
    """Records (``analysis="finetune"``, field ``relation``) of the fine-tuned model vs each reference.

    Both directions per reference; references not in ``features`` are left out; empty if the
    fine-tuned model itself is missing.
    """
    tuned, refs = spec
    refs = [(m, rel) for m, rel in refs if m in features]
    if tuned not in features or not refs:
        return []
    used = [tuned] + [m for m, _ in refs]
    sub = {m: features[m] for m in used}
    check_features(sub, rows)
    splits = atom_splits(rows, seeds, n_test)
    pairs, extra = [], {}
    for ref, rel in refs:
        for s, t in ((tuned, ref), (ref, tuned)):
            pairs.append((s, t))
            extra[(s, t)] = {"relation": rel}
    return pair_errors(
        sub, pairs, splits, groups=rows["frame"], metrics=metrics, analysis="finetune", level="atom", layer=layer,
        dataset=dataset, fingerprints=fingerprints, lfre_max_test=lfre_max_test, extra=extra,
    )


def finetune_summary(records: Sequence[Mapping], metric: str = "gfre") -> dict[str, float]:
    """``{relation: mean of both directions}`` of the bundled fine-tuning records."""
    out: dict[str, list[float]] = {}
    for r in select(records, analysis="finetune", metric=metric):
        out.setdefault(r["relation"], []).append(r["value"])
    return {k: float(np.mean(v)) for k, v in out.items()}


# --- live fine-tuning ---------------------------------------------------------------------------------

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


def _labels(frames: Sequence) -> tuple[list[float], list[np.ndarray], bool]:
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
    try:
        import torch
        from chgnet.data.dataset import StructureData, get_train_val_test_loader
        from chgnet.model import CHGNet
        from chgnet.trainer import Trainer
        from pymatgen.io.ase import AseAtomsAdaptor
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
    energies, forces, have_forces = _labels(frames)
    if targets is not None and ("f" in targets and not have_forces or not set(targets) <= set("efsm")):
        raise InputError(f"training targets {targets!r} need labels the frames lack (forces: {have_forces})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # a finished series with the same inputs is reused (reruns of the study do not retrain)
    from mlipspace.data import fingerprint as data_fingerprint

    manifest = {"model": model, "epochs": int(epochs), "from_scratch": bool(from_scratch), "lr": learning_rate,
                "batch_size": int(batch_size), "seed": int(seed), "targets": targets,
                "data": data_fingerprint(frames), "energies": [round(e, 9) for e in energies]}
    mpath = out / "manifest.json"
    if mpath.is_file() and (out / f"epoch{epochs:03d}.pth.tar").is_file():
        import json

        try:
            if json.loads(mpath.read_text()) == manifest:
                return sorted_checkpoints(str(out / "epoch*.pth.tar"))
        except ValueError:
            pass
    for old in out.glob("epoch*.pth.tar"):
        old.unlink()

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
            model=net, targets=targets or ("ef" if have_forces else "e"), optimizer="Adam", scheduler="CosLR",
            criterion="MSE", epochs=epochs, learning_rate=lr, use_device="cpu", print_freq=10**6,
            torch_seed=seed, data_seed=seed,
        )
        trainer.save(filename=str(out / "epoch000.pth.tar"))
        trainer.train(train_loader, val_loader, None, save_dir=str(out), train_composition_model=from_scratch)
    import json

    mpath.write_text(json.dumps(manifest) + "\n")
    return sorted_checkpoints(str(out / "epoch*.pth.tar"))


def track(
    frames: Sequence,
    out_dir: str | os.PathLike,
    *,
    model: str = "chgnet-0.3.0",
    epochs: int = 5,
    control: bool = True,
    checkpoints: str | Sequence | None = None,
    control_checkpoints: str | Sequence | None = None,
    eval_frames: Sequence | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    metrics: Sequence[str] = ("gfre",),
    learning_rate: float | None = None,
    batch_size: int = 8,
    targets: str | None = None,
    dataset: str = "",
    log=None,
) -> tuple[list[dict], dict]:
    """The whole live experiment: train (or take) the checkpoint series, then :func:`finetune_track`.

    Trains into ``out_dir/finetune`` and ``out_dir/scratch`` unless ``checkpoints`` (a glob or paths)
    are given; compares on ``eval_frames`` (default: ``frames``). Returns ``(records, meta)``.
    """
    from mlipspace.models import load

    say = log or (lambda msg: None)
    if checkpoints:
        ft = sorted_checkpoints(checkpoints)
    else:
        say(f"fine-tuning {model} on {len(frames)} structures for {epochs} epochs")
        ft = train_chgnet(frames, Path(out_dir) / "finetune", model=model, epochs=epochs,
                          learning_rate=learning_rate, batch_size=batch_size, targets=targets)
    ctl = None
    if control_checkpoints:
        ctl = sorted_checkpoints(control_checkpoints)
    elif control and not checkpoints:
        say(f"control: the same architecture from random initialisation, {epochs} epochs")
        ctl = train_chgnet(frames, Path(out_dir) / "scratch", model=model, epochs=epochs, from_scratch=True,
                           learning_rate=learning_rate, batch_size=batch_size, targets=targets)
    ev = list(eval_frames) if eval_frames is not None else list(frames)
    say(f"features of {len(ft) + len(ctl or [])} checkpoints on {len(ev)} structures")
    ref = load(model, device="cpu")
    reference = ref.extract(ev, layers=("last",)).layers["last"]
    recs = finetune_track(ev, ft, reference, control=ctl, model=model, metrics=metrics, seeds=seeds,
                          dataset=dataset)
    meta = {"model": model, "fingerprint": ref.fingerprint, "epochs": len(ft) - 1,
            "checkpoints": [p.name for p in ft], "control": [p.name for p in ctl] if ctl else [],
            "n_eval_frames": len(ev)}
    return recs, meta


def checkpoint_features(
    paths: Sequence[str | os.PathLike], frames: Sequence, *, layer: str = "last", progress=None
) -> dict[str, np.ndarray]:
    """``{str(path): (n_atoms, d) features of layer}`` of each CHGNet checkpoint on ``frames``."""
    out = {}
    for p in paths:
        out[str(p)] = np.asarray(_chgnet_checkpoint_extractor(p).extract(frames, layers=(layer,)).layers[layer])
        if progress is not None:
            progress()
    return out


def _chgnet_checkpoint_extractor(path):
    """An extractor for a CHGNet checkpoint file (``Trainer.save`` format), reusing the CHGNet adapter.

    The adapter loads only the bundled versions by name, so the model is built here with
    ``CHGNet.from_file`` and handed to the adapter's :class:`CHGNetExtractor` (same hooks, same
    graph conversion); the fingerprint names the checkpoint file and its sha256.
    """
    from mlipspace.models import chgnet as adapter

    if hasattr(adapter, "from_checkpoint"):
        return adapter.from_checkpoint(str(path), device="cpu")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        from chgnet.model import CHGNet

        with contextlib.redirect_stdout(io.StringIO()):
            model = CHGNet.from_file(str(path))
    except (KeyError, RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise ModelUnavailableError(f"{path}: not a CHGNet checkpoint ({type(exc).__name__}: {exc})") from None
    version = str(model.model_args.get("version") or "0.3.0")
    ext = adapter.CHGNetExtractor(f"chgnet:{path.name}", model, version if version in adapter.VERSIONS else "0.3.0",
                                  "cpu")
    from mlipspace.models import make_fingerprint

    ext.fingerprint = make_fingerprint(ext.name, "chgnet", path, "chgnet", head=None, version=version)
    return ext


def finetune_track(
    frames: Sequence,
    checkpoints: Sequence[str | os.PathLike],
    reference: np.ndarray,
    *,
    control: Sequence[str | os.PathLike] | None = None,
    rows: Mapping[str, np.ndarray] | None = None,
    model: str = "chgnet-0.3.0",
    metrics: Sequence[str] = ("gfre",),
    seeds: Sequence[int] = (0, 1, 2),
    n_test: int | None = None,
    layer: str = "last",
    dataset: str = "",
    lfre_max_test: int | None = 500,
    progress=None,
) -> list[dict]:
    """FRE of every checkpoint vs the pre-trained ``reference`` features (and vs the control).

    ``checkpoints`` and ``control`` are put in epoch order (file names); ``reference`` are the
    pre-trained model's ``layer`` features on ``frames``. Records have ``analysis="finetune-track"``,
    ``run`` ("finetune"/"scratch"), ``epoch`` and ``checkpoint`` (file name), in both directions:
    ``source=<run>``/``target=<model>`` and the reverse; with a control also finetune <-> scratch at
    equal epochs.
    """
    from mlipspace.data.rows import row_table

    rows = row_table(frames) if rows is None else rows
    runs = {"finetune": sorted_checkpoints(list(map(str, checkpoints)))}
    if control:
        runs["scratch"] = sorted_checkpoints(list(map(str, control)))
    feats = {run: checkpoint_features(paths, frames, layer=layer, progress=progress) for run, paths in runs.items()}
    splits = atom_splits(rows, seeds, n_test)
    out = []
    for run, paths in runs.items():
        for p in paths:
            e = checkpoint_epoch(p)
            X = feats[run][str(p)]
            check_features({f"{run} epoch {e}": X, model: reference}, rows)
            pair = {run: X, model: reference}
            extra = {(a, b): {"run": run, "epoch": e, "checkpoint": p.name} for a, b in ((run, model), (model, run))}
            out += pair_errors(
                pair, [(run, model), (model, run)], splits, groups=rows["frame"], metrics=metrics, analysis="finetune-track",
                layer=layer, dataset=dataset, lfre_max_test=lfre_max_test, extra=extra,
            )
    if control:
        scratch = {checkpoint_epoch(p): p for p in runs["scratch"]}
        for p in runs["finetune"]:
            e = checkpoint_epoch(p)
            if e not in scratch:
                continue
            pair = {"finetune": feats["finetune"][str(p)], "scratch": feats["scratch"][str(scratch[e])]}
            extra = {k: {"run": "finetune-vs-scratch", "epoch": e, "checkpoint": p.name}
                     for k in (("finetune", "scratch"), ("scratch", "finetune"))}
            out += pair_errors(
                pair, [("finetune", "scratch"), ("scratch", "finetune")], splits, groups=rows["frame"], metrics=metrics,
                analysis="finetune-track", layer=layer, dataset=dataset, lfre_max_test=lfre_max_test,
                extra=extra,
            )
    return out
