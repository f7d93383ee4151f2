"""What the zoo sweep's default rows and merges cost: experts on every direction, distinct merges only.

Two runs of the demo zoo's sweep (`engine.sweep.zoo_grid`, the small grid, both groups), each
in a fresh process of its own (so each pays the same one-time costs) and into its own empty cache:

- baseline: each expert scored on its own direction only, every grid point merged and scored
  (the inert-weight check switched off);
- default: each expert on every direction of its group (the paper's rows), and points that merge
  to the same model (normalize on, equal weights) merged and scored once.

Reported per run: wall and CPU seconds in all, and until the last dev point (the merges) and
after it (the devtest table); merges built, directions and sentences translated; and whether the
two tables agree on every row they share (base, joint, experts on their own direction, best
merges).

    .venv/bin/python bench/bench_sweep_rows.py --threads 1
    .venv/bin/python bench/bench_sweep_rows.py --group en-x --dev-limit 20 --devtest-limit 30   # quicker

Prints a JSON summary, then Markdown table rows for BENCHMARKS.md ("Sweep rows and merges").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = {
    "baseline": {"each_expert": False, "distinct_merges": False},
    "default": {"each_expert": True, "distinct_merges": True},
}


def run_variant(
    zoo: Path, groups, dev_limit: int, devtest_limit: int | None, each_expert: bool, distinct_merges: bool, cache: Path
) -> dict:
    import engine.sweep.run as sweep_run
    from engine.settings import get_settings
    from engine.sweep import from_dict, run_sweep, zoo_grid
    from engine.translate.generate import LazyModelTranslator

    os.environ["MERGESCOPE_CACHE_DIR"] = str(cache)
    get_settings.cache_clear()
    grid = zoo_grid(zoo, dev_limit=dev_limit)
    grid["groups"] = {g: e for g, e in grid["groups"].items() if g in groups}
    grid["devtest_limit"] = devtest_limit
    config = from_dict(grid, zoo, source=f"demo zoo {zoo} (small grid)")
    config.each_expert = each_expert

    counts = {"merges": 0, "directions": 0, "sentences": 0}
    merge, translate, inert = sweep_run.merge_into_model, LazyModelTranslator.translate, sweep_run.without_inert_weights

    def counted_merge(*args, **kwargs):
        counts["merges"] += 1
        return merge(*args, **kwargs)

    def counted_translate(self, sources, src_lang, tgt_lang):
        counts["directions"] += 1
        counts["sentences"] += len(sources)
        return translate(self, sources, src_lang, tgt_lang)

    sweep_run.merge_into_model = counted_merge
    LazyModelTranslator.translate = counted_translate
    if not distinct_merges:
        sweep_run.without_inert_weights = lambda recipe: recipe  # every point is its own merge
    n_points = len(config.points())
    marks = {}
    try:
        cpu, start = time.process_time(), time.perf_counter()

        def progress(done, total, message):
            if done == n_points:
                marks["dev_s"], marks["dev_cpu_s"] = time.perf_counter() - start, time.process_time() - cpu

        result = run_sweep(config, device="cpu", progress=progress)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        sweep_run.merge_into_model = merge
        LazyModelTranslator.translate = translate
        sweep_run.without_inert_weights = inert
    if result.failed or result.errors or result.stopped:
        raise SystemExit(f"sweep did not finish cleanly: {result.errors} {[p.error for p in result.failed]}")
    return {
        "points": n_points,
        "distinct_merges": sum(not p.same_as for p in result.points),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "dev_s": round(marks["dev_s"], 1),
        "dev_cpu_s": round(marks["dev_cpu_s"], 1),
        "devtest_s": round(wall - marks["dev_s"], 1),
        "devtest_cpu_s": round(cpu - marks["dev_cpu_s"], 1),
        **counts,
        "tables": {g: {r.system: r.to_dict() for r in rows} for g, rows in result.tables.items()},
    }


def shared_rows_agree(a: dict, b: dict) -> bool:
    """Every row both tables have is the same (scores, samples, signatures)."""
    for group, rows in a.items():
        for system, row in rows.items():
            if system in b[group] and b[group][system] != row:
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=str(Path(__file__).resolve().parent.parent / "zoo"))
    parser.add_argument("--group", action="append", choices=("en-x", "x-en"), help="default: both")
    parser.add_argument("--dev-limit", type=int, default=50)
    parser.add_argument("--devtest-limit", type=int, default=None, help="default: all 300 devtest pairs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep-cache", help="use this folder as the default run's cache (to reuse it after)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # one run, in a child
    parser.add_argument("--result", help=argparse.SUPPRESS)  # where the child writes its run
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    groups = args.group or ["en-x", "x-en"]
    if args.variant:
        import torch

        torch.set_num_threads(args.threads)
        default_cache = args.variant == "default" and args.keep_cache
        cache = Path(args.keep_cache) if default_cache else Path(args.result).with_suffix(".cache")
        run = run_variant(
            Path(args.zoo), groups, args.dev_limit, args.devtest_limit, cache=cache, **VARIANTS[args.variant]
        )
        Path(args.result).write_text(json.dumps(run), encoding="utf-8")
        return
    out = {
        "groups": groups,
        "dev_limit": args.dev_limit,
        "devtest_limit": args.devtest_limit,
        "threads": args.threads,
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-sweep-rows-") as tmp:
        for name in VARIANTS:
            result = Path(tmp) / f"{name}.json"
            child = [sys.executable, __file__, "--variant", name, "--result", str(result), "--zoo", args.zoo]
            child += [f"--group={g}" for g in groups] + [f"--dev-limit={args.dev_limit}", f"--threads={args.threads}"]
            child += [f"--devtest-limit={args.devtest_limit}"] if args.devtest_limit else []
            child += [f"--keep-cache={args.keep_cache}"] if args.keep_cache else []
            subprocess.run(child, check=True)
            out["runs"][name] = json.loads(result.read_text(encoding="utf-8"))
    base, default = out["runs"]["baseline"], out["runs"]["default"]
    out["shared_rows_agree"] = shared_rows_agree(base.pop("tables"), default.pop("tables"))
    print(json.dumps(out, indent=1))
    for name, run in out["runs"].items():
        print(
            f"| {name} | {run['points']} points, {run['distinct_merges']} merges on dev ({run['merges']} built in all) "
            f"| {run['directions']} directions, {run['sentences']} sentences "
            f"| {run['dev_s']} s ({run['dev_cpu_s']} CPU-s) | {run['devtest_s']} s ({run['devtest_cpu_s']} CPU-s) "
            f"| {run['wall_s']} s ({run['cpu_s']} CPU-s) |"
        )


if __name__ == "__main__":
    main()
