"""Multi-SLERP: a weighted barycentre of several tensors on the hypersphere.

Each input (or its task vector, when a base is given) is flattened and scaled to unit length;
the weighted mean of the unit vectors, normalised, is the point the sphere is flattened around.
The inputs' tangent components there are averaged with the weights and mapped back onto the
sphere by the exponential map, and the result is scaled to the weighted mean of the input norms:

    m = normalise(Σ w_i u_i),  v = Σ w_i (u_i − (u_i·m) m),  out = |x|_w (cos|v| m + sin|v| v/|v|)

mergekit's "multislerp" (C. Goddard, "Multi-SLERP", goddard.blog, 2025); spherical means after
Buss & Fillmore 2001, "Spherical averages and applications to spherical splines and interpolation".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.errors import RecipeError
from engine.merge.spec import BaseUse, MethodSpec, Param, Scope, work_dtype


def multislerp(
    vectors: torch.Tensor, weights: torch.Tensor, normalize_weights: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Barycentre of the rows of `vectors` (n, d) with `weights` (n,) on the sphere, back at their scale."""
    if normalize_weights:
        weights = weights / weights.sum()
    norms = vectors.norm(dim=1, keepdim=True)  # (n, 1)
    units = vectors / (norms + eps)
    mean = (weights[:, None] * units).sum(0)  # (d,)
    mean_norm = mean.norm()
    if mean_norm < eps:
        if len(vectors) == 2:  # antipodal pair: the sphere gives no direction, the chord does
            return weights[0] * vectors[0] + weights[1] * vectors[1]
        raise RecipeError(
            "multislerp: the weighted mean of the inputs' directions is zero (antipodal inputs whose "
            "weights cancel); change the weights"
        )
    mean = mean / mean_norm
    tangents = units - (units @ mean)[:, None] * mean  # (n, d)
    step = (weights[:, None] * tangents).sum(0)
    length = step.norm() + eps
    on_sphere = torch.cos(length) * mean + (torch.sin(length) / length) * step
    return on_sphere * (norms[:, 0] * weights).sum()


def merge(
    base: torch.Tensor | None,
    models: Sequence[torch.Tensor],
    *,
    weight: Sequence[float],
    normalize_weights: bool = True,
    eps: float = 1e-8,
    seed: int = 0,
) -> torch.Tensor:
    if len(models) == 1:  # one point is its own barycentre, with or without a base
        return models[0]
    wd = work_dtype(base, *models)
    stacked = torch.stack([m.to(wd).reshape(-1) for m in models])  # (n, numel)
    origin = base.to(wd).reshape(-1) if base is not None else None
    if origin is not None:
        stacked = stacked - origin
    out = multislerp(stacked, torch.tensor(weight, dtype=wd), normalize_weights, eps)
    if origin is not None:
        out = out + origin
    return out.reshape(models[0].shape).to(models[0].dtype)


SPEC = MethodSpec(
    name="multislerp",
    display_name="Multi-SLERP",
    paper="https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
    params=(
        Param("weight", float, scope=Scope.MODEL, doc="weight of this model in the spherical mean"),
        Param("normalize_weights", bool, True, doc="divide the weights by their sum"),
        Param("eps", float, 1e-8, doc="added to norms so zero tensors do not divide by zero"),
    ),
    merge=merge,
    base_use=BaseUse.OPTIONAL,
    min_models=1,
)
