"""Settings from environment variables, read once and validated.

| variable                   | default                      | meaning                                   |
|----------------------------|------------------------------|-------------------------------------------|
| MERGESCOPE_MODEL_ROOTS     | <repo>/zoo/models            | folders holding checkpoints (os.pathsep)  |
| MERGESCOPE_CACHE_DIR       | <repo>/.mergescope-cache     | content-addressed cache folder (and       |
|                            |                              | compiled kernels in its kernels/)         |
| MERGESCOPE_CACHE_MAX_GB    | 20                           | cache size cap before LRU eviction        |
| MERGESCOPE_MODEL_MEMORY_GB | (half the device's memory)   | live models' weights before LRU dropping  |
| MERGESCOPE_DEVICE          | auto                         | auto, cpu or cuda                         |
| MERGESCOPE_DATA_DIR        | <repo>/zoo/data              | parallel data the dashboard evaluates on  |
| MERGESCOPE_MAX_NEW_TOKENS  | 512 (48 on the zoo's data)   | cap on generated tokens per sentence      |
| MERGESCOPE_BACKEND         | local                        | where sweep jobs run: local or ray        |
| MERGESCOPE_RAY_ADDRESS     | (local Ray, started per run) | Ray cluster for backend ray               |
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.errors import SettingsError

REPO_ROOT = Path(__file__).resolve().parent.parent
ZOO_DIR = REPO_ROOT / "zoo"
# Token cap for the demo zoo's translations, set for speed: its longest dev/devtest reference is
# 34 tokens, and a collapsed merge that never ends a line would otherwise run to the paper's 512.
ZOO_MAX_NEW_TOKENS = 48
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Settings:
    model_roots: tuple[Path, ...]
    cache_dir: Path
    cache_max_bytes: int
    model_memory_bytes: int | None  # weights of live models the dashboard keeps; None: engine.device decides
    device: str
    data_dir: Path
    max_new_tokens: int | None  # None: the decoding settings' own default
    backend: str = "local"
    ray_address: str | None = None  # None: start a local Ray for the run, shut it down after


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `environ` (default: os.environ); raises SettingsError naming the variable."""
    env = os.environ if environ is None else environ
    roots_text = env.get("MERGESCOPE_MODEL_ROOTS", "").strip()
    # Existence is checked where roots are used (model_roots()): the cache needs no model roots.
    roots = [Path(p).expanduser() for p in roots_text.split(os.pathsep) if p.strip()] or [ZOO_DIR / "models"]

    cache_dir = Path(env.get("MERGESCOPE_CACHE_DIR", "") or REPO_ROOT / ".mergescope-cache").expanduser()

    cap_gb = _positive_gb(env, "MERGESCOPE_CACHE_MAX_GB", "20")
    model_memory_gb = _positive_gb(env, "MERGESCOPE_MODEL_MEMORY_GB", None)

    device = env.get("MERGESCOPE_DEVICE", "auto").strip().lower()
    if device not in DEVICES:
        raise SettingsError(f"MERGESCOPE_DEVICE: expected one of {', '.join(DEVICES)}, got {device!r}")

    data_dir = Path(env.get("MERGESCOPE_DATA_DIR", "") or ZOO_DIR / "data").expanduser()

    tokens_text = env.get("MERGESCOPE_MAX_NEW_TOKENS", "").strip()
    max_new_tokens = None
    if tokens_text:
        if not tokens_text.isdigit() or int(tokens_text) < 1:
            raise SettingsError(f"MERGESCOPE_MAX_NEW_TOKENS: expected a positive integer, got {tokens_text!r}")
        max_new_tokens = int(tokens_text)

    backend = env.get("MERGESCOPE_BACKEND", "local").strip().lower() or "local"
    if backend not in BACKENDS:
        raise SettingsError(f"MERGESCOPE_BACKEND: expected one of {', '.join(BACKENDS)}, got {backend!r}")

    return Settings(
        model_roots=tuple(p.resolve() for p in roots),
        cache_dir=cache_dir.resolve(),
        cache_max_bytes=int(cap_gb * 1024**3),
        model_memory_bytes=None if model_memory_gb is None else int(model_memory_gb * 1024**3),
        device=device,
        data_dir=data_dir.resolve(),
        max_new_tokens=max_new_tokens,
        backend=backend,
        ray_address=env.get("MERGESCOPE_RAY_ADDRESS", "").strip() or None,
    )


def _positive_gb(env: Mapping[str, str], name: str, default: str | None) -> float | None:
    text = env.get(name, "").strip() or default
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{name}: expected a number of GB, got {text!r}") from None
    if value <= 0:
        raise SettingsError(f"{name}: must be positive, got {text!r}")
    return value


def model_roots() -> tuple[Path, ...]:
    """The configured model roots; SettingsError naming any that is not a folder."""
    roots = get_settings().model_roots
    missing = [str(p) for p in roots if not p.is_dir()]
    if missing:
        raise SettingsError(f"MERGESCOPE_MODEL_ROOTS: not a folder: {', '.join(missing)}")
    return roots


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return load_settings()


def cache_store():
    """The content-addressed cache at MERGESCOPE_CACHE_DIR, capped at MERGESCOPE_CACHE_MAX_GB (settings read now)."""
    import cache

    settings = get_settings()
    return cache.Store(settings.cache_dir, settings.cache_max_bytes)
