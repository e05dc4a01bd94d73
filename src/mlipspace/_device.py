"""Choosing the torch device: ``"auto"`` means CUDA when a GPU is visible, else the CPU."""

from __future__ import annotations


def resolve_device(device: str = "auto") -> str:
    """Return a concrete torch device string for ``device`` ("auto", "cpu", "cuda", "cuda:1", ...)."""
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"
