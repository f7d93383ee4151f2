"""Dropping parts of a task vector before it is merged: the sparsifiers of TIES, DARE,
Model Breadcrumbs and DELLA, with mergekit's semantics and a streaming-friendly shape.

Every sparsifier walks a task vector chunk by chunk (rows of the tensor, in order) so the
executor never materialises a whole large tensor per model. Magnitude selection needs the
k-th largest |delta| of the whole tensor, found exactly instead of by mergekit's full argsort:
usually in one pass, bracketed by a sample's quantiles and picked by kthvalue among the few
entries inside the bracket; else by a two-pass radix select over the float32 bit patterns.

References: TIES (Yadav et al. 2023, arXiv 2306.01708), DARE (Yu et al. 2023, arXiv
2311.03099), Model Breadcrumbs (Davari & Belilovsky 2023, arXiv 2312.06795), DELLA (Deep et
al. 2024, arXiv 2406.11617).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from engine.errors import RecipeError

MAGNITUDE = "magnitude"  # keep the largest |delta| (TIES)
RANDOM = "random"  # keep each entry with probability `density` (DARE)
MAGNITUDE_OUTLIERS = "magnitude_outliers"  # drop the largest `gamma` and the smallest (breadcrumbs)
DELLA = "della_magprune"  # keep with probability rising with |delta|'s rank in its row (DELLA)
KINDS = (MAGNITUDE, RANDOM, MAGNITUDE_OUTLIERS, DELLA)

RESCALE_EPS = 1e-7  # below this L1 norm a task vector is left unscaled (as mergekit does)
_HI_BUCKETS = 1 << 15  # top 16 bits of a non-negative float32 (sign bit always 0)
_LO_BUCKETS = 1 << 16
MIN_SAMPLE = 4096  # fewer sampled |delta| bracket the top-k threshold too loosely to help

ChunkFn = Callable[[], Iterator[torch.Tensor]]


def _abs_bits(delta: torch.Tensor) -> torch.Tensor:
    # For finite non-negative float32 values the int32 bit pattern orders like the value.
    return delta.abs().to(torch.float32).reshape(-1).view(torch.int32)


@dataclass(frozen=True)
class TopK:
    """Keep every |delta| whose bits exceed `bits`, plus the first `ties` equal to it in flat order."""

    bits: int
    ties: int
    all_equal_kept: bool = False  # every entry equal to the threshold is kept: the mask is just bits >= it
    keep_all: bool = False
    keep_none: bool = False


def _bits(value: torch.Tensor) -> int:
    return int(value.to(torch.float32).reshape(1).view(torch.int32))


def _top_k_bracketed(chunks: ChunkFn, k: int, numel: int, sample: torch.Tensor) -> TopK | None:
    """The exact k-th largest |delta| in one pass, or None when the sample's guess misses it.

    Quantiles of a sample of |delta| bracket the threshold; one pass counts the entries above
    the bracket and keeps those inside it (a few percent), where kthvalue finds it exactly.
    """
    m = sample.numel()
    below = 1 - k / numel  # share of entries under the threshold
    margin = 5 * math.sqrt(max(below * (1 - below), 1 / m) / m) + 2 / m  # 5 binomial sigmas
    q = torch.tensor([max(0.0, below - margin), min(1.0, below + margin)], dtype=sample.dtype, device=sample.device)
    lo, hi = (float(v) for v in torch.quantile(sample, q))
    above, inside = 0, []
    for chunk in chunks():
        a = chunk.abs().reshape(-1)
        above += int((a > hi).sum())
        inside.append(a[(a >= lo) & (a <= hi)])
    need = k - above  # how many of the bracketed entries are kept
    candidates = torch.cat(inside)
    if not 1 <= need <= candidates.numel():
        return None
    threshold = torch.kthvalue(candidates.to(torch.float32), candidates.numel() - need + 1).values
    greater = above + int((candidates > threshold).sum())
    equal = int((candidates == threshold).sum())
    return TopK(_bits(threshold), k - greater, all_equal_kept=k - greater == equal)


def top_k(chunks: ChunkFn, k: int, numel: int, sample: torch.Tensor | None = None) -> TopK:
    """The exact k-th largest |delta| over all chunks, as a keep rule for top_k_mask.

    With a sample of |delta| (a few thousand entries spread over the tensor) usually one pass;
    otherwise, or when the sample misleads, a two-pass radix select over the float32 bits.
    """
    if k <= 0:
        return TopK(0, 0, keep_none=True)
    if k >= numel:
        return TopK(0, 0, keep_all=True)
    if sample is not None and sample.numel() >= MIN_SAMPLE and torch.isfinite(sample).all():
        rule = _top_k_bracketed(chunks, k, numel, sample)
        if rule is not None:
            return rule
    hist = None
    for chunk in chunks():
        counts = torch.bincount(_abs_bits(chunk) >> 16, minlength=_HI_BUCKETS)
        hist = counts if hist is None else hist + counts
    from_top = hist.flip(0).cumsum(0)  # [j] = count in the j+1 highest buckets
    j = int(torch.searchsorted(from_top, k))
    bucket = _HI_BUCKETS - 1 - j
    above = int(from_top[j - 1]) if j > 0 else 0
    low = torch.zeros(_LO_BUCKETS, dtype=torch.int64, device=hist.device)
    for chunk in chunks():
        bits = _abs_bits(chunk)
        low += torch.bincount(bits[(bits >> 16) == bucket] & 0xFFFF, minlength=_LO_BUCKETS)
    low_from_top = low.flip(0).cumsum(0) + above
    i = int(torch.searchsorted(low_from_top, k))
    greater = int(low_from_top[i - 1]) if i > 0 else above
    equal = int(low_from_top[i]) - greater
    return TopK((bucket << 16) | (_LO_BUCKETS - 1 - i), k - greater, all_equal_kept=k - greater == equal)


def top_k_masks(rule: TopK) -> Callable[[torch.Tensor], torch.Tensor]:
    """A stateful mask maker for the chunks of one pass, in order: bool masks shaped like each chunk."""
    remaining = rule.ties

    def mask(chunk: torch.Tensor) -> torch.Tensor:
        nonlocal remaining
        if rule.keep_all or rule.keep_none:
            return torch.full(chunk.shape, rule.keep_all, dtype=torch.bool, device=chunk.device)
        bits = _abs_bits(chunk)
        if rule.all_equal_kept:
            return (bits >= rule.bits).reshape(chunk.shape)
        keep = bits > rule.bits
        if remaining > 0:
            # Equal magnitudes at the threshold: the first ones in flat order, so the count is exactly k.
            tied = (bits == rule.bits).nonzero().squeeze(1)[:remaining]
            keep[tied] = True
            remaining -= len(tied)
        return keep.reshape(chunk.shape)

    return mask


def della_probabilities(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """Keep probability per entry: density ± epsilon, rising linearly with |delta|'s rank in its row."""
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta  # (rows, cols)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(torch.float32)  # 0 = smallest
    span = max(rows.shape[1] - 1, 1)
    return ((density - epsilon) + (ranks / span).clamp(0, 1) * 2 * epsilon).reshape(delta.shape)


