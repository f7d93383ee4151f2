"""Checkpoints under the model roots as the dashboard names them: labels, directions, summaries."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from engine.checkpoints import Checkpoint, compatibility_problems, discover_checkpoints
from engine.checkpoints.discover import Discovery
from engine.prompts import LANGUAGE_NAMES
from engine.settings import model_roots

_DIRECTION = re.compile(r"(?<![a-z])([a-z]{2})(?:[-_]?(?:2|to)[-_]?|[-_])([a-z]{2})(?![a-z])")


def discover(roots: Sequence[Path] | None = None) -> Discovery:
    """Checkpoints under the model roots (default: configured), and the folders refused with their reasons."""
    return discover_checkpoints(tuple(Path(r).resolve() for r in roots) if roots is not None else None)


def checkpoint_label(checkpoint: Checkpoint, roots: Sequence[Path] | None = None) -> str:
    """A checkpoint's name in pickers and links: its path relative to the model root holding it."""
    for root in roots if roots is not None else model_roots():
        try:
            return checkpoint.path.relative_to(root).as_posix()
        except ValueError:
            continue
    return checkpoint.name


def checkpoints_by_label(discovery: Discovery | None = None) -> dict[str, Checkpoint]:
    discovery = discovery or discover()
    return {checkpoint_label(c): c for c in discovery.checkpoints}


def summary_rows(discovery: Discovery) -> list[dict]:
    """One plain dict per checkpoint for the Models table."""
    rows = []
    for c in discovery.checkpoints:
        s = c.summary
        rows.append(
            {
                "name": checkpoint_label(c),
                "direction": checkpoint_direction(c) or "",
                "architecture": s.architecture,
                "layers": s.layers,
                "hidden": s.hidden_size,
                "mlp": s.intermediate_size,
                "vocab": s.vocab_size,
                "dtype": s.dtype,
                "parameters (M)": round(s.parameters / 1e6, 2),
                "size (MB)": round(s.size_bytes / 1e6, 2),
            }
        )
    return rows


def checkpoint_direction(checkpoint: Checkpoint) -> str | None:
    """The translation direction a fine-tune was trained for, e.g. 'en-es', when its name says so.

    The zoo names experts by direction; a researcher's own folders ('qwen-en-hi', 'hi2en') follow
    the same pattern. None for a base or a multilingual model.
    """
    return direction_from_name(checkpoint_label(checkpoint))


def direction_from_name(name: str) -> str | None:
    for match in _DIRECTION.finditer(name.lower()):
        src, tgt = match.groups()
        if src != tgt and src in LANGUAGE_NAMES and tgt in LANGUAGE_NAMES:
            return f"{src}-{tgt}"
    return None


def compatibility(checkpoints: Sequence[Checkpoint]) -> list[str]:
    """Every reason the checkpoints cannot be merged or compared tensor by tensor (empty: fine)."""
    return compatibility_problems(list(checkpoints))
