"""Where a sweep's independent jobs (merge and score one point, capture one system) run: in this
process (`local`), or as Ray tasks across a cluster (`ray`, engine/sweep/ray_backend.py);
engine/sweep/backends.py opens one by name.

A backend maps one module-level function over picklable jobs and reports each outcome as it
arrives. Callers check the content-addressed cache first and send only what is missing; jobs
write their results into that same cache (a shared folder on a cluster), so local and Ray runs
fill and reuse one cache. Nothing outside ray_backend.py imports Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

# Called once per job as it finishes: (index in the jobs given, value, error); error is None on success.
OnDone = Callable[[int, object, "BaseException | None"], None]


class Backend(Protocol):
    """What a sweep needs from an executor."""

    name: str
    submitted: int  # jobs handed to the executor so far: what the cache saved is what it did not send

    def device(self, requested: str | None) -> str:
        """The device kind ('cpu' or 'cuda') jobs will run on, given the caller's request (None: settings)."""

    def map(self, fn: Callable, jobs: Sequence, on_done: OnDone, should_stop: Callable[[], bool]) -> bool:
        """Run fn(job) for every job, calling on_done as each finishes; a failing job is reported, not
        raised. Returns True when should_stop() ended the run early (unfinished jobs are dropped)."""

    def close(self) -> None:
        """Release what the backend started."""


class LocalBackend:
    """One job after another in this process, stopping between jobs when asked."""

    name = "local"

    def __init__(self):
        self.submitted = 0

    def device(self, requested: str | None) -> str:
        from engine.device import resolve_device

        return resolve_device(requested).type

    def map(self, fn: Callable, jobs: Sequence, on_done: OnDone, should_stop: Callable[[], bool]) -> bool:
        for i, job in enumerate(jobs):
            if should_stop():
                return True
            self.submitted += 1
            try:
                value = fn(job)
            except Exception as err:  # one failed job must not end a long sweep; the caller reports it
                on_done(i, None, err)
            else:
                on_done(i, value, None)
        return False

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
