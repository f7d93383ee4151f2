"""SLERP: spherical interpolation from the base (t=0) to the other model (t=1), per tensor.

Shoemake 1985, "Animating rotation with quaternion curves"; as used by mergekit for two models.
Nearly parallel tensors (|cos| > 0.9995) fall back to linear interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.merge.spec import BaseUse, MethodSpec, Param, work_dtype

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Interpolate along the great circle between v0 and v1 (flattened), in float32 or float64."""
    wd = work_dtype(v0, v1)
    a, b = v0.reshape(-1).to(wd), v1.reshape(-1).to(wd)  # (numel,)
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    na = na if na > EPS else torch.ones_like(na)
    nb = nb if nb > EPS else torch.ones_like(nb)
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if dot.abs() > DOT_THRESHOLD:
        out = (1 - t) * a + t * b
    else:
        theta = torch.acos(dot)
        out = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    return out.reshape(v0.shape)


def merge(base: torch.Tensor, models: Sequence[torch.Tensor], *, t: float, seed: int = 0) -> torch.Tensor:
    return slerp(t, base, models[0]).to(base.dtype)


SPEC = MethodSpec(
    name="slerp",
    display_name="SLERP",
    paper="https://en.wikipedia.org/wiki/Slerp",
    params=(Param("t", float, doc="0 gives the base, 1 the other model; a list is a per-layer schedule"),),
    merge=merge,
    base_use=BaseUse.REQUIRED,
    min_models=1,
    max_models=1,
)
