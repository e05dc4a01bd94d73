"""Helpers for the checkpoint-family tests (tests/test_family_*.py): environments, checkpoints, workers.

Each family's tests build a small random-initialised model with the family's own constructors in the
family's environment (``tests/families/build_<family>.py OUTDIR``, which prints a JSON line whose
``spec`` is the user's spec string), then load it the user's way: ``mlipspace.models.load(spec)``,
which runs it in a worker of that environment. Without the environment the tests skip, unless the
family is listed in ``$MLIPSPACE_REQUIRE_ENVS`` (comma-separated, as CI sets it): then they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILDERS = ROOT / "tests" / "families"
_BUILT: dict[str, dict] = {}


def required() -> set[str]:
    """Families whose tests must run (``$MLIPSPACE_REQUIRE_ENVS``)."""
    return {f.strip() for f in os.environ.get("MLIPSPACE_REQUIRE_ENVS", "").split(",") if f.strip()}


def env_python(family: str) -> Path:
    """The python of ``family``'s environment; skips (or fails, when required) without one."""
    from mlipspace import envs

    py = envs.python_for(family)
    if py is None:
        msg = f"no {family} environment at {envs.env_dir(family)} (mlipspace env create {family})"
        if family in required():
            pytest.fail(msg + f"; required by MLIPSPACE_REQUIRE_ENVS={os.environ['MLIPSPACE_REQUIRE_ENVS']}")
        pytest.skip(msg)
    return py


def build_checkpoint(family: str, outdir: Path, timeout: float = 900) -> dict:
    """Run ``tests/families/build_<family>.py OUTDIR`` in the family's environment (once per session).

    Returns the JSON of its last stdout line (with at least ``"spec"``). The builder runs with
    this checkout's ``src`` on ``PYTHONPATH`` and the recipe's environment variables.
    """
    if family in _BUILT:
        return _BUILT[family]
    from mlipspace.envs import worker_env

    py = env_python(family)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(worker_env(family))
    env["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.run([str(py), str(BUILDERS / f"build_{family}.py"), str(outdir)], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=outdir, check=False)
    if proc.returncode != 0:
        pytest.fail(f"build_{family}.py failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}\n{proc.stdout[-1000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    try:
        out = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"build_{family}.py printed no JSON line last:\n{proc.stdout[-2000:]}")
    assert "spec" in out, out
    _BUILT[family] = out
    return out


def remote(spec: str, device: str = "cpu"):
    """Load ``spec`` the user's way (``mlipspace.models.load``); through a worker unless importable here."""
    from mlipspace.models import load

    return load(spec, device=device)


def permuted(atoms, seed: int = 0):
    """A copy of ``atoms`` with its atoms in a random order, and that order."""
    perm = np.random.default_rng(seed).permutation(len(atoms))
    return atoms[perm], perm


def check_batch_equals_one_by_one(model, frames, atol: float = 1e-5) -> None:
    """Every layer of ``frames`` extracted in batches of 4 equals one frame at a time (to ``atol``)."""
    together = model.extract(frames, layers="all", batch_size=4)
    single = [model.extract([a], layers="all") for a in frames]
    for layer in model.layers:
        got = np.concatenate([s.layers[layer] for s in single])
        np.testing.assert_allclose(got, together.layers[layer], rtol=0, atol=atol, err_msg=layer)
    np.testing.assert_array_equal(together.rows["frame"], np.repeat(np.arange(len(frames)), [len(a) for a in frames]))


def check_permutation_permutes_rows(model, frames, which=(0, 1, 3), atol: float = 1e-5) -> None:
    """Shuffling the atoms of frame ``k`` (for ``k`` in ``which``) shuffles its rows the same way."""
    from modelkit import frame_slices

    base = model.extract(frames, layers="all")
    slices = frame_slices(frames)
    for k in which:
        shuffled, perm = permuted(frames[k], seed=k)
        got = model.extract([shuffled], layers="all")
        for layer in model.layers:
            np.testing.assert_allclose(got.layers[layer], base.layers[layer][slices[k]][perm], rtol=0, atol=atol,
                                       err_msg=f"frame {k}, {layer}")
