"""`python -m engine sweep GRID.yaml`: grid-search merges, then the paper-style table.

    python -m engine sweep GRID.yaml --out results/sweep
    python -m engine sweep GRID.yaml --dry-run        # validate and count the points only
    python -m engine sweep zoo                        # the demo zoo, small grid (--zoo-grid paper)
    python -m engine sweep GRID.yaml --backend ray    # points as Ray tasks (a local Ray, or --address)
    python -m engine sweep GRID.yaml --capture        # then capture every table model for the analyses

Ctrl-C stops after the current point; run the same command again to resume from the cache.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", help="GRID.yaml (see engine/sweep/config.py for the format), or 'zoo'")
    parser.add_argument("--zoo-grid", choices=("small", "paper"), default="small", help="grid for 'zoo'")
    parser.add_argument("--out", default="sweep-results", help="folder for table.md, table.csv, points.csv")
    parser.add_argument("--device", help="auto, cpu or cuda (default: MERGESCOPE_DEVICE)")
    parser.add_argument("--no-cache", action="store_true", help="recompute every score (no resuming)")
    parser.add_argument("--backend", choices=("local", "ray"), help="where points run (default: MERGESCOPE_BACKEND)")
    parser.add_argument(
        "--address",
        help="Ray cluster address for --backend ray (default: MERGESCOPE_RAY_ADDRESS; "
        "none: a local Ray started for this run)",
    )
    parser.add_argument(
        "--capture",
        action="store_true",
        help="after the table, capture span activations of its models on devtest (one job each)",
    )
    parser.add_argument(
        "--own-direction-only",
        action="store_true",
        help="score each expert on its own direction only, not on every direction of its group "
        "(GRID.yaml's each_expert: false)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate everything and list the points, merge nothing")


def run(args: argparse.Namespace) -> int:
    from engine.settings import ZOO_DIR
    from engine.sweep import from_dict, load, open_backend, run_sweep, table_markdown, write_sweep, zoo_grid

    if args.grid == "zoo" and not Path(args.grid).is_file():
        config = from_dict(zoo_grid(ZOO_DIR, args.zoo_grid), ZOO_DIR, source=f"demo zoo ({args.zoo_grid} grid)")
    else:
        config = load(args.grid)
    if args.own_direction_only:
        config.each_expert = False
    if args.dry_run:
        dry_run(config)
        return 0

    stop_requested = False

    def on_interrupt(signum, frame):
        nonlocal stop_requested
        if stop_requested:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        stop_requested = True
        log.warning("stopping after the current step (Ctrl-C again to abort)")

    started = time.monotonic()
    with open_backend(args.backend, args.address) as backend:
        previous = signal.signal(signal.SIGINT, on_interrupt)
        try:
            result = run_sweep(
                config,
                device=args.device,
                use_cache=not args.no_cache,
                backend=backend,
                should_stop=lambda: stop_requested,
                progress=lambda done, total, msg: log.info("[%d/%d] %s", done, total, msg),
            )
            if args.capture and result.tables and not stop_requested:
                capture_table_models(result, backend, args.device, lambda: stop_requested)
        finally:
            signal.signal(signal.SIGINT, previous)
        log.info("%d job(s) sent to the %s backend", backend.submitted, backend.name)
    for path in write_sweep(result, args.out):
        log.info("wrote %s", path)
    log.info("sweep took %.1f s; %d point(s) failed", time.monotonic() - started, len(result.failed))
    if result.tables:
        sys.stdout.write(table_markdown(result))
    return 1 if result.stopped or stop_requested else 0


def dry_run(config) -> None:
    """Validate everything, then list the points, the distinct merges among them and the expert rows."""
    from engine.sweep import point_results, preflight

    points = point_results(config, preflight(config)[0])
    for method in config.grids:
        of_method = [p for p in points if p.point.method == method]
        distinct = sum(not p.same_as for p in of_method)
        print(f"{method}: {len(of_method)} point(s), {distinct} distinct merge(s)")
    distinct = sum(not p.same_as for p in points)
    print(
        f"{len(points)} points, {distinct} distinct merges over {len(config.groups)} group(s): "
        f"{', '.join(config.groups)} (points whose recipes differ only in weights that normalize cancels "
        "are merged and scored once)"
    )
    scope = "every direction of its group" if config.each_expert else "its own direction"
    cells = sum(len(g) ** 2 if config.each_expert else len(g) for g in config.groups.values())
    print(f"table: each expert scored on {scope} ({cells} expert × direction scores on devtest)")


def capture_table_models(result, backend, device, should_stop) -> None:
    from engine.sweep.captures import capture_many, table_capture_jobs

    jobs = table_capture_jobs(result, backend.device(device))
    outcomes = capture_many(
        jobs,
        backend,
        should_stop=should_stop,
        progress=lambda done, total, msg: log.info("[%d/%d] %s", done, total, msg),
    )
    for job, outcome in zip(jobs, outcomes):
        if isinstance(outcome, BaseException):
            log.warning(
                "capture of %s on %s failed: %s: %s", job.name, job.pairs.direction, type(outcome).__name__, outcome
            )
    log.info("captures: %d of %d in the cache", sum(isinstance(o, str) for o in outcomes), len(jobs))
