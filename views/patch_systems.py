"""The Patch page's routed systems, so every page lists them beside the merge (one per direction)."""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from engine.errors import RecipeError
from engine.patch.layers import parse_layer_set
from engine.patch.systems import patched_system
from engine.pipeline.systems import System

RUN_KEY = "patch_run"  # the routed layer set the Patch page ran, in its text form ('last:2+norm')


def routed_systems(merge: System, candidates: Sequence[System]) -> list[System]:
    """The merge patched from each expert among `candidates` with the routed set last run on the
    Patch page (none before a run, or when the set does not fit the model)."""
    text = st.session_state.get(RUN_KEY)
    experts = [s for s in candidates if s.direction and s.checkpoint is not None]
    if not text or not experts:
        return []
    try:
        layers = parse_layer_set(text, experts[0].checkpoint.summary.layers)
    except RecipeError:
        return []
    return [patched_system(merge, e, layers) for e in experts]
