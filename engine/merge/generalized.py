"""Generalised task arithmetic: one core behind task arithmetic, TIES, DARE, breadcrumbs and DELLA.

    merged = base + lambda * combine_i( weight_i * sparsify_i(model_i - base) ) / divisor

- sparsify: none, magnitude (TIES), random (DARE), magnitude_outliers (breadcrumbs) or
  della_magprune (DELLA), each optionally rescaled to keep the task vector's L1 norm.
- combine: a plain sum, or with TIES's sign consensus ("sum" rule): per entry keep only the
  weighted deltas whose sign matches the sign of their sum.
- normalize: divide by the summed weights (of the kept entries, under sign consensus).

Task arithmetic: Ilharco et al. 2022 (arXiv 2212.04089); TIES: Yadav et al. 2023 (arXiv
2306.01708); the variant registry follows mergekit (Goddard et al. 2024, arXiv 2403.13257).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from engine.merge.sparsify import DELLA, MAGNITUDE_OUTLIERS, Dropper
from engine.merge.spec import BaseUse, MemorySource, MethodSpec, Param, Scope, TensorSource, work_dtype

SAMPLE_ENTRIES = 1 << 16  # |delta| entries sampled to bracket a magnitude threshold
SAMPLE_ROWS = 64  # rows sampled instead when a tensor is streamed (re-read one row each)


def _expert_seed(seed: int, index: int) -> int:
    # Distinct, reproducible streams per model; 2**61-1 keeps it in Generator's range.
    return (seed * 1_000_003 + index * 7919 + 17) % (2**61 - 1)


def stream_task_arithmetic(
    source: TensorSource,
    *,
    weight: Sequence[float],
    density: Sequence[float] | None = None,
    gamma: Sequence[float] | None = None,
    epsilon: Sequence[float] | None = None,
    normalize: bool = False,
    rescale: bool = False,
    int8_mask: bool = False,  # accepted for mergekit compatibility; our mask is boolean either way
    lambda_: float = 1.0,
    sparsifier: str | None = None,
    consensus: bool = False,
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """Yield the merged tensor row chunk by row chunk (work dtype) from a TensorSource."""
    if not sparsifier and not consensus:
        yield from _weighted_sum(source, weight, normalize=normalize, lambda_=lambda_)
        return
    n = source.n_models
    numel = math.prod(source.shape)
    first = source.base(*source.row_chunks[0])
    wd = work_dtype(first)
    single = len(source.row_chunks) == 1
    cache: dict[int, torch.Tensor] = {}

    def delta(i: int, s: int, e: int) -> torch.Tensor:
        # A small tensor's task vectors are computed once and shared by the fitting and merging passes.
        if single and i in cache:
            return cache[i]
        d = source.model(i, s, e).to(wd) - source.base(s, e).to(wd)
        if single:
            cache[i] = d
        return d

    def deltas(i: int):
        return lambda: (delta(i, s, e) for s, e in source.row_chunks)

    def sample(i: int):
        # |delta| at entries spread evenly over the tensor (whole rows when it is streamed).
        if single:
            flat = delta(i, *source.row_chunks[0]).reshape(-1)
            return lambda: flat[:: max(1, flat.numel() // SAMPLE_ENTRIES)].abs()
        rows = source.row_chunks[-1][1]
        picks = sorted({r * rows // SAMPLE_ROWS for r in range(SAMPLE_ROWS)})
        return lambda: torch.cat([delta(i, r, r + 1).reshape(-1) for r in picks]).abs()

    apply = [lambda d: d] * n
    if sparsifier:
        apply = [
            Dropper(
                sparsifier,
                density[i],
                deltas(i),
                numel,
                rescale=rescale,
                gamma=gamma[i] if gamma else 0.01,
                epsilon=epsilon[i] if epsilon else 0.15,
                seed=_expert_seed(seed, i),
                sample=sample(i),
            ).start()
            for i in range(n)
        ]
    for s, e in source.row_chunks:
        base = source.base(s, e).to(wd)
        mixed = torch.empty((n,) + tuple(base.shape), dtype=wd, device=base.device)  # (n, rows, ...)
        for i in range(n):
            torch.mul(apply[i](delta(i, s, e)), float(weight[i]), out=mixed[i])
        cache.clear()
        if consensus:
            # sign(x) == elected sign, where the elected sign of a zero sum is +; zeros never agree.
            agree = torch.where(mixed.sum(0) >= 0, mixed > 0, mixed < 0)  # (n, rows, ...)
            divisor = torch.zeros_like(base)
            for i in range(n):
                divisor.add_(agree[i], alpha=float(weight[i]))
            divisor = torch.where(divisor == 0, 1.0, divisor)
            merged = mixed.mul_(agree).sum(0)
        else:
            total = float(sum(weight))
            divisor = 1.0 if abs(total) < 1e-8 else total
            merged = mixed.sum(0)
        del mixed
        if normalize:
            merged = merged.div_(divisor)
        if lambda_ != 1:
            merged = merged.mul_(lambda_)
        yield merged.add_(base)


def _weighted_sum(
    source: TensorSource, weight: Sequence[float], *, normalize: bool, lambda_: float
) -> Iterator[torch.Tensor]:
    """Task arithmetic in one pass: each input block is read once and its weighted delta is
    added in place, so no per-model temporaries outlive the block."""
    total = float(sum(weight))
    divisor = 1.0 if abs(total) < 1e-8 else total
    delta = merged = None
    for s, e in source.row_chunks:
        base = source.base(s, e)
        if merged is None or merged.shape != base.shape:
            wd = work_dtype(base)
            merged = torch.empty(base.shape, dtype=wd, device=base.device)
            delta = torch.empty_like(merged)
        merged.zero_()
        for i, w in enumerate(weight):
            torch.sub(source.model(i, s, e), base, out=delta)
            merged.add_(delta, alpha=float(w))
        if normalize:
            merged.div_(divisor)
        if lambda_ != 1:
            merged.mul_(lambda_)
        # A fresh tensor per block: the caller may keep it while the next block is computed.
        yield torch.add(merged, base)


def variant(
    name: str, display_name: str, paper: str, *, sparsifier: str | None, consensus: bool, normalize: bool, rescale: bool
) -> MethodSpec:
    """A registry entry over the core with fixed sparsifier / sign rule and mergekit's defaults."""
    params = [
        Param("weight", float, scope=Scope.MODEL, doc="scale of this model's task vector"),
        Param("density", float, 1.0, Scope.MODEL, "fraction of the task vector kept"),
        Param("normalize", bool, normalize, doc="divide by the summed weights"),
        Param("rescale", bool, rescale, doc="rescale kept entries to the task vector's L1 norm"),
        Param("int8_mask", bool, False, doc="mergekit memory option; no effect on results"),
        Param("lambda", float, 1.0, doc="scale of the merged task vector"),
    ]
    if sparsifier == MAGNITUDE_OUTLIERS:
        params.append(Param("gamma", float, 0.01, Scope.MODEL, "fraction of largest entries dropped"))
    if sparsifier == DELLA:
        params.append(Param("epsilon", float, 0.15, Scope.MODEL, "spread of keep probabilities around density"))

    def stream(source: TensorSource, *, seed: int = 0, **p) -> Iterator[torch.Tensor]:
        return stream_task_arithmetic(
            source,
            weight=p["weight"],
            density=p["density"],
            gamma=p.get("gamma"),
            epsilon=p.get("epsilon"),
            normalize=p["normalize"],
            rescale=p["rescale"],
            int8_mask=p["int8_mask"],
            lambda_=p["lambda"],
            sparsifier=sparsifier,
            consensus=consensus,
            seed=seed,
        )

    def merge(base: torch.Tensor, models: Sequence[torch.Tensor], *, seed: int = 0, **p) -> torch.Tensor:
        if not models:
            return base
        chunks = list(stream(MemorySource(base, models), seed=seed, **p))
        return (chunks[0] if len(chunks) == 1 else torch.cat(chunks)).to(base.dtype)

    def check(global_params: dict, model_params: dict) -> str | None:
        if sparsifier != DELLA:
            return None
        for d, eps in zip(model_params["density"], model_params["epsilon"]):
            if 0 < d < 1 and not (0 < d - eps and d + eps < 1):
                return f"density ± epsilon must lie in (0, 1); got density {d}, epsilon {eps}"
        return None

    return MethodSpec(
        name=name,
        display_name=display_name,
        paper=paper,
        params=tuple(params),
        merge=merge,
        stream=stream,
        base_use=BaseUse.REQUIRED,
        min_models=0,
        random=sparsifier in ("random", DELLA),
        check=check,
        one_pass=not sparsifier and not consensus,
        nonfinite_propagates=True,
    )
