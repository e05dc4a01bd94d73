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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of fine-tuning and of from-scratch training on 5 Si structures (energies only)."""
    from mlipspace.data import read
    from mlipspace.experiments import finetune

    tmp = tmp_path_factory.mktemp("ft")
    frames = read(str(SI))[:5]
    ft = finetune.train_chgnet(frames, tmp / "ft", epochs=1, targets="e", batch_size=4)
    ctl = finetune.train_chgnet(frames, tmp / "scratch", epochs=1, targets="e", batch_size=4, from_scratch=True)
    return frames, ft, ctl, tmp


def test_finetune_track_trajectory_against_parent_and_control(trained):
    from mlipspace.experiments import finetune
    from mlipspace.models import load

    from mlipspace.data import read

    _, ft, ctl, _ = trained
    assert [p.name for p in ft] == ["epoch000.pth.tar", "epoch001.pth.tar"]
    assert [p.name for p in ctl] == ["epoch000.pth.tar", "epoch001.pth.tar"]
    frames = read(str(SI))[:44]  # evaluated on 44 structures: >= 10 test structures (the regime rule)
    ref = load("chgnet-0.3.0", device="cpu").extract(frames, layers=("last",)).layers["last"]
    recs = finetune.finetune_track(frames, ft, ref, control=ctl, seeds=(0,))
    by = {(r["run"], r["epoch"], r["source"]): r["value"] for r in recs}
    # the fine-tuning run starts AT the pre-trained model: its epoch-0 features are identical
    assert by[("finetune", 0, "finetune")] == pytest.approx(0.0, abs=1e-6)
    # one epoch at a small learning rate stays close; a random initialisation is far away
    assert by[("finetune", 1, "finetune")] < 0.2
    assert by[("scratch", 1, "scratch")] > by[("finetune", 1, "finetune")]
    assert {r["run"] for r in recs} == {"finetune", "scratch", "finetune-vs-scratch"}
    assert all(np.isfinite(r["value"]) and r["ci_low"] <= r["value"] <= r["ci_high"] for r in recs)


def test_finetune_track_command_with_existing_checkpoints(trained, tmp_path):
    import json

    from typer.testing import CliRunner

    from mlipspace.cli import app

    _, _, _, tmp = trained
    result = CliRunner().invoke(app, [
        "finetune-track", str(SI), "--max-structures", "44", "--checkpoints", str(tmp / "ft" / "*.pth.tar"),
        "--control", str(tmp / "scratch" / "epoch*.pth.tar"), "--seeds", "1", "--out", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    res = json.loads((tmp_path / "results.json").read_text())
    assert {r["epoch"] for r in res["records"]} == {0, 1}
    assert (tmp_path / "index.html").is_file()
    assert "finetune_track_gfre.png" in (tmp_path / "index.html").read_text()
