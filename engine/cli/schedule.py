"""`python -m engine schedule`: depth-scheduled recipes as mergekit YAML (engine.patch.schedules).

    python -m engine schedule lines --base zoo/models/base --models zoo/models/expert-en-es \
        zoo/models/expert-en-de --alpha 0.1 --beta 0.4 --out lines.yaml
    python -m engine schedule swap --outer zoo/models/expert-en-es --inner zoo/models/expert-en-de \
        --bottom 2 --top 2 --transition 1 --out swap.yaml

The YAML runs with `python -m engine merge` and with mergekit alike.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    lines = kinds.add_parser("lines", help="LiNeS: task arithmetic with weights α + β · depth")
    lines.add_argument("--base", required=True, metavar="PATH")
    lines.add_argument("--models", nargs="+", required=True, metavar="PATH", help="the experts")
    lines.add_argument("--alpha", type=float, required=True, help="weight of the first block (and outside the blocks)")
    lines.add_argument("--beta", type=float, required=True, help="added weight at the last block")
    swap = kinds.add_parser(
        "swap", help="layer swapping: bottom and top blocks from one model, the middle from another"
    )
    swap.add_argument("--outer", required=True, metavar="PATH", help="the model giving the bottom and top blocks")
    swap.add_argument("--inner", required=True, metavar="PATH", help="the model giving the middle blocks")
    swap.add_argument("--bottom", type=int, required=True)
    swap.add_argument("--top", type=int, required=True)
    swap.add_argument("--transition", type=int, default=0, help="blocks averaged just inside each swapped zone")
    swap.add_argument("--outside", choices=("outer", "inner"), default="outer", help="who gives embedding, norm, head")
    for sub in (lines, swap):
        sub.add_argument("--dtype", choices=("float32", "float16", "bfloat16"))
        sub.add_argument("--out", metavar="FILE.yaml", help="write the recipe here (stdout otherwise)")


def run(args: argparse.Namespace) -> int:
    from engine.checkpoints import open_checkpoint
    from engine.patch.schedules import layer_swap_recipe, lines_recipe

    if args.kind == "lines":
        layers = open_checkpoint(args.base).summary.layers
        recipe = lines_recipe(args.base, args.models, layers, args.alpha, args.beta, args.dtype)
    else:
        layers = open_checkpoint(args.outer).summary.layers
        recipe = layer_swap_recipe(
            args.outer, args.inner, layers, args.bottom, args.top, args.transition, args.outside, args.dtype
        )
    if args.out:
        recipe.save(Path(args.out))
    else:
        sys.stdout.write(recipe.to_yaml())
    return 0
