"""Sweep progress records: what a running sweep has done, for the dashboard, whichever backend runs it.

A sweep writes <cache dir>/sweeps/<sweep id>.json (atomically: temporary file, then rename) at
every step; the id is a hash of what the sweep computes, so a resumed sweep updates its own
record. Fields: id, source, backend, state (running, done, stopped), done, total, current (the
last step), failed (points that failed), started, updated (Unix times), host, pid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

from cache import canonical_json
from engine.settings import get_settings

log = logging.getLogger(__name__)
STATES = ("running", "done", "stopped")


def sweeps_folder() -> Path:
    return get_settings().cache_dir / "sweeps"


def sweep_id(config) -> str:
    """Hash of what a sweep computes: checkpoints, grids, data, metric, decoding and seed."""
    identity = {
        "base": str(config.base_model),
        "groups": {g: {d: str(p) for d, p in experts.items()} for g, experts in config.groups.items()},
        "joint": str(config.joint) if config.joint else None,
        "points": [f"{g} {p.label}" for g, p in config.points()],
        "data": {
            split: {d: s.content_hash() for d, s in sets.items()}
            for split, sets in (("dev", config.dev), ("devtest", config.devtest))
        },
        "metric": config.metric,
        "decoding": config.decoding.cache_parts(),
        "seed": config.seed,
        "each_expert": config.each_expert,
    }
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:16]


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class SweepProgress:
    """The record of one sweep run; `update` at every step, `finish` at the end."""

    def __init__(self, config, backend: str, total: int, folder: Path | None = None):
        now = time.time()
        self.record = {
            "id": sweep_id(config),
            "source": config.source,
            "backend": backend,
            "state": "running",
            "done": 0,
            "total": total,
            "current": "starting",
            "failed": 0,
            "started": now,
            "updated": now,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        self.path = (folder or sweeps_folder()) / f"{self.record['id']}.json"
        self._write()

    def update(self, done: int, current: str, failed: int) -> None:
        self.record.update(done=done, current=current, failed=failed, updated=time.time())
        self._write()

    def finish(self, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"sweep state must be one of {STATES}, got {state!r}")
        self.record.update(state=state, updated=time.time())
        self._write()

    def _write(self) -> None:
        try:
            _write_json(self.path, self.record)
        except OSError as err:  # progress is for show: a read-only cache must not stop the sweep
            log.warning("cannot write sweep progress %s: %s", self.path, err)


def _alive(record: dict) -> bool:
    if record.get("host") != socket.gethostname():
        return True  # another machine's process: cannot tell, trust the record
    try:
        os.kill(int(record["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError):
        return False
    except PermissionError:
        return True
    return True


def recent_sweeps(limit: int = 10, folder: Path | None = None) -> list[dict]:
    """The newest sweep records first; a 'running' sweep whose process is gone reads 'interrupted'."""
    folder = folder or sweeps_folder()
    records = []
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            int(record["done"]), int(record["total"]), float(record["updated"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("%s: not a sweep progress record (%s)", path, err)
            continue
        if record.get("state") == "running" and not _alive(record):
            record["state"] = "interrupted"
        records.append(record)
    records.sort(key=lambda r: r["updated"], reverse=True)
    return records[:limit]


def fraction(record: dict) -> float:
    return min(1.0, record["done"] / record["total"]) if record["total"] else 1.0


def describe(record: dict, now: float | None = None) -> str:
    """One line for a progress bar: source, backend, state, steps, failures, last step, age."""
    age = max(0.0, (now or time.time()) - record["updated"])
    when = f"{age:.0f} s ago" if age < 120 else f"{age / 60:.0f} min ago" if age < 7200 else f"{age / 3600:.0f} h ago"
    failed = f", {record['failed']} failed" if record.get("failed") else ""
    return (
        f"{record.get('source', '?')} on {record.get('backend', '?')}: {record.get('state', '?')}, "
        f"{record['done']}/{record['total']} steps{failed} — {record.get('current', '')} ({when})"
    )
