"""One virtual environment per checkpoint family, made from a pinned recipe.

The packages of MACE, PET, UMA, DPA-3, MatterSim and ORB cannot share one Python environment
(mace-torch pins e3nn 0.4.4, deepmd-kit's ops are built for another torch, fairchem pulls ~2 GB),
so each family gets a virtualenv of its own, made by :func:`create` from the JSON recipe
``mlipspace/envs/recipes/<family>.json``. Extraction for that family then runs in a worker
subprocess of the environment (:mod:`mlipspace.models.remote`) and the main process never imports
the family's package.

A recipe is ``{"family", "import", "distribution", "description", "spec", "steps", "uninstall"?,
"env"?, "notes"?}``; each item of ``steps`` is the argument list of one ``pip install`` call, run
in order (torch first: the CPU build lies on local disk, a bare ``pip install`` of a family package
would pull a multi-GB CUDA build). mlipspace itself is *not* installed into the environment: the
worker gets the running mlipspace's source on ``PYTHONPATH``, so both sides always run the same
code; an environment only needs numpy, ase and the family's package.

An environment is made on the first use of one of its family's specs (:func:`ensure`, called by
:func:`mlipspace.models.load`; ``create_env=False`` refuses) or ahead of time by ``mlipspace env
create``. Environments live in ``$MLIPSPACE_ENVS/<family>`` (default ``~/.cache/mlipspace/envs``). An
environment is complete only once its marker file ``mlipspace-env.json`` is written, last; an
interrupted :func:`create` leaves no marker and the next call starts that environment afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from mlipspace.errors import MlipspaceError

MARKER = "mlipspace-env.json"
ENVS_VAR = "MLIPSPACE_ENVS"
RECIPES_VAR = "MLIPSPACE_RECIPES"
#: what the worker imports besides the family package (already-installed versions are kept)
WORKER_NEEDS = ("numpy", "scipy", "ase>=3.23")
_REQUIRED_KEYS = ("family", "import", "distribution", "description", "spec", "steps")


class EnvError(MlipspaceError):
    """An environment cannot be created or used (names the family, the step and pip's last lines)."""


def _recipe_dirs() -> list:
    dirs = [resources.files("mlipspace.envs") / "recipes"]
    extra = os.environ.get(RECIPES_VAR)
    if extra:
        dirs += [Path(p) for p in extra.split(os.pathsep) if p]
    return dirs


def families() -> list[str]:
    """Names of the families that have a recipe (bundled, plus ``$MLIPSPACE_RECIPES``), sorted."""
    names = set()
    for root in _recipe_dirs():
        if root.is_dir():
            names.update(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))
    return sorted(names)


def recipe(family: str) -> dict:
    """The validated recipe of ``family`` (unknown family -> error listing the known ones).

    Bundled recipes live in ``mlipspace/envs/recipes``; folders listed in ``$MLIPSPACE_RECIPES``
    (``os.pathsep``-separated) add or override recipes, e.g. for a fork of a family's package. A
    recipe may name the adapter module with ``"module"`` (default: the family name).
    """
    path = next((d / f"{family}.json" for d in reversed(_recipe_dirs()) if (d / f"{family}.json").is_file()),
                _recipe_dirs()[0] / f"{family}.json")
    if not path.is_file():
        raise EnvError(f"no environment recipe for family {family!r}; known: {', '.join(families())}")
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EnvError(f"recipe {path}: invalid JSON ({exc})") from None
    missing = [k for k in _REQUIRED_KEYS if k not in rec]
    if missing:
        raise EnvError(f"recipe {path}: missing key(s) {', '.join(missing)}")
    if rec["family"] != family:
        raise EnvError(f"recipe {path}: family is {rec['family']!r}, expected {family!r}")
    steps = rec["steps"]
    if not (isinstance(steps, list) and steps and all(isinstance(s, list) and s for s in steps)):
        raise EnvError(f"recipe {path}: 'steps' must be a non-empty list of pip argument lists")
    if not any(a.startswith("torch==") for a in steps[0]):
        raise EnvError(f"recipe {path}: the first step must pin torch (the CPU build on local disk)")
    return rec


