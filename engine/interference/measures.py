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
from engine.merge.sparsify import TopK, top_k
from engine.merge.spec import TensorSource, work_dtype

SLICE = 1 << 16  # entries per expert in one step of the sums: a step's temporaries stay in the CPU cache
EXACT_BELOW = 1 << 16  # tensors this small find TIES's threshold among all their entries, no sample
SAMPLE_ENTRIES = 1 << 14  # |τ| entries sampled per expert to bracket the threshold of a larger tensor


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


def _delta_slices(base: torch.Tensor, experts: list[torch.Tensor], wd: torch.dtype):
    """(base slice, task-vector slice (experts, entries)) in `wd` over flat tensors in their stored
    dtype; the second lives in one buffer reused from slice to slice, so a caller keeps nothing of it
    beyond the step. A stored bf16 expert minus the `wd` base promotes to `wd` inside the subtraction,
    so converting costs no pass of its own."""
    buffer = torch.empty((len(experts), min(SLICE, base.numel())), dtype=wd, device=base.device)
    for start in range(0, base.numel(), SLICE):
        part_base = base[start : start + SLICE].to(wd)
        part = buffer[:, : part_base.numel()]
        for i, expert in enumerate(experts):
            torch.sub(expert[start : start + SLICE], part_base, out=part[i])
        yield part_base, part


