"""Top-k singular subspaces of a task-vector matrix, found from its row blocks, and their overlap.

The overlap of two k-dimensional subspaces with orthonormal bases A and B is the mean squared
cosine of their principal angles, ‖AᵀB‖²_F / k: 1 for the same subspace, 0 for orthogonal ones,
about k / d for random ones in d dimensions. For a task vector τ = U S Vᵀ the output-side (U) and
input-side (V) overlaps are averaged, as task-singular-vector merging reads interference from both
(Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging", CVPR 2025).

The subspaces come from a randomized SVD (Halko, Martinsson & Tropp 2011, "Finding structure with
randomness", Algorithm 4.4) that touches the matrix only through products with its row blocks,
so a streamed tensor is never held whole: 2 + 2 · power_iters passes over the blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

OVERSAMPLE = 8  # extra random directions: the top-k subspace is found far more accurately with a few spare

ChunkFn = Callable[[], Iterator[torch.Tensor]]  # replays the matrix's row blocks, in order


def _times(chunks: ChunkFn, right: torch.Tensor) -> torch.Tensor:
    """A @ right, A given by its row blocks: (rows, q)."""
    return torch.cat([block @ right for block in chunks()])


def _transpose_times(chunks: ChunkFn, left: torch.Tensor) -> torch.Tensor:
    """Aᵀ @ left, A given by its row blocks: (cols, q)."""
    out, row = None, 0
    for block in chunks():
        part = block.T @ left[row : row + block.shape[0]]
        out = part if out is None else out.add_(part)
        row += block.shape[0]
    return out


def singular_subspaces(
    chunks: ChunkFn, shape: tuple[int, int], k: int, power_iters: int = 1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Orthonormal bases (U: (rows, k), V: (cols, k)) of the top-k left and right singular subspaces
    of the matrix whose row blocks `chunks` yields; None for a zero matrix, which has none."""
    rows, cols = shape
    if not 1 <= k <= min(rows, cols):
        raise ValueError(f"rank k must lie in 1..{min(rows, cols)} for a {rows}×{cols} matrix, got {k}")
    first = next(iter(chunks()))
    q = min(k + OVERSAMPLE, rows, cols)
    generator = torch.Generator(device=first.device).manual_seed(seed)
    omega = torch.randn(cols, q, generator=generator, dtype=first.dtype, device=first.device)
    y = _times(chunks, omega)  # (rows, q)
    for _ in range(power_iters):  # each round sharpens the spectrum's decay: σ^(2i+1)
        z = torch.linalg.qr(_transpose_times(chunks, torch.linalg.qr(y).Q)).Q  # (cols, q)
        y = _times(chunks, z)
    basis = torch.linalg.qr(y).Q  # (rows, q)
    small = _transpose_times(chunks, basis).T  # (q, cols) = basisᵀ A
    u_small, s, vt = torch.linalg.svd(small, full_matrices=False)
    if not float(s[0]) > 0:
        return None
    return basis @ u_small[:, :k], vt[:k].T


def subspace_overlap(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean squared principal-angle cosine of two (U, V) pairs of k-dimensional bases, U and V averaged."""
    k = a[0].shape[1]
    left = float((a[0].T @ b[0]).pow(2).sum())
    right = float((a[1].T @ b[1]).pow(2).sum())
    return (left + right) / (2 * k)
