"""Arcee Fusion: keep the other model's change only at the entries whose importance is an
outlier. Importance is |b − a| times the KL divergence between the rows' softmax distributions,
KL(softmax(b) ‖ softmax(a)) per row (1-D tensors: one row); an entry is kept when its importance
reaches median + 1.5 · IQR of the tensor's importances (Tukey's upper fence).

Arcee AI, "Arcee Fusion" (arcee.ai, 2025); mergekit's "arcee_fusion". Quantiles are the sorted
importances at index ⌊q (n − 1)⌋, taken exactly here; mergekit estimates them from a random
sample of 10⁶ entries when a tensor is larger than that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.merge.spec import BaseUse, MethodSpec, work_dtype

KL_EPS = 1e-8  # added to both distributions so log(0) never happens


def importance(base: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
    """|model − base| · KL(softmax(model) ‖ softmax(base)) along the last axis."""
    p = torch.softmax(model, dim=-1) + KL_EPS
    q = torch.softmax(base, dim=-1) + KL_EPS
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    return (model - base).abs() * kl


def upper_fence(values: torch.Tensor) -> torch.Tensor:
    """median + 1.5 · (q3 − q1), each quantile the sorted value at index ⌊q (n − 1)⌋."""
    flat = values.reshape(-1)
    last = flat.numel() - 1

    def quantile(q: float) -> torch.Tensor:
        return flat.kthvalue(int(q * last) + 1).values

    return quantile(0.5) + 1.5 * (quantile(0.75) - quantile(0.25))


def merge(base: torch.Tensor, models: Sequence[torch.Tensor], *, seed: int = 0) -> torch.Tensor:
    wd = work_dtype(base, *models)
    a, b = base.to(wd), models[0].to(wd)
    score = importance(a, b)
    keep = score >= upper_fence(score)
    return (a + (b - a) * keep).to(base.dtype)


SPEC = MethodSpec(
    name="arcee_fusion",
    display_name="Arcee Fusion",
    paper="https://arcee.ai",
    params=(),
    merge=merge,
    base_use=BaseUse.REQUIRED,
    min_models=1,
    max_models=1,
)
