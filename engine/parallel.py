"""Parallel data: one direction's aligned (source, reference) sentences, validated on load.

On disk a set is JSON Lines, one object per pair: {"src_lang", "tgt_lang", "source", "target"}.
FLORES-style plain text files (one sentence a line, one file per language) load too.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.errors import DataError
from engine.prompts import language_name


@dataclass(frozen=True)
class ParallelSet:
    """Aligned sentences for one translation direction."""

    src_lang: str
    tgt_lang: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    name: str = ""  # where it came from, for error messages and figure labels

    def __post_init__(self):
        label = self.name or f"{self.src_lang}-{self.tgt_lang}"
        language_name(self.src_lang)
        language_name(self.tgt_lang)
        if len(self.sources) != len(self.targets):
            raise DataError(f"{label}: {len(self.sources)} sources but {len(self.targets)} targets (misaligned)")
        if not self.sources:
            raise DataError(f"{label}: no sentence pairs")
        for i, (s, t) in enumerate(zip(self.sources, self.targets)):
            if not s.strip() or not t.strip():
                raise DataError(f"{label}: pair {i + 1} has an empty {'source' if not s.strip() else 'target'}")

    @property
    def direction(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"

    def __len__(self) -> int:
        return len(self.sources)

    def head(self, n: int) -> ParallelSet:
        """The first n pairs (all when n exceeds the size)."""
        return ParallelSet(self.src_lang, self.tgt_lang, self.sources[:n], self.targets[:n], self.name)

    def content_hash(self) -> str:
        """sha256 over direction and sentences: the data part of every cache key."""
        payload = json.dumps([self.src_lang, self.tgt_lang, self.sources, self.targets], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()


def load_jsonl(path: str | Path) -> ParallelSet:
    """Read a JSONL parallel file; every line must carry the same src_lang/tgt_lang."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such parallel data file")
    sources, targets, direction = [], [], None
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pair_direction = (row["src_lang"], row["tgt_lang"])
                source, target = row["source"], row["target"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DataError(
                    f"{path}:{number}: expected an object with src_lang, tgt_lang, source, target ({err})"
                ) from None
            if direction is None:
                direction = pair_direction
            elif pair_direction != direction:
                raise DataError(
                    f"{path}:{number}: direction {'-'.join(pair_direction)} differs from {'-'.join(direction)}"
                )
            sources.append(source)
            targets.append(target)
    if direction is None:
        raise DataError(f"{path}: no sentence pairs")
    return ParallelSet(direction[0], direction[1], tuple(sources), tuple(targets), name=str(path))


def load_text_pair(src_path: str | Path, tgt_path: str | Path, src_lang: str, tgt_lang: str) -> ParallelSet:
    """Two plain text files, one sentence per line (FLORES layout); line counts must match."""
    src_lines = Path(src_path).read_text(encoding="utf-8").splitlines()
    tgt_lines = Path(tgt_path).read_text(encoding="utf-8").splitlines()
    if len(src_lines) != len(tgt_lines):
        raise DataError(f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)} (misaligned)")
    return ParallelSet(src_lang, tgt_lang, tuple(src_lines), tuple(tgt_lines), name=f"{src_path} | {tgt_path}")


def save_jsonl(pairs: ParallelSet, path: str | Path) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for source, target in zip(pairs.sources, pairs.targets):
                row = {"src_lang": pairs.src_lang, "tgt_lang": pairs.tgt_lang, "source": source, "target": target}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
