"""`python -m engine merge RECIPE.yaml --out DIR [--device cpu|cuda]`: run a mergekit recipe."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="mergekit YAML recipe")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to compute (default: MERGESCOPE_DEVICE, else CUDA when present)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random-dropping methods (DARE, DELLA)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--shard-size-gb", type=float, default=2.0, help="largest output shard, in GiB")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.merge import plan_merge, save_merge
    from engine.recipe import load

    recipe = load(args.recipe)
    total = sum(job.numel for job in plan_merge(recipe, args.seed).jobs)
    with tqdm(total=total, unit="param", unit_scale=True, desc=f"merge ({recipe.merge_method})",
              disable=args.no_progress) as bar:
        out = save_merge(
            recipe, args.out, device=args.device, seed=args.seed, overwrite=args.overwrite,
            progress=lambda name, n: bar.update(n), max_shard_bytes=int(args.shard_size_gb * 1024**3),
        )
    print(out)
    return 0
