"""Can these checkpoints be merged or compared tensor by tensor? Every mismatch, in one error."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from engine.errors import IncompatibleModelsError

# How many differing tensor names to quote before summarising; a different family can differ in hundreds.
MAX_NAMES_QUOTED = 5


def tokenizer_vocabulary_digest(folder: Path) -> str | None:
    """Hash of the token → id map from tokenizer.json (None when the folder has no tokenizer.json).

    Remembered per version of the file: the dashboard checks the picked checkpoints on every run of
    its Models page, and a real tokenizer.json (150k tokens, several MB) takes a tenth of a second
    or more to read and hash."""
    file = folder / "tokenizer.json"
    if not file.is_file():
        return None
    stat = file.stat()
    return _file_vocabulary_digest(str(file), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _file_vocabulary_digest(file: str, mtime_ns: int, size: int) -> str:
    data = json.loads(Path(file).read_text(encoding="utf-8"))
    vocab = (data.get("model") or {}).get("vocab") or {}
    added = sorted((t["content"], t["id"]) for t in data.get("added_tokens", []))
    payload = json.dumps([sorted(vocab.items()) if isinstance(vocab, dict) else vocab, added], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def _quote(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_QUOTED])
    more = len(names) - MAX_NAMES_QUOTED
    return shown + (f" and {more} more" if more > 0 else "")


def compatibility_problems(checkpoints: list) -> list[str]:
    """Every way each checkpoint differs from the first: architecture, tensors, shapes, vocabulary."""
    if len(checkpoints) < 2:
        return []
    ref = checkpoints[0]
    ref_summary = ref.summary
    ref_names = set(ref.tensor_names)
    ref_vocab = tokenizer_vocabulary_digest(ref.path)
    problems = []
    for other in checkpoints[1:]:
        s = other.summary
        where = f"{other.path} vs {ref.path}"
        if s.architecture != ref_summary.architecture:
            problems.append(f"{where}: architecture {s.architecture} vs {ref_summary.architecture}")
        if s.vocab_size != ref_summary.vocab_size:
            problems.append(f"{where}: vocabulary size {s.vocab_size} vs {ref_summary.vocab_size}")
        other_vocab = tokenizer_vocabulary_digest(other.path)
        if ref_vocab and other_vocab and other_vocab != ref_vocab:
            problems.append(f"{where}: tokenizer vocabularies differ (tokenizer.json token ids)")
        names = set(other.tensor_names)
        if missing := sorted(ref_names - names):
            problems.append(f"{other.path}: missing {len(missing)} tensor(s) present in {ref.path}: {_quote(missing)}")
        if extra := sorted(names - ref_names):
            problems.append(f"{other.path}: {len(extra)} tensor(s) absent from {ref.path}: {_quote(extra)}")
        shape_diffs = [
            f"{n} {list(other.tensor_shape(n))} vs {list(ref.tensor_shape(n))}"
            for n in sorted(ref_names & names)
            if other.tensor_shape(n) != ref.tensor_shape(n)
        ]
        if shape_diffs:
            problems.append(f"{where}: {len(shape_diffs)} tensor shape(s) differ: {_quote(shape_diffs)}")
    return problems


def check_compatible(checkpoints: list) -> None:
    """IncompatibleModelsError listing every mismatch, or nothing when all line up with the first."""
    problems = compatibility_problems(checkpoints)
    if problems:
        raise IncompatibleModelsError("checkpoints are not compatible:\n- " + "\n- ".join(problems))
