"""MergeScope's content-addressed cache (see SPEC.md, "Engine rules").

    import cache
    key = cache.make_key("capture", model=fingerprint, data=pairs.content_hash(), settings={...})
    store = cache.Store(folder, max_bytes)  # engine.settings.cache_store() opens the configured one
    entry = store.get_or_compute(key, lambda: cache.Entry(tensors, meta), "capture of ...")

A key is the sha256 of canonical JSON of the kind, the caller's parts and a code-version salt
for that kind: bump the kind's version in CODE_VERSIONS when the code that produces it changes,
and every old entry of that kind simply stops matching (gc removes them later).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from cache.store import CacheError, Entry, EntryInfo, Store

__all__ = ["CODE_VERSIONS", "CacheError", "Entry", "EntryInfo", "Key", "Store", "canonical_json", "make_key"]

# Code-version salt per kind; kinds not listed get "1". Bump a value to invalidate that kind.
CODE_VERSIONS: dict[str, str] = {
    "capture": "1",
}


class Key(str):
    """A cache key: the hex digest, carrying the kind it was made for (used for the index)."""

    kind: str

    def __new__(cls, digest: str, kind: str):
        key = super().__new__(cls, digest)
        key.kind = kind
        return key

    def __reduce__(self):
        # Keep the kind when a key is pickled (e.g. sent to a worker process).
        return (Key, (str(self), self.kind))


def _canonical(value):
    # Reduce to plain JSON types so equal parts always serialise equally (tuples == lists,
    # Paths as strings); anything else is refused rather than silently str()-ed.
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"cache key parts must be finite numbers, got {value!r}")
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("cache key parts: dict keys must be strings")
        return {k: _canonical(v) for k, v in value.items()}
    raise TypeError(f"cache key part of type {type(value).__name__} is not JSON-able: {value!r}")


def canonical_json(value) -> str:
    """Deterministic JSON (sorted keys, no spaces, tuples as lists) of plain values."""
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def make_key(kind: str, **parts) -> Key:
    """sha256 over canonical JSON of kind, parts and the kind's code-version salt."""
    if not kind or not isinstance(kind, str):
        raise ValueError("cache kind must be a non-empty string")
    payload = {"kind": kind, "salt": CODE_VERSIONS.get(kind, "1"), "parts": parts}
    return Key(hashlib.sha256(canonical_json(payload).encode()).hexdigest(), kind)
