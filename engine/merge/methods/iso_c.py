"""Iso-C: merge in the common subspace of the summed task vectors with a flat (isotropic)
spectrum. Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces", ICML 2025, arXiv 2502.04959.

For each weight matrix, with the summed task vectors Σ_i Δ_i = U Σ Vᵀ (r singular values):

    merged = base + λ · σ̄ U Vᵀ,   σ̄ = (1/r) Σ_j σ_j

so every direction of the common subspace gets the same weight and no task's dominant
directions drown the others'. Fallback (engine.merge.subspace): 1-D tensors, embeddings and
output heads get base + λ · mean_i Δ_i, the paper's rule for non-matrix parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.merge.spec import BaseUse, MethodSpec, Param
from engine.merge.subspace import decomposes, finish, svd, task_vectors


def isotropic(u: torch.Tensor, s: torch.Tensor, vt: torch.Tensor) -> torch.Tensor:
    """mean(s) · U Vᵀ: the matrix with U's and V's directions and a flat spectrum of the same mean."""
    return s.mean() * (u @ vt)


def merge(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    *,
    tensor_name: str = "",
    seed: int = 0,
    **params,
) -> torch.Tensor:
    deltas = task_vectors(base, models)  # (T, *shape)
    if not decomposes(base, tensor_name):
        return finish(base, deltas.mean(0), params["lambda"])
    u, s, vt = svd(deltas.sum(0), tensor_name)
    return finish(base, isotropic(u, s, vt), params["lambda"])


SPEC = MethodSpec(
    name="iso_c",
    display_name="Iso-C",
    paper="https://arxiv.org/abs/2502.04959",
    params=(Param("lambda", float, 1.0, doc="scale of the merged task vector (the paper's α, chosen on validation)"),),
    merge=merge,
    base_use=BaseUse.REQUIRED,
    min_models=1,
    in_mergekit=False,
    by_tensor_name=True,
)
