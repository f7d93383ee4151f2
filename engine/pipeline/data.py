"""Parallel data by split and direction, under the data root."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from engine.errors import DataError
from engine.parallel import ParallelSet, load_jsonl
from engine.settings import get_settings


def data_root() -> Path:
    """Parallel data for evaluation and capture (MERGESCOPE_DATA_DIR, default the zoo's data)."""
    return get_settings().data_dir


@functools.lru_cache(maxsize=256)
def _load_set(path: str, mtime_ns: int) -> ParallelSet:
    return load_jsonl(path)


def data_sets(split: str, directions: Iterable[str] | None = None, n: int | None = None) -> list[ParallelSet]:
    """The split's parallel sets (one per direction), first `n` pairs each, sorted by direction.

    Files are JSON Lines under the data root whose relative path names the split as one of its
    parts ('dev/en-es.jsonl', 'en-es.devtest.jsonl'), so 'dev' never matches 'devtest'.
    """
    root = data_root()
    if not root.is_dir():
        raise DataError(f"{root}: no data folder (set MERGESCOPE_DATA_DIR or build the demo zoo)")
    wanted = set(directions) if directions is not None else None
    found: dict[str, ParallelSet] = {}
    for file in sorted(root.rglob("*.jsonl")):
        parts = re.split(r"[/._-]", file.relative_to(root).as_posix())
        if split not in parts:
            continue
        pairs = _load_set(str(file), file.stat().st_mtime_ns)
        if wanted is not None and pairs.direction not in wanted:
            continue
        found.setdefault(pairs.direction, pairs)
    if wanted and (missing := sorted(wanted - set(found))):
        raise DataError(f"{root}: no {split} data for {', '.join(missing)}")
    return [found[d].head(n) if n else found[d] for d in sorted(found)]


def available_directions(split: str) -> list[str]:
    try:
        return [s.direction for s in data_sets(split)]
    except DataError:
        return []


def data_languages() -> tuple[str, ...]:
    """Every language of the data root's files (every split): what language ID answers among.

    Fixed by the data rather than by the directions on screen, so a system's off-target rate,
    and the cache entry behind it, stay the same when another direction is picked (the demo
    zoo's table answers among its six languages too).
    """
    root = data_root()
    if not root.is_dir():
        return ()
    sets = (_load_set(str(f), f.stat().st_mtime_ns) for f in sorted(root.rglob("*.jsonl")))
    return tuple(sorted({lang for s in sets for lang in (s.src_lang, s.tgt_lang)}))


def data_key(sets: Sequence[ParallelSet]) -> tuple:
    """The sets' content hashes: the data part of a cache key."""
    return tuple(s.content_hash() for s in sets)
