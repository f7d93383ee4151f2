"""Sums over one tensor's task vectors τ_i = θ_i − θ_base from which every interference measure
is formed, read from a TensorSource row block by row block (as merges read checkpoints).

Per tensor: Σ θ_base², the Gram matrix Σ τ_i τ_j (norms and cosines), the entries where the
experts disagree in sign and their |τ| mass (what TIES's sign election acts on), what TIES at a
given density keeps (Yadav et al. 2023, arXiv 2306.01708: per expert the top `density` share of
|τ_i| by magnitude, then only entries agreeing with the sign of the trimmed sum), and for matrices
the overlap of the experts' top-k singular subspaces (engine/interference/subspace.py).
Sums add over tensors, so a block's measures are formed from its tensors' sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.interference.subspace import singular_subspaces, subspace_overlap
from engine.merge.generalized import SAMPLE_ROWS
from engine.merge.sparsify import TopK, top_k, top_k_masks
from engine.merge.spec import TensorSource, work_dtype


@dataclass
class TensorStats:
    """One tensor's sums over its entries (experts in source order)."""

    name: str
    numel: int
    base_sq: float  # Σ θ_base²
    gram: np.ndarray  # (experts, experts): Σ τ_i τ_j
    mass: float  # Σ over entries and experts of |τ_i|
    conflict_entries: int  # entries where some τ_i > 0 and some τ_j < 0
    conflict_mass: float  # Σ |τ_i| over those entries
    ties_kept_entries: int  # (expert, entry) pairs TIES keeps: trimmed in, and agreeing with the elected sign
    ties_kept_mass: float  # Σ |τ_i| over those pairs
    subspace: np.ndarray | None  # (experts, experts) overlap of top-k singular subspaces; None: not a matrix
    rank: int  # k of the subspaces (0 when none)


def subspace_rank(shape: tuple[int, ...], rank: int) -> int:
    """k for a tensor: `rank`, at most half its smaller side (a subspace filling the space says nothing)."""
    if len(shape) != 2:
        return 0
    return min(rank, min(shape) // 2)


def _held_top_k(deltas: torch.Tensor, k: int) -> list[TopK]:
    """The keep rules of engine.merge.sparsify.top_k for task vectors held in memory, (experts, entries),
    all experts in one kthvalue: the same threshold and the same tie rule, without its passes."""
    if k >= deltas.shape[1]:
        return [TopK(0, 0, keep_all=True)] * deltas.shape[0]
    magnitude = deltas.abs().to(torch.float32)
    threshold = magnitude.kthvalue(deltas.shape[1] - k + 1, dim=1, keepdim=True).values  # (experts, 1)
    greater = (magnitude > threshold).sum(1).tolist()
    equal = (magnitude == threshold).sum(1).tolist()
    bits = threshold.view(torch.int32).reshape(-1).tolist()
    return [TopK(b, k - g, all_equal_kept=k - g == e) for b, g, e in zip(bits, greater, equal)]


def tensor_stats(
    source: TensorSource, name: str, density: float, rank: int, power_iters: int = 1, seed: int = 0
) -> TensorStats:
    """Every sum for one tensor. `density` in (0, 1]: the share TIES keeps per expert; `rank` 0 skips subspaces."""
    if not 0 < density <= 1:
        raise ValueError(f"TIES density must lie in (0, 1], got {density}")
    n = source.n_models
    numel = math.prod(source.shape)
    chunks = source.row_chunks
    wd = work_dtype(source.base(0, 1))  # one row says the stored dtype

    def block(s: int, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        base = source.base(s, e).to(wd)
        deltas = torch.empty((n,) + tuple(base.shape), dtype=wd, device=base.device)  # (experts, rows, ...)
        for i in range(n):
            torch.sub(source.model(i, s, e).to(wd), base, out=deltas[i])
        return base, deltas

    held = block(*chunks[0]) if len(chunks) == 1 else None  # a small tensor is read once for every pass

    def blocks():
        return iter([held]) if held is not None else (block(s, e) for s, e in chunks)

    def expert_chunks(i: int):
        if held is not None:
            return lambda: iter([held[1][i]])
        return lambda: (source.model(i, s, e).to(wd) - source.base(s, e).to(wd) for s, e in chunks)

    def sample(i: int) -> torch.Tensor:
        # |τ_i| at rows spread over a streamed tensor, to bracket the top-k threshold in one pass.
        rows = chunks[-1][1]
        picks = sorted({r * rows // SAMPLE_ROWS for r in range(SAMPLE_ROWS)})
        return torch.cat(
            [(source.model(i, r, r + 1).to(wd) - source.base(r, r + 1).to(wd)).reshape(-1) for r in picks]
        ).abs()

    keep_count = max(1, int(density * numel))  # as TIES's magnitude sparsifier counts
    if held is not None:
        rules = _held_top_k(held[1].reshape(n, -1), keep_count)
    else:
        rules = [top_k(expert_chunks(i), keep_count, numel, sample(i)) for i in range(n)]
    masks = [top_k_masks(rule) for rule in rules]

    base_sq = mass = conflict_mass = ties_kept_mass = 0.0
    conflict_entries = ties_kept_entries = 0
    gram = np.zeros((n, n))
    for base, deltas in blocks():
        flat = deltas.reshape(n, -1)  # (experts, entries)
        base_sq += float(base.reshape(-1).to(torch.float64).square().sum())
        gram += (flat @ flat.T).to(torch.float64).numpy()
        magnitude = flat.abs()
        entry_mass = magnitude.sum(0)  # (entries,)
        mass += float(entry_mass.sum(dtype=torch.float64))
        conflict = (flat > 0).any(0) & (flat < 0).any(0)
        conflict_entries += int(conflict.sum())
        conflict_mass += float(entry_mass[conflict].sum(dtype=torch.float64))
        trimmed = flat * torch.stack([masks[i](deltas[i]).reshape(-1) for i in range(n)])
        # The elected sign of a zero sum is +, and a trimmed-out (zero) entry never agrees, as in the merge.
        agree = torch.where(trimmed.sum(0) >= 0, trimmed > 0, trimmed < 0)  # (experts, entries)
        ties_kept_entries += int(agree.sum())
        ties_kept_mass += float((magnitude * agree).sum(dtype=torch.float64))

    k = subspace_rank(source.shape, rank)
    subspace = None
    if k:
        bases = [singular_subspaces(expert_chunks(i), source.shape, k, power_iters, seed) for i in range(n)]
        subspace = np.full((n, n), np.nan)
        for i in range(n):
            for j in range(i, n):
                if bases[i] is not None and bases[j] is not None:
                    subspace[i, j] = subspace[j, i] = subspace_overlap(bases[i], bases[j])
    return TensorStats(
        name,
        numel,
        base_sq,
        gram,
        mass,
        conflict_entries,
        conflict_mass,
        ties_kept_entries,
        ties_kept_mass,
        subspace,
        k,
    )
