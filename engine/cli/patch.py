"""`python -m engine patch`: the routed layer-patching experiment on a recipe's merge.

    python -m engine patch examples/task-arithmetic-x-en.yaml --layers last:3+norm --controls 5 \
        --data zoo/data/devtest --limit 100 --out report.md

Each direction is scored with the merge whose chosen blocks come from that direction's expert
(the recipe's models, routed by the direction in their names), beside random controls of the same
size, the merge, the expert and the base.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.errors import DataError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", metavar="RECIPE.yaml", help="mergekit YAML of the merge to patch")
    parser.add_argument(
        "--layers",
        nargs="+",
        default=["last:3+norm"],
        metavar="SET",
        help="routed layer sets: last:K, first:K, all, 0,4,7 or 2-5, each optionally +embed+norm+head "
        "(default last:3+norm); several sets give one table each",
    )
    parser.add_argument("--controls", type=int, default=5, help="random controls per set (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first control (the others count up)")
    parser.add_argument(
        "--controls-from",
        choices=("rest", "stack"),
        default="rest",
        help="draw control blocks outside the routed set (the paper's, default) or from every block",
    )
    parser.add_argument("--data", nargs="+", required=True, metavar="PATH", help="JSONL parallel files or folders")
    parser.add_argument("--limit", type=int, help="first N pairs of each file only")
    parser.add_argument(
        "--export",
        metavar="DIR",
        help="also write the first routed set's patched merge as a checkpoint per direction, DIR/<direction>",
    )
    parser.add_argument(
        "--out", action="append", default=[], metavar="FILE", help=".md, .csv or .json (repeatable); stdout otherwise"
    )


def run(args: argparse.Namespace) -> int:
    from engine import recipe as recipes
    from engine.checkpoints import open_checkpoint
    from engine.cli.evaluate import load_data
    from engine.patch.experiment import experts_by_direction, run_patch_experiment
    from engine.patch.export import export_patched
    from engine.patch.layers import parse_layer_set
    from engine.patch.report import to_markdown, write_report
    from engine.patch.systems import patched_system
    from engine.pipeline.models import ModelCache
    from engine.pipeline.systems import checkpoint_system, merge_system

    for out in args.out:
        if Path(out).suffix not in (".md", ".csv", ".json"):
            raise DataError(f"{out}: output must end in .md, .csv or .json")
    if args.controls < 0:
        raise DataError(f"--controls must be 0 or more, got {args.controls}")
    if args.limit is not None and args.limit < 1:
        raise DataError(f"--limit must be a positive number of pairs, got {args.limit}")
    recipe = recipes.load(args.recipe)
    if not recipe.base_model:
        raise DataError(f"{args.recipe}: the experiment compares against the base; the recipe names no base_model")
    base = checkpoint_system(open_checkpoint(recipe.base_model))
    experts = [checkpoint_system(open_checkpoint(m.model)) for m in recipe.models if m.model != recipe.base_model]
    num_layers = base.checkpoint.summary.layers
    layer_sets = [parse_layer_set(text, num_layers) for text in args.layers]
    sets = load_data(args.data, args.limit)
    merge, models = merge_system(recipe), ModelCache()
    experiment = run_patch_experiment(
        base,
        merge,
        experts,
        sets,
        layer_sets,
        models,
        controls=args.controls,
        seed=args.seed,
        controls_from=args.controls_from,
        progress=lambda done, total, msg: log.info("[%d/%d] %s", done, total, msg),
    )
    if args.export:
        routes = experts_by_direction(experts, sets)
        for direction, expert in routes.items():
            system = patched_system(merge, expert, layer_sets[0], direction)
            log.info("wrote %s", export_patched(system, models, Path(args.export) / direction))
    for out in args.out:
        log.info("wrote %s", write_report(experiment, out))
    if not args.out:
        sys.stdout.write(to_markdown(experiment.table(), args.controls_from))
    return 0
