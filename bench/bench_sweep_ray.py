"""Zoo sweep on the local backend vs Ray (2 workers, a local Ray on this machine), cold cache each.

Both runs do the same jobs (every grid point merged in memory and scored on dev, then the table
rows on devtest) into separate empty caches, and must give the same table. Reported: wall time
of each (Ray's start-up apart), overhead per task = (Ray wall − local wall) / tasks, and the
local run's per-point cost split into merging and generating + scoring, with the tokens a point
generates. Those feed the estimate for the paper's grid on 3B models in BENCHMARKS.md (## Ray).

    .venv/bin/python bench/bench_sweep_ray.py                       # en-x group, 11 points, 20 dev pairs
    .venv/bin/python bench/bench_sweep_ray.py --group en-x --group x-en --methods all --dev-limit 50

Prints a JSON summary, then one Markdown table row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SUBSET = {"task_arithmetic", "ties"}  # 5 + 6 points per group of the small grid


def configure(cache_dir: Path) -> None:
    from engine.settings import get_settings

    os.environ["MERGESCOPE_CACHE_DIR"] = str(cache_dir)
    get_settings.cache_clear()


def timed_sweep(config, backend) -> tuple[float, list[tuple[float, str]], object]:
    """Wall seconds, (seconds since start, message) per finished job, the result."""
    from engine.sweep import run_sweep

    events = []
    start = time.perf_counter()
    result = run_sweep(
        config, backend=backend, progress=lambda done, total, msg: events.append((time.perf_counter() - start, msg))
    )
    return time.perf_counter() - start, events, result


def generated_tokens(result, tokenizer) -> float:
    """Mean tokens generated per dev point (outputs re-tokenised, first line, plus the end token)."""
    per_point = [
        sum(
            len(tokenizer(s.output, add_special_tokens=False)["input_ids"]) + 1
            for d in p.dev.directions
            for s in d.samples
        )
        for p in result.points
        if p.ok
    ]
    return statistics.fmean(per_point)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=str(Path(__file__).resolve().parent.parent / "zoo"))
    parser.add_argument("--group", action="append", choices=("en-x", "x-en"), help="default: en-x")
    parser.add_argument(
        "--methods",
        choices=("subset", "all"),
        default="subset",
        help="subset: task arithmetic + TIES of the small grid (11 points per group); all: 17",
    )
    parser.add_argument("--dev-limit", type=int, default=20)
    parser.add_argument("--devtest-limit", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    zoo = Path(args.zoo).resolve()
    os.environ["MERGESCOPE_MODEL_ROOTS"] = str(zoo / "models")
    os.environ["MERGESCOPE_DEVICE"] = "cpu"
    import torch
    import transformers

    from engine.checkpoints import load_tokenizer, open_checkpoint
    from engine.merge import merge_into_model
    from engine.sweep import LocalBackend, from_dict, table_markdown, zoo_grid
    from engine.sweep.ray_backend import RayBackend, ray_init

    torch.set_num_threads(1)  # as in each Ray worker (Ray sets OMP_NUM_THREADS=1 for 1-CPU tasks)
    transformers.logging.set_verbosity_error()
    grid = zoo_grid(zoo, "small", args.dev_limit, args.max_new_tokens)
    grid["groups"] = {g: e for g, e in grid["groups"].items() if g in (args.group or ["en-x"])}
    grid.pop("joint", None)
    if args.methods == "subset":
        grid["methods"] = {m: g for m, g in grid["methods"].items() if m in SUBSET}
    grid["devtest_limit"] = args.devtest_limit
    config = from_dict(grid, zoo, "zoo bench grid")
    work = Path(tempfile.mkdtemp(prefix="mergescope-ray-bench-"))
    load_before = os.getloadavg()

    configure(work / "cache-local")
    local_backend = LocalBackend()
    local_s, local_events, local = timed_sweep(config, local_backend)
    dev_times = [b[0] - a[0] for a, b in zip([(0.0, "")] + local_events, local_events) if "(dev" in b[1]][1:]
    recipe = local.points[0].recipe
    merge_times = []
    for _ in range(3):
        start = time.perf_counter()
        merge_into_model(recipe, device="cpu")
        merge_times.append(time.perf_counter() - start)
    merge_s = statistics.median(merge_times)
    tokens = generated_tokens(local, load_tokenizer(open_checkpoint(config.base_model)))

    configure(work / "cache-ray")
    start = time.perf_counter()
    ray_init(num_cpus=args.workers)
    startup_s = time.perf_counter() - start
    ray_backend = RayBackend()
    ray_s, _, remote = timed_sweep(config, ray_backend)
    ray_backend.close()
    import ray

    ray.shutdown()
    load_after = os.getloadavg()

    tasks = ray_backend.submitted
    point_s = statistics.median(dev_times)
    summary = {
        "groups": sorted(config.groups),
        "points": len(config.points()),
        "tasks": tasks,
        "dev_limit": args.dev_limit,
        "devtest_limit": args.devtest_limit,
        "max_new_tokens": args.max_new_tokens,
        "directions_per_point": [len(e) for e in config.groups.values()],
        "local_wall_s": round(local_s, 1),
        "local_jobs": local_backend.submitted,
        "ray_startup_s": round(startup_s, 1),
        "ray_wall_s": round(ray_s, 1),
        "ray_workers": args.workers,
        "overhead_per_task_s": round((ray_s - local_s) / tasks, 2),
        "same_table": table_markdown(local) == table_markdown(remote),
        "same_dev_scores": [p.dev for p in local.points] == [p.dev for p in remote.points],
        "local_point_s_median": round(point_s, 2),
        "merge_s_median": round(merge_s, 3),
        "generate_and_score_s": round(point_s - merge_s, 2),
        "tokens_per_point": round(tokens),
        "cpu_tokens_per_s": round(tokens / (point_s - merge_s)),
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    print(json.dumps(summary, indent=1))
    load = f"{load_before[0]:.1f} → {load_after[0]:.1f}"
    print(
        f"| {time.strftime('%Y-%m-%d')} | {load} | {', '.join(summary['groups'])}: {summary['points']} points, "
        f"{tasks} tasks, {args.dev_limit} dev / {args.devtest_limit} devtest pairs | {local_s:.1f} s | "
        f"{ray_s:.1f} s ({args.workers} worker{'s' if args.workers > 1 else ''}; + {startup_s:.1f} s start) | "
        f"{summary['overhead_per_task_s']:+.2f} s | "
        f"{point_s:.2f} s = {merge_s:.2f} merge + {point_s - merge_s:.2f} generate/score ({round(tokens)} tokens) | "
        f"{'yes' if summary['same_table'] and summary['same_dev_scores'] else 'NO'} |"
    )


if __name__ == "__main__":
    main()
