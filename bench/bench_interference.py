"""Benchmark: the weight-space interference profile of 4 experts + base of a randomly initialised
~0.6B Qwen2 (Qwen2.5-0.5B shapes, untied head: bench_merge.py's checkpoints), bf16 on disk,
against the floor of reading the five checkpoints once.

    .venv/bin/python bench/bench_interference.py --rounds 2          # 1 and 2 threads
    .venv/bin/python bench/bench_interference.py --threads 2 --rounds 1

Each measurement is a child process on warm page cache, run in turn (read, map, weights, full,
read, ...) so drifting load from other work hits each alike, with a given number of threads
(torch's, which is also how many tensors the profile and the floors take at a time). The floors
read every tensor of the five checkpoints once: `read` copies each block out with pread (the merge
executor's reader), `map` views each block in the mapped files (the profile's reader) and touches
every byte of it; the ratios are taken against the faster of the two. `weights` is the profile
without subspaces (norms, cosines, sign conflict, TIES drop shares); `full` adds the top-16
singular subspaces (randomized SVD, one power iteration), reported apart. Wall and CPU seconds are
the work inside the child: imports, checkpoint headers and the first call of the compiled kernels
(numba's start-up and loading their cached machine code, once per process, timed apart as "kernel
load") are excluded. Peak memory is the child's peak RSS (from /usr/bin/time -v; mapped pages count
while their block is in use) above an idle child's that does all of that too, set against two
tensors of the largest shape in float32. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_merge import OUT, build_checkpoints, run_measured  # noqa: E402

MODES = ("read", "map", "weights", "full")
FLOORS = ("read", "map")


def child(mode: str, folders: list[str], result: Path) -> None:
    """Run one measurement in this process and write its seconds to `result` as JSON."""
    from engine.checkpoints import open_checkpoint
    from engine.interference import InterferenceSettings, analyse_checkpoints, tensor_stats
    from engine.merge.executor import CHUNK_ELEMENTS, MappedReader, ShardReader
    from engine.merge.spec import MemorySource

    base, *experts = (open_checkpoint(f) for f in folders)
    load = time.perf_counter()
    if mode not in FLOORS:  # the kernels' first call, on a small bf16 tensor (sampled bracket, every kernel)
        g = torch.Generator().manual_seed(0)
        small = [torch.randn(300, 250, generator=g).bfloat16() for _ in range(len(experts) + 1)]
        tensor_stats(MemorySource(small[0], small[1:]), "warm-up", 0.2, rank=0)
    load = time.perf_counter() - load
    start, cpu = time.perf_counter(), time.process_time()
    if mode in FLOORS:
        # Tensor by tensor, as many at a time as the profile reads (torch's thread count), each thread
        # with its own reader: `read` copies every block out with pread (the merge executor's reader),
        # `map` views it in the mapped file (the profile's reader) and touches every byte once.
        local = threading.local()

        def read_tensor(item):
            shard, entry = item
            if not hasattr(local, "reader"):
                local.reader = ShardReader() if mode == "read" else MappedReader()
            rows = entry.shape[0] if entry.shape else 1
            step = max(1, CHUNK_ELEMENTS // (math.prod(entry.shape[1:]) or 1))
            for s in range(0, rows, step):
                block = local.reader.read(shard, entry, s, min(s + step, rows))
                if mode == "map":
                    block.view(-1).view(torch.uint8).numpy().max()
                    local.reader.release(shard, entry, s, min(s + step, rows))

        items = [item for checkpoint in (base, *experts) for item in checkpoint.entries().values()]
        with ThreadPoolExecutor(torch.get_num_threads()) as pool:
            list(pool.map(read_tensor, items))
    elif mode in ("weights", "full"):
        analyse_checkpoints(base, experts, InterferenceSettings(rank=16 if mode == "full" else 0))
    seconds = time.perf_counter() - start
    result.write_text(json.dumps({"seconds": seconds, "cpu": time.process_time() - cpu, "load": load}))


def run_child(mode: str, folders: list[Path], env: dict) -> dict:
    """Wall and CPU seconds of the work (from the child) and peak RSS (from time -v) of one child run."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, *map(str, folders)]
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        measured = run_measured([*cmd, "--result", out.name], env)
        work = json.loads(Path(out.name).read_text() or "{}")
    return {**{k: work.get(k, 0.0) for k in ("seconds", "cpu", "load")}, "peak_rss": measured["peak_rss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads",
        default="1,2",
        help="comma-separated thread counts (OMP_NUM_THREADS), each measured in turn",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=(*MODES, "idle"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("folders", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        child(args.child, args.folders, Path(args.result))
        return

    t = time.perf_counter()
    folders = build_checkpoints()
    print(f"checkpoints ready in {time.perf_counter() - t:.0f}s under {OUT / 'models'}")
    model_bytes = sum(f.stat().st_size for f in folders[0].glob("*.safetensors"))
    for folder in folders:  # warm page cache: every run reads from memory
        for shard in folder.glob("*.safetensors"):
            with open(shard, "rb") as fh:
                while fh.read(1 << 26):
                    pass
    largest = 151936 * 896 * 4  # the embedding (and head) in float32
    print(
        f"machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}, torch {torch.__version__}; model {model_bytes / 1e9:.2f} GB bf16 × 5"
    )
    tables = []
    for threads in (int(t) for t in args.threads.split(",")):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MERGESCOPE_MODEL_ROOTS": str(OUT / "models"),
            "MERGESCOPE_CACHE_DIR": str(OUT / "cache"),
            "OMP_NUM_THREADS": str(threads),
        }
        idle = run_child("idle", folders, env)["peak_rss"]
        runs: dict[str, list[dict]] = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                runs[mode].append(run_child(mode, folders, env))
                print(threads, mode, runs[mode][-1], flush=True)
        floor = min(r["seconds"] for f in FLOORS for r in runs[f])  # the faster way to read
        cpu_floor = min(r["cpu"] for f in FLOORS for r in runs[f])
        for mode in MODES:
            best = min(r["seconds"] for r in runs[mode])
            cpu = min(r["cpu"] for r in runs[mode])
            peak = max(r["peak_rss"] for r in runs[mode]) - idle
            load = f"{min(r['load'] for r in runs[mode]):.2f}" if mode not in FLOORS else "–"
            tables.append(
                f"| {threads} | {mode} | {best:.2f} | {best / floor:.1f}× | {cpu:.2f} | {cpu / cpu_floor:.1f}× "
                f"| {load} | {peak / 1024**3:.2f} GiB | {peak / (2 * largest):.2f}× |"
            )
        svd = min(r["cpu"] for r in runs["full"]) - min(r["cpu"] for r in runs["weights"])
        tables.append(f"<!-- {threads} thread(s): subspaces alone {svd:.1f} CPU s -->")
    print(
        "\n| threads | run | wall s | × read | CPU s | × read | kernel load s | peak memory above idle "
        "| × 2 largest tensors (f32) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(tables))
    print(f"\nload at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