def _brackets(samples: torch.Tensor, k: int, numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) per expert, each (experts, 1): sample quantiles around the share kept, 5 binomial sigmas
    wide (engine.merge.sparsify brackets a merge's threshold the same way), so the k-th largest |τ_i|
    almost surely lies inside and only the few entries inside are searched."""
    m = samples.shape[1]
    below = 1 - k / numel
    margin = 5 * math.sqrt(max(below * (1 - below), 1 / m) / m) + 2 / m
    ordered = samples.sort(dim=1).values
    lo = ordered[:, max(0, math.floor((below - margin) * (m - 1)))]
    hi = ordered[:, min(m - 1, math.ceil((below + margin) * (m - 1)))]
    return lo[:, None], hi[:, None]


def _exact_rules(magnitude: np.ndarray, k: int) -> list[TopK]:
    """The keep rules of engine.merge.sparsify.top_k from every |τ_i| of a tensor, (experts, entries)
    in float32: the same threshold and the same tie rule."""
    return [_rule(row, 0, k) for row in magnitude]


def _rule(candidates: np.ndarray, above: int, k: int) -> TopK | None:
    """engine.merge.sparsify's keep rule from the entries above a bracket and those inside it (float32);
    None when the k-th largest is not inside."""
    need = k - above
    if not 1 <= need <= candidates.size:
        return None
    # kthvalue, not np.partition: a bracket's |τ| of bf16 checkpoints repeat a few hundred values,
    # where partition takes about twice as long.
    threshold = float(torch.from_numpy(candidates).kthvalue(candidates.size - need + 1).values)
    greater = above + int(np.count_nonzero(candidates > threshold))
    equal = int(np.count_nonzero(candidates == threshold))
    return TopK(int(np.float32(threshold).view(np.int32)), k - greater, all_equal_kept=k - greater == equal)


def tensor_stats(
    source: TensorSource, name: str, density: float, rank: int, power_iters: int = 1, seed: int = 0
) -> TensorStats:
    """Every sum for one tensor. `density` in (0, 1]: the share TIES keeps per expert; `rank` 0 skips subspaces.

    Two walks over the tensor's blocks (one read when it is held whole): the first forms the norms,
    cosines and sign conflicts and brackets each expert's TIES threshold; the second counts what
    TIES keeps. Sums run over cache-sized slices of each block, as stored (bf16 is converted inside
    the subtraction that forms τ). CPU tensors: the TIES candidates are selected through NumPy views.
    """
    if not 0 < density <= 1:
        raise ValueError(f"TIES density must lie in (0, 1], got {density}")
    n = source.n_models
    numel = math.prod(source.shape)
    chunks = source.row_chunks
    wd = work_dtype(source.base(0, 1))  # one row says the stored dtype

    def block(s: int, e: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(base, experts) of rows [s, e), flattened, as stored (converted slice by slice)."""
        return source.base(s, e).reshape(-1), [source.model(i, s, e).reshape(-1) for i in range(n)]

    held = block(*chunks[0]) if len(chunks) == 1 else None  # a small tensor is read once for every pass

    def blocks():
        return iter([held]) if held is not None else (block(s, e) for s, e in chunks)

    def expert_chunks(i: int):
        if held is not None:
            delta = (held[1][i].to(wd) - held[0].to(wd)).reshape(source.shape)
            return lambda: iter([delta])
        return lambda: (source.model(i, s, e).to(wd) - source.base(s, e).to(wd) for s, e in chunks)

    keep_count = max(1, int(density * numel))  # as TIES's magnitude sparsifier counts
    exact = numel < EXACT_BELOW  # every |τ_i| is kept for one batched kthvalue
    if not exact and keep_count < numel:
        lo, hi = (bound.numpy() for bound in _brackets(_sample(source, held, wd, numel), keep_count, numel))

    base_sq = mass = conflict_mass = 0.0
    conflict_entries = 0
    gram = torch.zeros(n, n, dtype=torch.float64)
    above = [0] * n
    inside: list[list[torch.Tensor]] = [[] for _ in range(n)]
    # Per-slice temporaries live in buffers reused from slice to slice: a fresh megabyte-sized tensor
    # per step costs the page faults of a new allocation, about as much as the arithmetic on it.
    width = min(SLICE, numel)
    magnitude_buffer = torch.empty((n, width), dtype=wd)
    for base, experts in blocks():
        for part_base, part in _delta_slices(base, experts, wd):
            base_sq += float(torch.dot(part_base, part_base))
            gram += (part @ part.T).to(torch.float64)
            magnitude = torch.abs(part, out=magnitude_buffer[:, : part.shape[1]])
            entry_mass = magnitude.sum(0)  # (entries,)
            mass += float(entry_mass.sum())  # a slice's float32 sum; slices add in float64
            # 1 where the largest τ is > 0 and the smallest < 0 (sign difference 2), else 0: float
            # arithmetic, as comparisons producing bool cost several times more per entry.
            conflict = part.amax(0).sign_().sub_(part.amin(0).sign_()).sub_(1).clamp_(min=0)
            conflict_entries += int(conflict.sum())
            conflict_mass += float(torch.dot(entry_mass, conflict))
            if keep_count >= numel:
                continue
            if exact:
                inside[0].append(magnitude.clone())
                continue
            # NumPy's comparisons and boolean indexing run several times faster than torch's on the CPU;
            # `magnitude` is this slice's own tensor, so its NumPy view is safe to select from.
            values = magnitude.numpy()
            for i, count in enumerate(np.count_nonzero(values > hi, axis=1).tolist()):
                above[i] += count
            candidate = values >= lo
            candidate &= values <= hi
            for i in range(n):
                inside[i].append(values[i][candidate[i]])
    if keep_count >= numel:
        rules = [TopK(0, 0, keep_all=True)] * n
    elif exact:
        rules = _exact_rules(torch.cat(inside[0], dim=1).to(torch.float32).numpy(), keep_count)
    else:
        rules = [_rule(np.concatenate(inside[i]).astype(np.float32), above[i], keep_count) for i in range(n)]
        # A sample that misled the bracket: the exact radix select of a merge's sparsifier.
        rules = [rule or top_k(expert_chunks(i), keep_count, numel) for i, rule in enumerate(rules)]
    del inside

    ties_kept_entries, ties_kept_mass = 0, 0.0
    thresholds = torch.tensor(
        [-math.inf if r.keep_all else _float_of(r.bits) for r in rules], dtype=torch.float32
    ).reshape(n, 1)
    # A rule with ties to break keeps what lies above its threshold plus the first `ties` entries equal
    # to it in flat order (engine.merge.sparsify.top_k_masks), counted down across slices.
    remaining = {i: r.ties for i, r in enumerate(rules) if not (r.keep_all or r.all_equal_kept)}
    side_buffer, kept_buffer = (torch.empty((n, width), dtype=torch.float32) for _ in range(2))
    for base, experts in blocks():
        for _, part in _delta_slices(base, experts, wd):
            side = (
                side_buffer[:, : part.shape[1]].copy_(part).abs_().sub_(thresholds).sign_()
            )  # -1 below, 0 at, 1 above
            kept = torch.add(side, 1, out=kept_buffer[:, : part.shape[1]]).clamp_(max=1)  # 1 where |τ| >= threshold
            for i in remaining:
                # While the slice's ties fit in what is left to keep, all of them are kept; the slice where
                # they overflow keeps the first ones by position, and later slices only what lies above.
                tied_here = side.shape[1] - int(side[i].abs().sum())
                if tied_here <= remaining[i]:
                    remaining[i] -= tied_here
                    continue
                kept[i] = side[i].clamp(min=0)
                if remaining[i] > 0:
                    kept[i, (side[i] == 0).nonzero().squeeze(1)[: remaining[i]]] = 1
                    remaining[i] = 0
            trimmed = part.mul_(kept)
            # The elected sign is sign(sign(sum) + 0.5): a zero sum elects +. τ times it is positive
            # where an entry agrees, so what TIES keeps is where this is > 0, and |τ| there is this
            # value; trimmed-out zeros never agree.
            elected = trimmed.sum(0).sign_().add_(0.5).sign_()
            agreeing = trimmed.mul_(elected).clamp_(min=0)
            ties_kept_mass += float(agreeing.sum())
            ties_kept_entries += int(agreeing.sign_().sum())

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
        gram.numpy(),
        mass,
        conflict_entries,
        conflict_mass,
        ties_kept_entries,
        ties_kept_mass,
        subspace,
        k,
    )


def _float_of(bits: int) -> float:
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32))


def _sample(source: TensorSource, held, wd: torch.dtype, numel: int) -> torch.Tensor:
    """|τ_i| at entries spread over the tensor: (experts, entries), strided when held, whole rows when streamed."""
    if held is not None:
        base, experts = held
        step = max(1, numel // SAMPLE_ENTRIES)
        return torch.stack([x[::step].to(wd) - base[::step].to(wd) for x in experts]).abs()
    rows = source.row_chunks[-1][1]
    picks = sorted({r * rows // SAMPLE_ROWS for r in range(SAMPLE_ROWS)})
    parts = []
    for r in picks:
        base = source.base(r, r + 1).to(wd)
        parts.append(torch.stack([source.model(i, r, r + 1).to(wd) - base for i in range(source.n_models)]))
    return torch.cat([p.reshape(source.n_models, -1) for p in parts], dim=1).abs()
