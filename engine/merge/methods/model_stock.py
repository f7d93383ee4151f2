"""Model Stock: average the fine-tunes, then pull towards the base by a ratio set by the angle
between their task vectors. Jang et al. 2024, arXiv 2403.19522.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.merge.spec import BaseUse, MethodSpec, Param, work_dtype


def merge(
    base: torch.Tensor, models: Sequence[torch.Tensor], *, filter_wise: bool = False, seed: int = 0
) -> torch.Tensor:
    wd = work_dtype(base, *models)
    w0, ws = base.to(wd), [m.to(wd) for m in models]
    if filter_wise:  # one ratio per output row
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:  # one ratio per tensor
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-6)
            cosines.append(((a * b).sum(dim=-1) / norms).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)  # (rows, 1) or (1,)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    # At cos = -1/(n-1) the ratio is undefined: keep the base there rather than blow up.
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, 0, n * cos / torch.where(singular, 1, denominator))
    merged = t * (sum(ws) / n) + (1 - t) * w0
    return merged.reshape(base.shape).to(base.dtype)


SPEC = MethodSpec(
    name="model_stock",
    display_name="Model Stock",
    paper="https://arxiv.org/abs/2403.19522",
    params=(Param("filter_wise", bool, False, doc="one interpolation ratio per row instead of per tensor"),),
    merge=merge,
    base_use=BaseUse.REQUIRED,
    min_models=2,
)
