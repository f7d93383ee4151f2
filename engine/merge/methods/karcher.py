"""Karcher mean: the point on the hypersphere that minimises the summed squared geodesic
distances to the inputs' directions, found by Riemannian gradient steps, then scaled to the
inputs' mean norm. Every input, the base included, counts equally.

    m ← exp_m( Σ α_i θ_i / sin θ_i · (u_i − cos θ_i m) ),  θ_i = arccos(m·u_i),  out = (Σ α_i |x_i|) m

Karcher 1977 ("Riemannian center of mass and mollifier smoothing"); as a merge method, mergekit's
"karcher" (arXiv 2603.04972). Inputs with norm ≤ tol take no part in the direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.merge.spec import BaseUse, MethodSpec, Param, work_dtype


def karcher_mean(
    vectors: Sequence[torch.Tensor], alphas: Sequence[float], max_iter: int = 10, tol: float = 1e-5
) -> torch.Tensor:
    """Weighted Karcher mean of flat vectors' directions, scaled by Σ α_i |x_i|."""
    norms = [v.norm() for v in vectors]
    kept = [i for i, n in enumerate(norms) if float(n) > tol]
    if not kept:
        return torch.zeros_like(vectors[0])
    total = sum(alphas[i] for i in kept)
    weights = [alphas[i] / total for i in kept]
    units = [vectors[i] / norms[i] for i in kept]
    mean = sum(w * u for w, u in zip(weights, units))
    mean = units[0].clone() if float(mean.norm()) < tol else mean / mean.norm()
    for _ in range(max_iter):
        gradient = torch.zeros_like(mean)
        for w, u in zip(weights, units):
            cos = torch.dot(mean, u).clamp(-1.0, 1.0)
            theta = torch.arccos(cos)
            if float(theta) < tol:  # already at this point: no pull, and θ / sin θ → 1
                continue
            gradient += w * (theta / torch.sin(theta)) * (u - cos * mean)
        step = gradient.norm()
        if float(step) < tol:
            break
        mean = torch.cos(step) * mean + torch.sin(step) * (gradient / step)
        if float(mean.norm()) > tol:
            mean = mean / mean.norm()
    return sum(a * n for a, n in zip(alphas, norms)) * mean


def merge(
    base: torch.Tensor | None,
    models: Sequence[torch.Tensor],
    *,
    max_iter: int = 10,
    tol: float = 1e-5,
    seed: int = 0,
) -> torch.Tensor:
    if len(models) == 1:
        return models[0]
    wd = work_dtype(*models)
    flat = [m.to(wd).reshape(-1) for m in models]
    out = karcher_mean(flat, [1 / len(models)] * len(models), max_iter, tol)
    return out.reshape(models[0].shape).to(models[0].dtype)


SPEC = MethodSpec(
    name="karcher",
    display_name="Karcher Mean",
    paper="https://arxiv.org/abs/2603.04972",
    params=(
        Param("max_iter", int, 10, doc="most gradient steps on the sphere"),
        Param("tol", float, 1e-5, doc="stop when the step is shorter; inputs with a smaller norm are left out"),
    ),
    merge=merge,
    base_use=BaseUse.INPUT,
    min_models=1,
)
