"""Sums over one tensor's task vectors τ_i = θ_i − θ_base from which every interference measure
is formed, read from a TensorSource row block by row block (as merges read checkpoints).

Per tensor: Σ θ_base², the Gram matrix Σ τ_i τ_j (norms and cosines), the entries where the
experts disagree in sign and their |τ| mass (what TIES's sign election acts on), what TIES at a
given density keeps (Yadav et al. 2023, arXiv 2306.01708: per expert the top `density` share of
|τ_i| by magnitude, then only entries agreeing with the sign of the trimmed sum), and for matrices
the overlap of the experts' top-k singular subspaces (engine/interference/subspace.py).
Sums add over tensors, so a block's measures are formed from its tensors' sums. All but the
subspaces come from one compiled pass over each block (engine/interference/kernel.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.interference import kernel
from engine.interference.subspace import singular_subspaces, subspace_overlap
from engine.merge.generalized import SAMPLE_ROWS
from engine.merge.sparsify import TopK, top_k
from engine.merge.spec import TensorSource, work_dtype

EXACT_BELOW = 1 << 16  # tensors this small find TIES's threshold among all their entries, no sample
# |τ| entries sampled per expert to bracket the threshold of a larger tensor: a 64th of it, within these
# bounds (more samples narrow the bracket, and so what waits, at the cost of sampling).
SAMPLE_ENTRIES = (1 << 14, 1 << 16)
# Bracket half-width in binomial sigmas of the sample quantile: a narrower bracket leaves fewer entries
# waiting for the threshold, a miss (about 6e-5 per expert and tensor at 4) costs one more walk.
BRACKET_SIGMAS = 4


class NonFiniteTensorError(ValueError):
    """A tensor's sums came out NaN/Inf: some input entry is (or a square overflowed)."""


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


