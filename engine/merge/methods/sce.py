"""SCE: Select the entries where the task vectors vary most, Calculate per-model weights from
their energy, Erase minority signs, then average. FuseChat-2.0, Wan et al. 2024, arXiv 2408.07990.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.merge.spec import BaseUse, MethodSpec, Param, work_dtype


def merge(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    *,
    select_topk: float = 1.0,
    int8_mask: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    if not models:
        return base
    wd = work_dtype(base, *models)
    b = base.to(wd)
    tv = torch.stack([m.to(wd) - b for m in models])  # (n, *shape)
    if select_topk < 1:
        keep = torch.zeros(b.shape, dtype=wd, device=b.device)
        if select_topk > 0:
            var = tv.var(dim=0, unbiased=False)  # (*shape)
            k = int(int(torch.count_nonzero(var)) * select_topk)
            if k > 0:
                keep.view(-1)[torch.topk(var.reshape(-1), k).indices] = 1
        tv = tv * keep
    energy = tv.square().reshape(len(models), -1).mean(dim=1)  # (n,)
    total = float(energy.sum())
    weights = torch.full_like(energy, 1 / len(models)) if abs(total) < 1e-6 else energy / total
    weights = weights.reshape((-1,) + (1,) * b.dim())
    majority = torch.where(tv.sum(0) >= 0, 1.0, -1.0).to(wd)
    kept_weights = weights * (tv.sign() == majority)  # (n, *shape)
    merged = (tv * kept_weights).sum(0) / kept_weights.sum(0).clamp(min=1e-6)
    return (b + merged).to(base.dtype)


SPEC = MethodSpec(
    name="sce",
    display_name="SCE",
    paper="https://arxiv.org/abs/2408.07990",
    params=(
        Param("select_topk", float, 1.0, doc="fraction of entries (highest variance across models) kept"),
        Param("int8_mask", bool, False, doc="mergekit memory option; no effect on results"),
    ),
    merge=merge,
    base_use=BaseUse.REQUIRED,
    min_models=0,
)
