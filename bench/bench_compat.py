"""The compatibility check the Models page runs on every run, with real-sized tokenizers.

Three checkpoints (a base and two experts, the zoo's tiny tensors) get a tokenizer.json the size
of Qwen2.5's (151,643 tokens and as many merges, about 8 MB). Times `compatibility_problems` on
them the first time (every tokenizer read and hashed) and again (the digests remembered per file
version), as the dashboard calls it on each pick and page run.

    .venv/bin/python bench/bench_compat.py [--tokens 151643] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.checkpoints import compat, open_checkpoint  # noqa: E402
from engine.pipeline.catalog import compatibility  # noqa: E402
from tests.tiny_models import save_checkpoint  # noqa: E402


def real_sized_tokenizer(tokens: int) -> dict:
    """A byte-level BPE tokenizer.json shaped like Qwen2.5's: vocabulary, merges, added tokens."""
    vocab = {f"Ġtok{i:06d}": i for i in range(tokens)}
    merges = [f"Ġtok{i:06d} tok{i + 1:06d}" for i in range(tokens - 1)]
    added = [{"id": tokens + i, "content": f"<|special_{i}|>", "special": True} for i in range(22)]
    return {"version": "1.0", "added_tokens": added, "model": {"type": "BPE", "vocab": vocab, "merges": merges}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=151_643)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-compat-"))
    tokenizer = json.dumps(real_sized_tokenizer(args.tokens))
    folders = [save_checkpoint(work / name, seed=seed) for seed, name in enumerate(("base", "expert-a", "expert-b"))]
    for folder in folders:
        (folder / "tokenizer.json").write_text(tokenizer)
    checkpoints = [open_checkpoint(f, roots=(work,)) for f in folders]

    start = time.perf_counter()
    assert compatibility(checkpoints) == []
    first = time.perf_counter() - start
    again = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        assert compatibility(checkpoints) == []
        again.append(time.perf_counter() - start)
    repeat = statistics.median(again)
    print(
        f"tokenizer.json {len(tokenizer) / 1e6:.1f} MB × 3 checkpoints "
        f"(digests remembered: {compat._file_vocabulary_digest.cache_info().currsize})"
    )
    print(f"first check (every tokenizer read and hashed): {first * 1000:.0f} ms")
    print(f"each check after (median of {args.repeats}): {repeat * 1000:.2f} ms ({first / repeat:.0f}× less)")


if __name__ == "__main__":
    main()