class Dropper:
    """One model's sparsifier for one tensor: fitted on the whole task vector, applied chunk by chunk.

    `chunks` replays the task vector's row chunks in order (work dtype); `sample`, optional,
    gives |delta| at entries spread over the tensor to speed up magnitude selection. Random kinds draw from
    a generator seeded with `seed`, restarted on each pass so the fitting pass (for rescaling)
    and the applying pass see the same mask.
    """

    def __init__(
        self,
        kind: str,
        density: float,
        chunks: ChunkFn,
        numel: int,
        *,
        rescale: bool,
        gamma: float = 0.01,
        epsilon: float = 0.15,
        seed: int = 0,
        sample: Callable[[], torch.Tensor] | None = None,
    ):
        if kind not in KINDS:
            raise ValueError(f"unknown sparsifier {kind!r}")
        self.kind, self.density, self.seed = kind, density, seed
        self.gamma, self.epsilon = gamma, epsilon
        self.identity = density >= 1  # mergekit returns the task vector untouched, unscaled
        self.zero = density <= 0 and kind in (MAGNITUDE, DELLA)
        if kind == DELLA and not (self.identity or self.zero) and not (0 < density - epsilon and density + epsilon < 1):
            raise RecipeError(f"della: density ± epsilon must lie in (0, 1); got density {density}, epsilon {epsilon}")
        self._keep = self._drop_top = None
        if not (self.identity or self.zero) and kind in (MAGNITUDE, MAGNITUDE_OUTLIERS):
            spread = sample() if sample else None
            if kind == MAGNITUDE:
                self._keep = top_k(chunks, max(1, int(density * numel)), numel, spread)
            else:
                target = int(density * numel)
                bottom = max(0, numel - target - int(gamma * numel))
                self._keep = top_k(chunks, numel - bottom, numel, spread)
                self._drop_top = top_k(chunks, numel - bottom - target, numel, spread)
        self.scale = 1.0
        if rescale and not (self.identity or self.zero):
            before = after = 0.0
            apply = self.start(scaled=False)
            for chunk in chunks():
                before += float(chunk.abs().sum(dtype=torch.float64))
                after += float(apply(chunk).abs().sum(dtype=torch.float64))
            if before >= RESCALE_EPS and after >= RESCALE_EPS:
                self.scale = before / after

    def start(self, scaled: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function mapping each successive chunk of the task vector to its sparsified chunk."""
        if self.identity:
            return lambda chunk: chunk
        if self.zero:
            return lambda chunk: chunk * 0  # not zeros_like: a NaN/Inf input must still reach the output
        scale = self.scale if scaled else 1.0
        generator = None  # made on the first chunk's device: CUDA draws need a CUDA generator
        keep = top_k_masks(self._keep) if self._keep else None
        drop = top_k_masks(self._drop_top) if self._drop_top else None

        def apply(chunk: torch.Tensor) -> torch.Tensor:
            nonlocal generator
            if generator is None:
                generator = torch.Generator(device=chunk.device).manual_seed(self.seed)
            if self.kind == RANDOM:
                probs = torch.full(chunk.shape, self.density, dtype=chunk.dtype, device=chunk.device)
                mask = torch.bernoulli(probs, generator=generator)
            elif self.kind == DELLA:
                mask = torch.bernoulli(della_probabilities(chunk, self.density, self.epsilon), generator=generator)
            elif self.kind == MAGNITUDE:
                mask = keep(chunk)
            else:
                mask = keep(chunk) & ~drop(chunk)
            out = chunk * mask
            return out.mul_(scale) if scale != 1.0 else out

        return apply
