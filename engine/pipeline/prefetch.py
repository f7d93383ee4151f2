"""Background work a user is about to ask for: the checkpoints' scores and captures."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from engine.parallel import ParallelSet
from engine.pipeline.analyses import capture_system
from engine.pipeline.data import data_key
from engine.pipeline.models import ModelCache
from engine.pipeline.scores import decoding_settings, evaluate_systems
from engine.pipeline.systems import System

log = logging.getLogger(__name__)


class Prefetcher:
    """Computes, in one background thread, results a user is about to ask for (the checkpoints'
    scores and captures while they are still choosing a merge), so the Merge click only waits
    for the merge itself. Each job runs once; failures are logged, and the foreground simply
    computes (or reports) them again when asked. Thread-safe."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergescope-prefetch")
        self._lock = threading.Lock()
        self._seen: set[tuple] = set()

    def submit(self, key: tuple, job: Callable[[], object]) -> bool:
        """Queue `job` unless a job with `key` was queued before; True when queued now."""
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)

        def run():
            try:
                job()
            except Exception:  # the foreground will meet the same error and show it
                log.warning("prefetch %s failed", key[0], exc_info=True)

        self._pool.submit(run)
        return True


def prefetch_checkpoints(
    prefetcher: Prefetcher, systems: Sequence[System], sets: Sequence[ParallelSet], models: ModelCache
) -> None:
    """Queue scores and captures of checkpoint systems on `sets` (merges are left to the click)."""
    checkpoints_only = [s for s in systems if not s.is_merge]
    if not checkpoints_only or not sets:
        return
    key = (
        "scores",
        tuple(s.identity for s in checkpoints_only),
        data_key(sets),
        repr(decoding_settings().cache_parts()),
    )
    prefetcher.submit(key, lambda: evaluate_systems(checkpoints_only, sets, models))
    for system in checkpoints_only:
        prefetcher.submit(
            ("capture", system.identity, data_key(sets)),
            lambda system=system: [capture_system(system, pairs, models) for pairs in sets],
        )
