"""NuSLERP: SLERP between two models (or their task vectors when a base is given), with the
interpolation factor from their weights, over the whole tensor or row / column-wise.

mergekit's "nuslerp" (Goddard et al. 2024, arXiv 2403.13257); SLERP after Shoemake 1985.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.merge.spec import BaseUse, MethodSpec, Param, Scope, work_dtype


def nuslerp(
    t: float, v0: torch.Tensor, v1: torch.Tensor, dim: int = -1, flatten: bool = False, eps: float = 1e-8
) -> torch.Tensor:
    """SLERP of v0→v1 by t: over all entries (flatten), or per vector along `dim`."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    u0 = v0 / v0.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / v1.norm(dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1, 1)  # (..., 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    out = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    out = torch.where(colinear, (1 - t) * v0 + t * v1, out)
    if dim != -1 and not flatten:
        out = out.transpose(dim, -1)
    return out.reshape(shape)


def merge(
    base: torch.Tensor | None,
    models: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    nuslerp_row_wise: bool = False,
    nuslerp_flatten: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    wd = work_dtype(base, *models)
    total = sum(weight)
    t = 0.5 if abs(total) < 1e-6 else weight[1] / total
    dim = 0 if nuslerp_row_wise else -1
    m0, m1 = (m.to(wd) for m in models)
    if base is None:
        return nuslerp(t, m0, m1, dim=dim, flatten=nuslerp_flatten).to(models[0].dtype)
    b = base.to(wd)
    return (b + nuslerp(t, m0 - b, m1 - b, dim=dim, flatten=nuslerp_flatten)).to(base.dtype)


SPEC = MethodSpec(
    name="nuslerp",
    display_name="NuSLERP",
    paper="https://arxiv.org/abs/2403.13257",
    params=(
        Param("weight", float, scope=Scope.MODEL, doc="relative weight; t = w2 / (w1 + w2)"),
        Param("nuslerp_row_wise", bool, False, doc="interpolate rows instead of columns"),
        Param("nuslerp_flatten", bool, True, doc="interpolate the whole tensor as one vector"),
    ),
    merge=merge,
    base_use=BaseUse.OPTIONAL,
    min_models=2,
    max_models=2,
)
