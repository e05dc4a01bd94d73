"""Per-atom latent features from uMLIPs: one adapter per family behind one interface.

``load(name)`` returns an :class:`Extractor`; ``names()`` lists the registry.
"""

from mlipspace.models.base import Extractor, FeatureSet, check_finite, make_fingerprint
from mlipspace.models.registry import ModelSpec, get_spec, load, names, register, why_unavailable

__all__ = ["Extractor", "FeatureSet", "check_finite", "make_fingerprint", "ModelSpec", "get_spec", "load", "names", "register", "why_unavailable"]
