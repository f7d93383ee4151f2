"""Model roots: every checkpoint path must resolve (symlinks and `..` included) inside one.

The roots guard a server that answers a browser. The person at a terminal is trusted with the
paths they name: while a CLI command runs, `trusting` admits the folders on its command line and
in the YAML files it names (safetensors-only and no remote code still hold everywhere).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import PathNotAllowedError
from engine.settings import model_roots

_trusted: list[Path] = []
_trusted_lock = threading.Lock()


@contextmanager
def trusting(paths: Iterable[str | Path]) -> Iterator[None]:
    """Admit `paths` (and what lies below them) as model paths for the duration of the block."""
    added = [Path(p).expanduser().resolve() for p in paths]
    with _trusted_lock:
        _trusted.extend(added)
    try:
        yield
    finally:
        with _trusted_lock:
            for path in added:
                _trusted.remove(path)


def _is_below(real: Path, folders: Iterable[Path]) -> bool:
    return any(real == folder or real.is_relative_to(folder) for folder in folders)


def resolve_model_path(path: str | Path, roots: tuple[Path, ...] | None = None) -> Path:
    """The real path of `path`, or PathNotAllowedError when it lies outside the model roots
    (default: the configured roots and any folder a running CLI command was given)."""
    candidate = Path(path).expanduser()
    real = candidate.resolve()  # follows symlinks and folds `..`, so both are judged by where they land
    if roots is None:
        with _trusted_lock:
            if _is_below(real, _trusted):
                return real
    roots = model_roots() if roots is None else tuple(Path(r).resolve() for r in roots)
    if not _is_below(real, roots):
        allowed = ", ".join(str(r) for r in roots)
        raise PathNotAllowedError(
            f"{candidate}: resolves to {real}, outside the configured model roots ({allowed}); "
            "add its folder to MERGESCOPE_MODEL_ROOTS to use it"
        )
    return real