def _brackets(samples: np.ndarray, k: int, numel: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) per expert as float32 arrays from sampled |τ| (experts, m): the sample quantiles
    BRACKET_SIGMAS binomial sigmas either side of the share kept, so the k-th largest |τ_i| almost
    surely lies inside and only the few entries inside wait for it."""
    m = samples.shape[1]
    below = 1 - k / numel
    margin = BRACKET_SIGMAS * math.sqrt(max(below * (1 - below), 1 / m) / m) + 2 / m
    low = max(0, math.floor((below - margin) * (m - 1)))
    high = min(m - 1, math.ceil((below + margin) * (m - 1)))
    lo, hi = np.array([kernel.sample_bracket(row, low, high) for row in samples], np.float32).T
    return np.ascontiguousarray(lo), np.ascontiguousarray(hi)


def _rule(waiting: np.ndarray, low: float, high: float, above: int, k: int) -> TopK | None:
    """engine.merge.sparsify's keep rule for one expert from its count above the bracket and its waiting
    τ (those inside the bracket among them); None when the k-th largest |τ| is not inside."""
    bits, greater, equal = kernel.kth_largest_in_bracket(waiting, np.float32(low), np.float32(high), k - above)
    if bits < 0:
        return None
    greater += above
    return TopK(int(bits), k - greater, all_equal_kept=k - greater == equal)


def _kernel_inputs(base: torch.Tensor, experts: list[torch.Tensor], wd: torch.dtype):
    """Flat NumPy arrays of one kind, as kernel.fused_pass reads them: bf16 as its bits, float32 and
    float64 as they are; any other dtype, or a mix, converted to the work dtype first."""
    tensors = [t.detach().reshape(-1).cpu() for t in (base, *experts)]
    kinds = {t.dtype for t in tensors}
    if kinds == {torch.bfloat16}:
        arrays = [t.contiguous().view(torch.int16).numpy().view(np.uint16) for t in tensors]
    elif len(kinds) == 1 and kinds <= {torch.float32, torch.float64}:
        arrays = [t.contiguous().numpy() for t in tensors]
    else:
        arrays = [t.to(wd).contiguous().numpy() for t in tensors]
    return arrays[0], tuple(arrays[1:])


class _Walk:
    """kernel.fused_pass's accumulators over one walk of a tensor's blocks, and the entries it left
    waiting (in flat order) for the exact TIES thresholds."""

    def __init__(self, n: int, wd: torch.dtype, lo: np.ndarray, hi: np.ndarray):
        self.dtype = np.float64 if wd == torch.float64 else np.float32
        self.lo, self.hi = lo.astype(np.float32), hi.astype(np.float32)
        self.n, self.kernel = n, kernel.fused_pass(n)
        self.unit = self.dtype(0), self.dtype(1)  # zero and one of the work dtype, as the kernels take them
        self.sums = np.zeros(kernel.GRAM + n * n)
        self.counts = np.zeros(kernel.ABOVE + n, np.int64)
        self.pending_buffer = np.empty((n, 0), self.dtype)
        self.pending: list[np.ndarray] = []

    def add(self, base: np.ndarray, experts: tuple[np.ndarray, ...]) -> None:
        if self.pending_buffer.shape[1] < base.size:
            self.pending_buffer = np.empty((len(experts), base.size), self.dtype)
        filled = self.kernel(base, experts, self.lo, self.hi, self.sums, self.counts, self.pending_buffer, *self.unit)
        if filled:
            self.pending.append(self.pending_buffer[:, :filled].copy())

    def waiting(self) -> np.ndarray:
        """(experts, entries) τ of the entries left waiting, in flat order; the walk lets go of them."""
        pending, self.pending, self.pending_buffer = self.pending, [], np.empty((self.n, 0), self.dtype)
        if len(pending) == 1:
            return pending[0]
        return np.concatenate(pending, axis=1) if pending else np.empty((self.n, 0), self.dtype)


def _settle_ties(first: _Walk, lo, hi, keep_count: int, numel: int, walk, expert_chunks) -> tuple[int, float]:
    """(pairs TIES keeps, their Σ|τ|) over a tensor: what `first` settled plus the entries it left
    waiting, once the exact thresholds are known. A sample that misled a bracket costs the exact radix
    select of a merge's sparsifier and a second walk, where only entries at a threshold wait."""
    n = len(lo)
    waiting = first.waiting()
    rules = [_rule(waiting[i], lo[i], hi[i], int(first.counts[kernel.ABOVE + i]), keep_count) for i in range(n)]
    settled = first
    if any(rule is None for rule in rules):
        del waiting
        rules = [rule or top_k(expert_chunks(i), keep_count, numel) for i, rule in enumerate(rules)]
        exact = np.array([_float_of(rule.bits) for rule in rules], np.float32)
        settled = walk(exact, exact)
        waiting = settled.waiting()
    thresholds = np.array([_float_of(rule.bits) for rule in rules], np.float32)
    # A rule with ties to break keeps the first `ties` entries equal to its threshold in flat order.
    cutoffs = np.array(
        [
            kernel.tie_cutoff(waiting[i], thresholds[i], -1 if rule.all_equal_kept else rule.ties)
            for i, rule in enumerate(rules)
        ],
        np.int64,
    )
    kept, kept_mass = kernel.settle_waiting(n)(waiting, thresholds, cutoffs, *settled.unit)
    return int(settled.counts[kernel.KEPT]) + kept, float(settled.sums[kernel.KEPT_MASS]) + kept_mass


