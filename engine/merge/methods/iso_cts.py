"""Iso-CTS: Iso-C with room for each task. Marczak et al., "No Task Left Behind: Isotropic
Model Merging with Common and Task-Specific Subspaces", ICML 2025, arXiv 2502.04959.

For each weight matrix (rank r, T experts): the top k singular directions of the summed task
vectors form the common subspace (k ≈ common_space_fraction · r, adjusted as the authors do so
that the rest splits evenly, s = (r − k) / T directions per task); each task vector's part
outside it, (I − U_k U_kᵀ) Δ_i, gives its top s singular directions. Stacked, the common and
task-specific directions are replaced by their nearest orthonormal matrices (polar factors)
and given a flat spectrum, the mean of all the kept singular values σ̄:

    merged = base + λ · σ̄ polar(Û) polar(V̂)ᵀ

Fallback (engine.merge.subspace): 1-D tensors, embeddings and output heads get
base + λ · mean_i Δ_i, the paper's rule for non-matrix parameters. One expert gives Iso-C.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.merge.methods.iso_c import isotropic
from engine.merge.spec import BaseUse, MethodSpec, Param
from engine.merge.subspace import decomposes, finish, polar, svd, task_vectors


def split_rank(rank: int, n_tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """(common directions, directions per task): the authors' rounding, never more than `rank` in all."""
    per_task = round((rank - int(rank * common_space_fraction)) / n_tasks)
    per_task = min(per_task, rank // n_tasks)
    return rank - per_task * n_tasks, per_task


def merge(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    *,
    tensor_name: str = "",
    seed: int = 0,
    **params,
) -> torch.Tensor:
    deltas = task_vectors(base, models)  # (T, rows, cols)
    if not decomposes(base, tensor_name):
        return finish(base, deltas.mean(0), params["lambda"])
    common, per_task = split_rank(min(base.shape), len(models), params["common_space_fraction"])
    u, s, vt = svd(deltas.sum(0), tensor_name)
    us, ss, vts = [u[:, :common]], [s[:common]], [vt[:common]]
    if per_task:
        u_c = u[:, :common]  # (rows, common)
        residual = deltas - u_c @ (u_c.T @ deltas)  # each task vector outside the common subspace
        u_t, s_t, vt_t = svd(residual, tensor_name)
        us += list(u_t[:, :, :per_task])
        ss += list(s_t[:, :per_task])
        vts += list(vt_t[:, :per_task])
    u_hat = torch.cat(us, dim=1)  # (rows, r)
    vt_hat = torch.cat(vts, dim=0)  # (r, cols)
    merged = isotropic(polar(u_hat, tensor_name), torch.cat(ss), polar(vt_hat.T, tensor_name).T)
    return finish(base, merged, params["lambda"])


def check(global_params: dict, model_params: dict) -> str | None:
    if not 0 <= global_params["common_space_fraction"] <= 1:
        return f"common_space_fraction must lie in [0, 1], got {global_params['common_space_fraction']}"
    return None


SPEC = MethodSpec(
    name="iso_cts",
    display_name="Iso-CTS",
    paper="https://arxiv.org/abs/2502.04959",
    params=(
        Param("lambda", float, 1.0, doc="scale of the merged task vector (the paper's α, chosen on validation)"),
        Param("common_space_fraction", float, 0.8, doc="share of the rank given to the common subspace (paper: 0.8)"),
    ),
    merge=merge,
    base_use=BaseUse.REQUIRED,
    min_models=1,
    check=check,
    in_mergekit=False,
    by_tensor_name=True,
)
