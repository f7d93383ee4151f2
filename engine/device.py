"""The one place that decides where tensors live: CUDA when present, CPU otherwise."""

from __future__ import annotations

import functools
import os

import torch

from engine.errors import SettingsError
from engine.settings import get_settings


def resolve_device(requested: str | None = None) -> torch.device:
    """Turn 'auto' / 'cpu' / 'cuda' (or None for the configured setting) into a torch.device."""
    name = (requested or get_settings().device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SettingsError(f"device {name!r} requested but no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise SettingsError(f"unknown device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


@functools.cache
def default_device() -> torch.device:
    """The device chosen once per process from MERGESCOPE_DEVICE."""
    return resolve_device()


def model_memory_budget() -> int:
    """Bytes of live model weights to allow: MERGESCOPE_MODEL_MEMORY_GB, else half the memory of
    the device models live on (the other half for activations, captures and the rest)."""
    configured = get_settings().model_memory_bytes
    if configured is not None:
        return configured
    device = default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
