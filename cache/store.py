"""A content-addressed store: one safetensors file per entry, indexed in SQLite.

Layout under the cache folder:
    index.sqlite                 key, kind, description, size, sha256, created, last_used
    index.init.lock              so that processes opening a new cache set up its index one at a time
    entries/<k[:2]>/<key>.safetensors
    locks/<key>.lock             one filelock per key, so a key is computed once across processes

Each file holds the entry's tensors and, in the safetensors header metadata, its JSON meta
(strings such as translations fit there). Files are written to a temporary name and renamed,
so a reader never sees half a file; the index row is written only after the rename, and the
sha256 in it is checked on every read, so a truncated or corrupted file is deleted and
recomputed instead of being served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

log = logging.getLogger(__name__)

META_FIELD = "mergescope.meta"  # the header metadata field that carries Entry.meta as JSON
SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    description TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL
)
"""


class CacheError(Exception):
    """An entry cannot be stored (e.g. meta that is not JSON, a tensor that is not a tensor)."""


@dataclass
class Entry:
    """A cached value: named tensors plus JSON-able metadata."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EntryInfo:
    """One index row, as `ls` shows it."""

    key: str
    kind: str
    description: str
    size: int
    sha256: str
    created: float
    last_used: float


def encode_entry(entry: Entry) -> bytes:
    """Serialise an Entry to safetensors bytes; CacheError when it cannot be stored faithfully."""
    if not isinstance(entry, Entry):
        raise CacheError(f"compute returned {type(entry).__name__}, expected cache.Entry")
    try:
        meta_text = json.dumps(entry.meta, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise CacheError(f"entry meta is not JSON-serialisable: {err}") from None
    tensors = {}
    for name, value in entry.tensors.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CacheError(f"entry tensor {name!r} is {type(value).__name__}, expected a torch.Tensor")
        # clone: safetensors refuses tensors sharing storage, and views of a larger buffer
        # would otherwise write the whole buffer.
        tensors[name] = value.detach().to("cpu").contiguous().clone()
    return save_tensors(tensors, metadata={META_FIELD: meta_text})


def decode_entry(data: bytes) -> Entry:
    """Inverse of encode_entry."""
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    meta = json.loads(header.get("__metadata__", {}).get(META_FIELD, "{}"))
    return Entry(tensors=dict(load_tensors(data)), meta=meta)


class Store:
    """The cache folder: get, put, get_or_compute, and the maintenance used by `python -m engine cache`."""

    def __init__(self, root: str | Path, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"cache size cap must be positive, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.entries_dir = self.root / "entries"
        self.locks_dir = self.root / "locks"
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        self.locks_dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.sqlite"
        # Turning a new index to WAL needs SQLite's exclusive lock, and two processes converting it
        # at once can fail at once, without waiting ("database is locked": each holds the shared
        # lock the other must lose). One at a time; WAL then stays set in the file for every
        # later connection.
        with FileLock(str(self.root / "index.init.lock")), self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)

    # --- plumbing -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # A fresh connection per operation: cheap, and safe to use from any thread or process.
        db = sqlite3.connect(self.index_path, timeout=60, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")
        return _ClosingConnection(db)

    def path_for(self, key: str) -> Path:
        """Where the entry file of `key` lives (whether or not it exists)."""
        _check_key(key)
        return self.entries_dir / key[:2] / f"{key}.safetensors"

    def lock_for(self, key: str) -> FileLock:
        """The inter-process lock that serialises computing `key`."""
        _check_key(key)
        return FileLock(str(self.locks_dir / f"{key}.lock"))

    def _row(self, key: str) -> EntryInfo | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM entries WHERE key = ?", (key,)).fetchone()
        return EntryInfo(*row) if row else None

    def _drop(self, key: str) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM entries WHERE key = ?", (key,))
        try:
            self.path_for(key).unlink()
        except FileNotFoundError:
            pass

    # --- the interface --------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        """The entry for `key`, or None when absent; a corrupt entry is deleted and reported as absent."""
        info = self._row(key)
        if info is None:
            return None
        path = self.path_for(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            log.warning("cache entry %s (%s) lost its file; dropping it", key[:12], info.kind)
            self._drop(key)
            return None
        if len(data) != info.size or hashlib.sha256(data).hexdigest() != info.sha256:
            log.warning("cache entry %s (%s) failed its checksum; deleting it", key[:12], info.kind)
            self._drop(key)
            return None
        try:
            entry = decode_entry(data)
        except Exception as err:  # a file with a good checksum but an unreadable body: never serve it
            log.warning("cache entry %s (%s) is unreadable (%s); deleting it", key[:12], info.kind, err)
            self._drop(key)
            return None
        with self._connect() as db:
            db.execute("UPDATE entries SET last_used = ? WHERE key = ?", (time.time(), key))
        return entry

    def put(self, key: str, entry: Entry, kind: str | None = None, description: str = "") -> EntryInfo:
        """Store `entry` under `key` atomically, then evict least-recently-used entries over the cap."""
        kind = kind or getattr(key, "kind", None) or "unknown"
        data = encode_entry(entry)
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:16]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        now = time.time()
        info = EntryInfo(str(key), kind, description, len(data), hashlib.sha256(data).hexdigest(), now, now)
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)", tuple(info.__dict__.values()))
        self.evict(keep=str(key))
        return info

    def get_or_compute(
        self, key: str, compute: Callable[[], Entry], description: str = "", kind: str | None = None
    ) -> Entry:
        """The entry for `key`, computing and storing it once even when several processes ask at once.

        If `compute` raises, nothing is stored and the error propagates.
        """
        entry = self.get(key)
        if entry is not None:
            return entry
        with self.lock_for(key):
            # Another process may have finished while we waited for the lock.
            entry = self.get(key)
            if entry is not None:
                return entry
            log.debug("cache miss %s: computing %s", str(key)[:12], description or getattr(key, "kind", ""))
            entry = compute()
            self.put(key, entry, kind=kind, description=description)
            return entry

    # --- maintenance ----------------------------------------------------------------------
    def entries(self) -> list[EntryInfo]:
        """Index rows, most recently used first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM entries ORDER BY last_used DESC").fetchall()
        return [EntryInfo(*row) for row in rows]

    def total_bytes(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])

    def evict(self, keep: str | None = None, max_bytes: int | None = None) -> list[str]:
        """Delete least-recently-used entries until the total fits the cap; returns deleted keys.

        `keep` (the entry just written) is never evicted, even if it alone exceeds the cap.
        """
        cap = self.max_bytes if max_bytes is None else max_bytes
        total = self.total_bytes()
        evicted = []
        if total <= cap:
            return evicted
        with self._connect() as db:
            rows = db.execute("SELECT key, size FROM entries ORDER BY last_used ASC").fetchall()
        for key, size in rows:
            if total <= cap:
                break
            if key == keep:
                continue
            self._drop(key)
            total -= size
            evicted.append(key)
        if evicted:
            log.info("cache: evicted %d entries to stay under %d bytes", len(evicted), cap)
        return evicted

    def verify(self, delete: bool = True) -> list[str]:
        """Check every entry's checksum; returns the keys that failed (deleted when `delete`)."""
        bad = []
        for info in self.entries():
            path = self.path_for(info.key)
            ok = path.is_file() and path.stat().st_size == info.size
            if ok:
                digest = hashlib.sha256()
                with path.open("rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
                ok = digest.hexdigest() == info.sha256
            if not ok:
                bad.append(info.key)
                if delete:
                    self._drop(info.key)
        return bad

    def gc(self, max_bytes: int | None = None, tmp_age_s: float = 3600.0) -> dict[str, int]:
        """Evict over the cap, delete files the index does not know, stale temporaries and idle locks.

        A lock file is removed only while gc itself holds it; a process that opened it just
        before could still race a newcomer, so at worst a key is computed twice (both writes
        are whole and identical), never served half-written. Run gc when the cache is quiet.
        """
        evicted = self.evict(max_bytes=max_bytes)
        known = {info.key for info in self.entries()}
        orphans = stale = locks = 0
        now = time.time()
        for path in self._files(self.entries_dir):
            if path.name.endswith(".tmp"):
                # A temporary may belong to a write in progress in another process: only old ones go.
                if now - path.stat().st_mtime > tmp_age_s:
                    path.unlink(missing_ok=True)
                    stale += 1
            elif path.suffix == ".safetensors" and path.stem not in known:
                path.unlink(missing_ok=True)
                orphans += 1
        for path in self._files(self.locks_dir):
            lock = FileLock(str(path))
            try:
                lock.acquire(timeout=0)
            except Exception:
                continue  # held: someone is computing that key
            try:
                path.unlink(missing_ok=True)
                locks += 1
            finally:
                lock.release()
        return {"evicted": len(evicted), "orphans": orphans, "stale_tmp": stale, "locks": locks}

    @staticmethod
    def _files(folder: Path) -> Iterator[Path]:
        return (p for p in folder.rglob("*") if p.is_file())


class _ClosingConnection:
    """sqlite3's own context manager commits but does not close; this one closes too."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc) -> None:
        self.db.close()


def _check_key(key: str) -> None:
    # Keys become file names: only the hex digests make_key produces are accepted.
    if not isinstance(key, str) or len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"not a cache key (expected 64 lowercase hex characters): {key!r}")
