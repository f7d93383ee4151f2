"""LiNeS: the merged task vector scaled per block, linearly in depth. Wang et al., "LiNeS:
Post-training Layer Scaling Prevents Forgetting and Enhances Model Merging", ICLR 2025,
arXiv 2410.17146.

    merged = base + λ(l) · Σ_i (model_i − base),   λ(l) = α + β · l / (L − 1)

for block l = 0 … L − 1 of L (a one-block model: α + β). Tensors outside the blocks (embeddings,
final norm, LM head) sit at position 0 and get α, as a mergekit per-layer weight list gives them.
The same merge as a task-arithmetic recipe with per-layer weight lists, which mergekit runs:
`python -m engine schedule lines` (engine.patch.schedules builds it from `lines_scale`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.merge.spec import BaseUse, MethodSpec, Param, work_dtype


def lines_scale(position: float, alpha: float, beta: float) -> float:
    """λ at a layer position l / (L − 1) in [0, 1] (engine.merge.params.layer_position)."""
    return alpha + beta * position


def merge(
    base: torch.Tensor, models: Sequence[torch.Tensor], *, layer_position: float, seed: int = 0, **params
) -> torch.Tensor:
    wd = work_dtype(base, *models)
    base_w = base.to(wd)
    summed = sum(m.to(wd) - base_w for m in models)  # Σ_i τ_i
    return base_w + lines_scale(layer_position, params["alpha"], params["beta"]) * summed


SPEC = MethodSpec(
    name="lines",
    display_name="LiNeS",
    paper="https://arxiv.org/abs/2410.17146",
    params=(
        Param("alpha", float, 0.1, doc="scale of the first block's (and the non-block tensors') task vector"),
        Param("beta", float, 0.4, doc="scale added linearly up to the last block"),
    ),
    merge=merge,
    base_use=BaseUse.REQUIRED,
    min_models=1,
    in_mergekit=False,
    by_layer_position=True,
)
