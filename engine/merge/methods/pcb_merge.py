"""PCB-Merging: weight every entry of every task vector by its importance within its task
(intra-balancing) and its agreement with the other tasks (inter-balancing), drop the low
scores, and average with the remaining weights. Du et al., "Parameter Competition Balancing
for Model Merging", NeurIPS 2024, arXiv 2410.02396; the formulas follow the authors'
released code (github.com/duguodong7/pcb-merging), which the paper's results come from.

With T task vectors δ_i over D entries (outliers of |δ_i| clipped to its 1e-4 and 1 − 1e-4
quantiles, signs kept; Norm = min-max scaling over the D entries of one task):

    intra_i = exp(T · Norm(|δ_i|)²)                 (a softmax over entries, up to a constant)
    inter_i = tanh(δ_i ⊙ Σ_j δ_j)
    β_i     = Norm(max(intra_i ⊙ inter_i, q_i))     q_i = the (1 − density) quantile of the product
    merged  = base + λ · Σ_i β_i ⊙ δ_i / Σ_i β_i

so each task keeps the top `density` share of its entries (the paper's ratio r), weighted by
how far above the cut they score. Entries no task keeps stay at the base.

Applied per tensor, where the authors flatten the whole model into one vector: the quantiles
and the min-max scaling are then per tensor, which keeps the merge streaming tensor by tensor.
A tensor whose scores are all equal (e.g. every expert equals the base there) gets weight 0
everywhere, i.e. the base, where the authors' 0/0 would give NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.merge.spec import BaseUse, MethodSpec, Param
from engine.merge.subspace import finish, task_vectors

OUTLIER_QUANTILE = 1e-4  # |δ| beyond these quantiles is clipped (the authors' setting)


def _kth(x: torch.Tensor, index: int) -> torch.Tensor:
    """Per row of x (n, D): the value at position `index` of the row sorted ascending, as (n, 1)."""
    return torch.kthvalue(x, index + 1, dim=1, keepdim=True).values


def _min_max(x: torch.Tensor) -> torch.Tensor:
    """Per row: (x − min) / (max − min); a constant row gives zeros."""
    low = x.min(dim=1, keepdim=True).values
    span = x.max(dim=1, keepdim=True).values - low
    return torch.where(span > 0, (x - low) / torch.where(span > 0, span, 1), 0)


def merge(base: torch.Tensor, models: Sequence[torch.Tensor], *, seed: int = 0, **params) -> torch.Tensor:
    density, lambda_ = params["density"], params["lambda"]
    deltas = task_vectors(base, models).reshape(len(models), -1)  # (T, D)
    n, d = deltas.shape
    magnitude = deltas.abs()
    low, high = int(d * OUTLIER_QUANTILE), max(0, int(d * (1 - OUTLIER_QUANTILE) - 1))
    magnitude.clamp_(_kth(magnitude, low), _kth(magnitude, high))
    # In place where possible: the stacked task vectors are the working set, T copies of the tensor each.
    score = _min_max(magnitude).square_().mul_(n).exp_()  # intra-balancing
    score.mul_(torch.tanh(deltas * deltas.sum(0)))  # inter-balancing
    cut = _kth(score, min(d - 1, int(d * (1 - density))))
    weight = _min_max(score.clamp_(min=cut))  # 0 at and below the cut
    del score
    merged = (weight * magnitude.mul_(deltas.sign_())).sum(0) / weight.sum(0).clamp(min=1e-12)
    return finish(base, merged.reshape(base.shape), lambda_)


def check(global_params: dict, model_params: dict) -> str | None:
    if not 0 < global_params["density"] <= 1:
        return f"density must lie in (0, 1], got {global_params['density']}"
    return None


SPEC = MethodSpec(
    name="pcb_merge",
    display_name="PCB-Merging",
    paper="https://arxiv.org/abs/2410.02396",
    params=(
        Param("density", float, 0.1, doc="share of each task vector's entries kept (the paper's ratio r)"),
        Param("lambda", float, 1.0, doc="scale of the merged task vector"),
    ),
    merge=merge,
    base_use=BaseUse.REQUIRED,
    min_models=1,
    check=check,
    in_mergekit=False,
)