def envs_root() -> Path:
    """Where environments live: ``$MLIPSPACE_ENVS``, else ``$XDG_CACHE_HOME/mlipspace/envs``."""
    if os.environ.get(ENVS_VAR):
        return Path(os.environ[ENVS_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mlipspace" / "envs"


def env_dir(family: str, path: str | os.PathLike | None = None) -> Path:
    """The directory of ``family``'s environment (``path`` overrides the default location)."""
    return Path(path).expanduser().absolute() if path is not None else envs_root() / family


def _python_of(directory: Path) -> Path:
    return directory / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def info(family: str, path: str | os.PathLike | None = None) -> dict | None:
    """The marker of a complete environment (family, python, versions, created), else ``None``."""
    d = env_dir(family, path)
    marker = d / MARKER
    if not marker.is_file() or not _python_of(d).exists():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def outdated(family: str, path: str | os.PathLike | None = None) -> bool:
    """``True`` if ``family``'s environment exists but was made from another version of its recipe."""
    marker = info(family, path)
    return marker is not None and marker.get("recipe") != recipe(family)


def python_for(family: str, path: str | os.PathLike | None = None) -> Path | None:
    """The interpreter of ``family``'s complete environment, or ``None`` when there is none."""
    return _python_of(env_dir(family, path)) if info(family, path) is not None else None


def resolve_python(env: str | os.PathLike, family: str | None = None) -> Path:
    """An interpreter from what a user typed after ``--env``/``--python``.

    ``env`` may be a python executable, an environment directory or a family name (its default
    environment). Raises :class:`EnvError` when nothing usable is there.
    """
    p = Path(env).expanduser()
    if p.is_file():
        return p.absolute()
    if p.is_dir():
        py = _python_of(p)
        if py.exists():
            return py.absolute()
        raise EnvError(f"{p} is a directory but has no {py.relative_to(p)}; not a virtual environment")
    name = str(env)
    if name in families():
        py = python_for(name)
        if py is None:
            raise EnvError(f"no environment for family {name!r} at {env_dir(name)}; "
                           f"create it with: mlipspace env create {name}")
        return py
    raise EnvError(f"--env {env!r} is neither a python executable, an environment directory nor a "
                   f"family ({', '.join(families())})")


def _run(cmd: list[str], what: str, log, env=None) -> None:
    """Run ``cmd``; on failure raise naming ``what`` with the last lines of its output."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, check=False)
    if log is not None:
        log.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n")
        log.flush()
    if proc.returncode != 0:
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip() and "is ignored: it is neither" not in ln]
        tail = "\n".join(lines[-15:])
        where = f" (full log: {log.name})" if log is not None else ""
        raise EnvError(f"{what} failed (exit {proc.returncode}){where}: {' '.join(cmd)}\n{tail}")


@contextlib.contextmanager
def _creation_lock(d: Path):
    """Hold an exclusive lock on ``d``'s creation (``<d>.lock`` beside it): two processes that need the
    same environment at once (Dask workers, two runs) make it once; the second then finds it."""
    d.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no cross-process lock
        yield
        return
    with open(d.parent / f".{d.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def create(family: str, path: str | os.PathLike | None = None, *, force: bool = False,
           base_python: str | None = None, on_step: Callable[[str], None] | None = None) -> Path:
    """Make ``family``'s environment from its recipe; returns the environment directory.

    Steps: ``python -m venv``, one ``pip install`` per recipe step, the
    packages the worker needs (:data:`WORKER_NEEDS`, kept at their installed versions), ``pip uninstall`` of the
    recipe's ``uninstall`` list, an import check of numpy, scipy, ase and the family's package, then the
    marker (written last: an interrupted run leaves an incomplete environment that the next call
    removes and redoes). A complete environment made from the same recipe is kept unless ``force``;
    one made from an older recipe is rebuilt. The full pip output is
    logged to ``<env>/mlipspace-env.log``. Concurrent calls for one environment make it once.
    """
    rec = recipe(family)
    with _creation_lock(env_dir(family, path)):
        return _create(family, rec, path, force, base_python, on_step)


def _create(family: str, rec: dict, path, force: bool, base_python, on_step) -> Path:
    """The body of :func:`create`, run under the environment's creation lock."""
    d = env_dir(family, path)
    say = on_step or (lambda msg: None)
    current = info(family, path)
    if current is not None and not force:
        if current.get("recipe") == rec:
            say(f"{family}: environment exists at {d} (use --force to rebuild)")
            return d
        say(f"{family}: the recipe changed since {d} was made; rebuilding")
    if d.exists():
        if any(d.iterdir()) and not (d / "pyvenv.cfg").exists():
            raise EnvError(f"{d} exists and is not a virtual environment; refusing to delete it")
        shutil.rmtree(d)
    d.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = base_python or getattr(sys, "_base_executable", None) or sys.executable
    n = len(rec["steps"]) + 3 + bool(rec.get("uninstall"))  # venv, steps, worker packages, (uninstall), check
    say(f"{family} [1/{n}]: python -m venv {d}")
    _run([base, "-m", "venv", str(d)], f"{family}: creating the virtual environment", None)
    py = str(_python_of(d))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    with open(d / "mlipspace-env.log", "w") as log:
        for i, step in enumerate(rec["steps"], 1):
            say(f"{family} [{i + 1}/{n}]: pip install {' '.join(step)}")
            _run([py, "-m", "pip", "install", *step], f"{family}: recipe step {i}", log, env)
        say(f"{family} [{len(rec['steps']) + 2}/{n}]: pip install {' '.join(WORKER_NEEDS)} (what the worker imports)")
        _run([py, "-m", "pip", "install", *WORKER_NEEDS], f"{family}: worker packages", log, env)
        if rec.get("uninstall"):
            say(f"{family} [{n - 1}/{n}]: pip uninstall {' '.join(rec['uninstall'])}")
            _run([py, "-m", "pip", "uninstall", "-y", *rec["uninstall"]], f"{family}: uninstall step", log, env)
        say(f"{family} [{n}/{n}]: checking imports")
        check_env = {**env, **{k: str(v) for k, v in rec.get("env", {}).items()}}
        _run([py, "-c", f"import numpy, scipy, ase, {rec['import']}"], f"{family}: import check", log, check_env)
        freeze = subprocess.run([py, "-m", "pip", "freeze"], stdout=subprocess.PIPE, text=True, env=env, check=False).stdout
    versions = dict(line.split("==", 1) for line in freeze.splitlines() if "==" in line)
    marker = {
        "family": family,
        "python": py,
        "distribution": rec["distribution"],
        "version": versions.get(rec["distribution"]) or versions.get(rec["distribution"].replace("-", "_")),
        "torch": versions.get("torch"),
        "packages": versions,
        "recipe": rec,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    tmp = d / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, d / MARKER)
    say(f"{family}: ready in {marker['seconds']:.0f} s ({rec['distribution']} {marker['version']})")
    return d


def _say_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure(family: str, *, create_env: bool = True, say: Callable[[str], None] | None = None) -> Path:
    """The interpreter of ``family``'s environment, made first when there is none (first use of a spec).

    What happens is told through ``say`` (default: lines on stderr): a one-line notice, then each
    step of :func:`create`. ``create_env=False`` (offline or cluster nodes) raises instead of
    creating. A failure raises :class:`EnvError` naming the family and the log file.
    """
    py = python_for(family)
    if py is not None:
        return py
    d = env_dir(family)
    if not create_env:
        raise EnvError(f"no environment for family {family!r} at {d} and automatic creation is off; "
                       f"create it with: mlipspace env create {family}")
    say = say or _say_stderr
    say(f"environment for {family} not found: creating it (a few minutes, once) in {d}")
    t0 = time.perf_counter()
    try:
        create(family, on_step=lambda msg: say(f"  [{time.perf_counter() - t0:4.0f} s] {msg}"))
    except EnvError as exc:
        raise EnvError(f"could not create the environment for family {family!r} in {d} "
                       f"(log: {d / 'mlipspace-env.log'}): {exc}") from None
    py = python_for(family)
    if py is None:  # create() returned without a marker: should not happen, say so plainly
        raise EnvError(f"the environment for family {family!r} in {d} is incomplete after creation")
    return py


def worker_env(family: str | None) -> dict[str, str]:
    """Extra environment variables the family's recipe asks for in the worker (may be empty)."""
    if family is None or family not in families():
        return {}
    return {k: str(v) for k, v in recipe(family).get("env", {}).items()}


__all__ = [
    "MARKER",
    "EnvError",
    "create",
    "ensure",
    "env_dir",
    "envs_root",
    "families",
    "info",
    "python_for",
    "recipe",
    "resolve_python",
    "worker_env",
]
