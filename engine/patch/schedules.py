"""Depth schedules as per-layer weight lists of ordinary recipes, so they run here and in mergekit.

- LiNeS (Wang et al., ICLR 2025, "LiNeS: Post-training Layer Scaling Prevents Forgetting and
  Enhances Model Merging"): block l of L (0-based) gets its task vector scaled by
  λ(l) = α + β · l / (L − 1), growing linearly with depth; as a task-arithmetic recipe, every
  expert's `weight` is that list (the registered method `lines` merges the same in one step).
- Layer swapping (Bandarkar et al., ICLR 2025, "Layer Swapping for Zero-Shot Cross-Lingual
  Transfer in Large Language Models"): the bottom and top blocks from one model, the rest from
  another, with an optional transition zone on each inner edge where the two are averaged; as a
  linear recipe of the two models with complementary 0 / ½ / 1 weight lists.

A list of L values gives block l exactly its l-th value (the executor and mergekit interpolate
over l / (L − 1)). Tensors outside the blocks sit at position 0 in both: under LiNeS they get α;
under layer swapping a tensor-name filter gives them to the model chosen by `outside`.
"""

from __future__ import annotations

from engine.errors import RecipeError
from engine.merge.methods.lines import lines_scale
from engine.merge.params import block_position


def lines_schedule(num_layers: int, alpha: float, beta: float) -> list[float]:
    """λ(l) = α + β · l / (L − 1) for l = 0 … L − 1 (one value for a one-block model: α + β)."""
    if num_layers < 1:
        raise RecipeError(f"LiNeS needs at least one block, got {num_layers}")
    return [lines_scale(block_position(layer, num_layers), alpha, beta) for layer in range(num_layers)]


def lines_recipe(base: str, experts: list[str], num_layers: int, alpha: float, beta: float, dtype: str | None = None):
    """A task-arithmetic recipe over `experts` on `base` whose weights follow the LiNeS schedule."""
    from engine import recipe as recipes

    weights = lines_schedule(num_layers, alpha, beta)
    data = {
        "merge_method": "task_arithmetic",
        "base_model": base,
        "models": [{"model": e, "parameters": {"weight": list(weights)}} for e in experts],
        **({"dtype": dtype} if dtype else {}),
    }
    return recipes.from_dict(data, source=f"LiNeS alpha={alpha:g} beta={beta:g}")


def swap_weights(num_layers: int, bottom: int, top: int, transition: int = 0) -> list[float]:
    """Per-block weight of the outer model: 1 on the bottom and top blocks, ½ in the transition
    zones just inside them, 0 in the middle; RecipeError when the zones overlap or leave the stack."""
    if min(bottom, top, transition) < 0:
        raise RecipeError(
            f"layer swap: bottom, top and transition must be 0 or more, got {bottom}, {top}, {transition}"
        )
    if bottom + top + 2 * transition > num_layers:
        raise RecipeError(
            f"layer swap: {bottom} bottom + {top} top blocks and two transition zones of {transition} "
            f"exceed the model's {num_layers} blocks"
        )
    weights = [0.0] * num_layers
    for layer in range(num_layers):
        if layer < bottom or layer >= num_layers - top:
            weights[layer] = 1.0
        elif layer < bottom + transition or layer >= num_layers - top - transition:
            weights[layer] = 0.5
    return weights


def layer_swap_recipe(
    outer: str,
    inner: str,
    num_layers: int,
    bottom: int,
    top: int,
    transition: int = 0,
    outside: str = "outer",
    dtype: str | None = None,
):
    """A linear recipe: `outer`'s bottom and top blocks, `inner`'s middle, averaged transitions.

    `outside` ('outer' or 'inner') names the model the embedding, final norm and LM head come from.
    """
    from engine import recipe as recipes

    if outside not in ("outer", "inner"):
        raise RecipeError(f"layer swap: outside must be 'outer' or 'inner', got {outside!r}")
    weights = swap_weights(num_layers, bottom, top, transition)
    rest = 1.0 if outside == "outer" else 0.0

    def setting(blocks: list[float], others: float) -> list[dict]:
        return [{"filter": "layers.", "value": blocks}, {"value": others}]

    data = {
        "merge_method": "linear",
        "models": [
            {"model": outer, "parameters": {"weight": setting(weights, rest)}},
            {"model": inner, "parameters": {"weight": setting([1.0 - w for w in weights], 1.0 - rest)}},
        ],
        **({"dtype": dtype} if dtype else {}),
    }
    return recipes.from_dict(data, source=f"layer swap bottom={bottom} top={top} transition={transition}")
