"""Content fingerprints of checkpoints: what the cache keys on, independent of sharding.

Hashing a 3B model reads ~6 GB, so per-tensor digests are remembered per shard file, keyed by
its real path, size and modification time; an unchanged shard is never hashed twice.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import tempfile
from pathlib import Path

from engine.settings import get_settings

MEMO_VERSION = 1


def _memo_file(shard: Path) -> Path:
    stat = shard.stat()
    key = f"{MEMO_VERSION}|{shard.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return get_settings().cache_dir / "fingerprints" / (hashlib.sha256(key.encode()).hexdigest() + ".json")


def _write_atomic(file: Path, payload: dict) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, file)


def shard_tensor_digests(shard: Path, entries: dict) -> dict[str, str]:
    """sha256 of each tensor's bytes in `shard`; entries maps name → TensorEntry (absolute offsets)."""
    memo = _memo_file(shard)
    if memo.is_file():
        try:
            cached = json.loads(memo.read_text())
            if set(cached) == set(entries):
                return cached
        except (OSError, json.JSONDecodeError):
            pass  # a damaged memo is just recomputed
    digests = {}
    with shard.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            for name, entry in entries.items():
                digests[name] = hashlib.sha256(view[entry.start : entry.end]).hexdigest()
        finally:
            view.release()
    _write_atomic(memo, digests)
    return digests


def checkpoint_fingerprint(checkpoint) -> str:
    """sha256 over (name, dtype, shape, data digest) of every tensor, in name order."""
    by_shard: dict[Path, dict] = {}
    for name, (shard, entry) in checkpoint.entries().items():
        by_shard.setdefault(shard, {})[name] = entry
    digests: dict[str, str] = {}
    for shard, entries in by_shard.items():
        digests.update(shard_tensor_digests(shard, entries))
    total = hashlib.sha256()
    for name in sorted(digests):
        _, entry = checkpoint.entries()[name]
        total.update(f"{name}|{entry.dtype}|{list(entry.shape)}|{digests[name]}\n".encode())
    return total.hexdigest()
