"""Finding checkpoint folders under the model roots, with the reason for each one refused."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.checkpoints.checkpoint import Checkpoint
from engine.errors import MergeScopeError
from engine.settings import model_roots

log = logging.getLogger(__name__)


@dataclass
class Discovery:
    checkpoints: list[Checkpoint] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (folder, reason)


def discover_checkpoints(roots: tuple[Path, ...] | None = None) -> Discovery:
    """Every folder holding a config.json under the roots, opened and validated, sorted by path."""
    roots = model_roots() if roots is None else tuple(Path(r).resolve() for r in roots)
    found = Discovery()
    for root in roots:
        for folder, subdirs, files in os.walk(root, followlinks=True):
            subdirs.sort()
            if "config.json" not in files:
                continue
            subdirs.clear()  # a checkpoint's own subfolders are not further checkpoints
            try:
                found.checkpoints.append(Checkpoint(folder, roots))
            except MergeScopeError as err:
                log.warning("skipping %s: %s", folder, err)
                found.refused.append((folder, str(err)))
    found.checkpoints.sort(key=lambda c: str(c.path))
    return found
