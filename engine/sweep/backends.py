"""A sweep backend by name: the one place that knows every implementation (Ray imported only when asked for)."""

from __future__ import annotations

from engine.errors import SettingsError
from engine.settings import BACKENDS, get_settings
from engine.sweep.backend import Backend, LocalBackend


def open_backend(name: str | None = None, address: str | None = None) -> Backend:
    """The backend `name` (default MERGESCOPE_BACKEND); for ray, `address` (default
    MERGESCOPE_RAY_ADDRESS, else a local Ray started now and shut down by close())."""
    settings = get_settings()
    name = (name or settings.backend).lower()
    if name not in BACKENDS:
        raise SettingsError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "local":
        return LocalBackend()
    try:
        from engine.sweep.ray_backend import RayBackend
    except ModuleNotFoundError as err:
        if err.name != "ray":
            raise
        raise SettingsError(
            "backend 'ray' needs Ray, which is not installed: pip install -r requirements-ray.txt"
        ) from None
    return RayBackend(address or settings.ray_address)
