"""Patched systems: a merge whose layer set comes from another checkpoint, with a content identity
(the merge's recipe hash, the source's fingerprint, the set), so its scores, captures and analyses
are cached like any other system's."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from engine.patch.layers import LayerSet
from engine.pipeline.systems import System

PATCH_SALT = "mergescope-patch-v1"  # bump when a patch's result changes for the same inputs


@dataclass(frozen=True)
class Patch:
    """What a patched system is: `merge` with the blocks and parts of `layers` taken from `source`."""

    merge: System
    source: System
    layers: LayerSet


def patch_identity(merge: System, source: System, layers: LayerSet) -> str:
    payload = json.dumps([PATCH_SALT, merge.identity, source.identity, list(layers.blocks), list(layers.parts)])
    return hashlib.sha256(payload.encode()).hexdigest()


def patched_system(merge: System, source: System, layers: LayerSet, direction: str | None = None) -> System:
    """The merge patched from `source` (an expert), scored on `direction` (default: the source's)."""
    return System(
        f"{merge.name} · {source.name} {layers.text}",
        patch_identity(merge, source, layers),
        recipe=merge.recipe,
        direction=direction or source.direction,
        patch=Patch(merge, source, layers),
    )
