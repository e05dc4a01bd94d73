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
import io
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mlipspace.errors import InputError, ModelUnavailableError
from mlipspace.experiments._common import atom_splits
from mlipspace.experiments.cross_model import check_features, pair_errors
from mlipspace.models.chgnet_train import (  # noqa: F401  (labels: re-exported for callers of this module)
    checkpoint_epoch,
    labels,
    sorted_checkpoints,
    train_chgnet,
)
from mlipspace.records import select

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
