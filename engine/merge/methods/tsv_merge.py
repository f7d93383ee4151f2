"""TSV-Merge: keep each task vector's top singular directions, decorrelate them across tasks,
and sum. Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model
Merging", CVPR 2025, arXiv 2412.00081.

For each weight matrix with task vectors Δ_i = U_i Σ_i V_iᵀ (T experts, rank r = min(rows, cols)):
keep k = ⌊r / T⌋ singular triplets of each, stack them side by side, Û = [U_1,k … U_T,k],
V̂ = [V_1,k … V_T,k], ŝ = [σ_1,k … σ_T,k], replace Û and V̂ by their nearest orthonormal
matrices (polar factors, the "whitening" that removes interference between tasks), and

    merged = base + λ · polar(Û) diag(ŝ) polar(V̂)ᵀ

Fallback (engine.merge.subspace): 1-D tensors, embeddings and output heads, and matrices
with fewer rows or columns than experts (k would be 0) get base + λ · mean_i Δ_i, the
papers' rule for non-matrix parameters. One expert gives base + λ Δ exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.merge.spec import BaseUse, MethodSpec, Param
from engine.merge.subspace import decomposes, finish, polar, svd, task_vectors


def merge(
    base: torch.Tensor,
    models: Sequence[torch.Tensor],
    *,
    tensor_name: str = "",
    seed: int = 0,
    **params,
) -> torch.Tensor:
    lambda_ = params["lambda"]
    deltas = task_vectors(base, models)  # (T, rows, cols)
    n = len(models)
    k = min(base.shape) // n if base.dim() == 2 else 0
    if not decomposes(base, tensor_name) or k == 0:
        return finish(base, deltas.mean(0), lambda_)
    u, s, vt = svd(deltas, tensor_name)  # (T, rows, r), (T, r), (T, r, cols)
    u_hat = u[:, :, :k].permute(1, 0, 2).reshape(base.shape[0], n * k)  # (rows, T·k)
    vt_hat = vt[:, :k, :].reshape(n * k, base.shape[1])  # (T·k, cols)
    s_hat = s[:, :k].reshape(-1)  # (T·k,)
    merged = polar(u_hat, tensor_name) @ torch.diag(s_hat) @ polar(vt_hat.T, tensor_name).T
    return finish(base, merged, lambda_)


SPEC = MethodSpec(
    name="tsv_merge",
    display_name="TSV-Merge",
    paper="https://arxiv.org/abs/2412.00081",
    params=(Param("lambda", float, 1.0, doc="scale of the merged task vector (the paper's α; 1 in the paper)"),),
    merge=merge,
    base_use=BaseUse.REQUIRED,
    min_models=1,
    in_mergekit=False,
    by_tensor_name=True,
)
