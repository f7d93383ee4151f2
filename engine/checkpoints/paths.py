"""Model roots: every checkpoint path must resolve (symlinks and `..` included) inside one."""

from __future__ import annotations

from pathlib import Path

from engine.errors import PathNotAllowedError
from engine.settings import model_roots


def resolve_model_path(path: str | Path, roots: tuple[Path, ...] | None = None) -> Path:
    """The real path of `path`, or PathNotAllowedError when it lies outside the model roots."""
    roots = model_roots() if roots is None else tuple(Path(r).resolve() for r in roots)
    candidate = Path(path).expanduser()
    real = candidate.resolve()  # follows symlinks and folds `..`, so both are judged by where they land
    if not any(real == root or real.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise PathNotAllowedError(
            f"{candidate}: resolves to {real}, outside the configured model roots ({allowed}); "
            "add its folder to MERGESCOPE_MODEL_ROOTS to use it"
        )
    return real
