"""Sweep progress: running and recent sweeps (CLI or dashboard, local or Ray) from the progress
records they keep in the cache folder. Read-only; the records are read and worded by the engine."""

import streamlit as st

from engine.sweep import progress


def _draw(limit: int) -> None:
    records = progress.recent_sweeps(limit)
    running = sum(r["state"] == "running" for r in records)
    with st.expander(f"Sweeps: {running} running, {len(records) - running} recent", expanded=bool(running)):
        for record in records:
            st.progress(progress.fraction(record), text=progress.describe(record))


def draw_sweep_progress(limit: int = 5) -> None:
    """A progress bar per recent sweep, refreshed every few seconds while one runs; nothing when
    no sweep has run against this cache."""
    records = progress.recent_sweeps(limit)
    if not records:
        return
    running = any(r["state"] == "running" for r in records)
    st.fragment(_draw, run_every=5 if running else None)(limit)
