"""Live fine-tuning: CHGNet's trainer, one checkpoint per epoch, FRE against parent and control (tiny)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SI = SHARED / "mlearn" / "Si_training.json"

pytestmark = [
    pytest.mark.models,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("chgnet") is None, reason="chgnet not installed"),
    pytest.mark.skipif(not SI.is_file(), reason=f"{SI} not available (../shared/data is absent)"),
]


def test_finetune_track_trajectory_against_parent_and_control(tmp_path):
    from mlipspace.data import read
    from mlipspace.experiments import finetune
    from mlipspace.models import load

    frames = read(str(SI))[:5]
    ft = finetune.train_chgnet(frames, tmp_path / "ft", epochs=1, targets="e", batch_size=4)
    ctl = finetune.train_chgnet(frames, tmp_path / "scratch", epochs=1, targets="e", batch_size=4,
                                from_scratch=True)
    assert [p.name for p in ft] == ["epoch000.pth.tar", "epoch001.pth.tar"]
    assert [p.name for p in ctl] == ["epoch000.pth.tar", "epoch001.pth.tar"]
    ref = load("chgnet-0.3.0", device="cpu").extract(frames, layers=("last",)).layers["last"]
    recs = finetune.finetune_track(frames, ft, ref, control=ctl, seeds=(0,))
    by = {(r["run"], r["epoch"], r["source"]): r["value"] for r in recs}
    # the fine-tuning run starts AT the pre-trained model: its epoch-0 features are identical
    assert by[("finetune", 0, "finetune")] == pytest.approx(0.0, abs=1e-6)
    # one epoch at a small learning rate stays close; a random initialisation is far away
    assert by[("finetune", 1, "finetune")] < 0.2
    assert by[("scratch", 1, "scratch")] > by[("finetune", 1, "finetune")]
    assert {r["run"] for r in recs} == {"finetune", "scratch", "finetune-vs-scratch"}
    assert all(np.isfinite(r["value"]) for r in recs)