def tensor_stats(
    source: TensorSource, name: str, density: float, rank: int, power_iters: int = 1, seed: int = 0
) -> TensorStats:
    """Every sum for one tensor. `density` in (0, 1]: the share TIES keeps per expert; `rank` 0 skips subspaces.

    One walk over the tensor's row blocks (kernel.fused_pass) forms the norms, cosines and sign
    conflicts and settles TIES at every entry whose |τ_i| all lie outside their experts' brackets around
    the threshold; the few others wait in flat order until the exact thresholds (and the merge
    sparsifier's tie rule) settle them. A sample that misled a bracket costs a second walk. Raises
    NonFiniteTensorError when an input holds NaN/Inf.
    """
    if not 0 < density <= 1:
        raise ValueError(f"TIES density must lie in (0, 1], got {density}")
    n = source.n_models
    numel = math.prod(source.shape)
    chunks = source.row_chunks
    wd = work_dtype(source.base(0, 1))  # one row says the stored dtype

    def block(s: int, e: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return source.base(s, e), [source.model(i, s, e) for i in range(n)]

    held = block(*chunks[0]) if len(chunks) == 1 else None  # a small tensor is read once for every pass

    def walk(lo: np.ndarray, hi: np.ndarray) -> _Walk:
        result = _Walk(n, wd, lo, hi)
        for base, experts in [held] if held is not None else (block(s, e) for s, e in chunks):
            result.add(*_kernel_inputs(base, experts, wd))
        if not np.isfinite(result.sums).all():
            raise NonFiniteTensorError(f"tensor {name!r} holds NaN/Inf values")
        return result

    def expert_chunks(i: int):
        if held is not None:
            delta = (held[1][i].to(wd) - held[0].to(wd)).reshape(source.shape)
            return lambda: iter([delta])
        return lambda: (source.model(i, s, e).to(wd) - source.base(s, e).to(wd) for s, e in chunks)

    keep_count = max(1, int(density * numel))  # as TIES's magnitude sparsifier counts
    if keep_count >= numel:  # every τ kept: no entry waits
        lo = hi = np.full(n, -1.0, np.float32)
    elif numel < EXACT_BELOW:  # every entry waits: the threshold comes from all of them
        lo, hi = np.zeros(n, np.float32), np.full(n, np.inf, np.float32)
    else:
        lo, hi = _brackets(_sample(source, held, wd, numel), keep_count, numel)
    first = walk(lo, hi)
    sums, counts = first.sums, first.counts
    if keep_count >= numel:
        ties_kept_entries, ties_kept_mass = int(counts[kernel.KEPT]), float(sums[kernel.KEPT_MASS])
    else:
        ties_kept_entries, ties_kept_mass = _settle_ties(first, lo, hi, keep_count, numel, walk, expert_chunks)
    del first  # what waited is settled: its memory goes before the subspaces'

    subspace, k = subspace_stats(source, rank, power_iters, seed)
    return TensorStats(
        name,
        numel,
        float(sums[kernel.BASE_SQ]),
        sums[kernel.GRAM :].reshape(n, n).copy(),
        float(sums[kernel.MASS]),
        int(counts[kernel.CONFLICTS]),
        float(sums[kernel.CONFLICT_MASS]),
        ties_kept_entries,
        ties_kept_mass,
        subspace,
        k,
    )


def subspace_stats(
    source: TensorSource, rank: int, power_iters: int = 1, seed: int = 0
) -> tuple[np.ndarray | None, int]:
    """(overlap of the experts' top-k singular subspaces (experts, experts), k) for a matrix; (None, 0)
    for other tensors or rank 0. A tensor read whole forms each expert's τ once; a streamed one is
    re-read block by block on each of the randomized SVD's passes."""
    k = subspace_rank(source.shape, rank)
    if not k:
        return None, 0
    n, chunks = source.n_models, source.row_chunks
    wd = work_dtype(source.base(0, 1))

    def expert_chunks(i: int):
        if len(chunks) == 1:
            delta = source.model(i, *chunks[0]).to(wd) - source.base(*chunks[0]).to(wd)
            return lambda: iter([delta])
        return lambda: (source.model(i, s, e).to(wd) - source.base(s, e).to(wd) for s, e in chunks)

    bases = [singular_subspaces(expert_chunks(i), source.shape, k, power_iters, seed) for i in range(n)]
    subspace = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(i, n):
            if bases[i] is not None and bases[j] is not None:
                subspace[i, j] = subspace[j, i] = subspace_overlap(bases[i], bases[j])
    return subspace, k


def _float_of(bits: int) -> float:
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32))


def _sample(source: TensorSource, held, wd: torch.dtype, numel: int) -> np.ndarray:
    """|τ_i| as float32 at entries spread over the tensor, (experts, entries): short runs evenly spaced
    when held, whole rows when streamed."""
    n = source.n_models
    if held is not None:
        base, experts = _kernel_inputs(*held, wd)
        runs = min(max(numel // 64, SAMPLE_ENTRIES[0]), SAMPLE_ENTRIES[1]) // kernel.SAMPLE_RUN
        out = np.empty((n, runs * kernel.SAMPLE_RUN), np.float32)
        kernel.sample_magnitudes(base, experts, numel // runs, out)
        return out
    rows = source.row_chunks[-1][1]
    parts = []
    for r in sorted({r * rows // SAMPLE_ROWS for r in range(SAMPLE_ROWS)}):
        base, experts = _kernel_inputs(source.base(r, r + 1), [source.model(i, r, r + 1) for i in range(n)], wd)
        parts.append(np.empty((n, base.size), np.float32))
        kernel.sample_magnitudes(base, experts, kernel.SAMPLE_RUN, parts[-1])  # runs back to back: the row
    return np.concatenate(parts, axis=1)
