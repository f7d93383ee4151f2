"""RAM+ (tensor-local): RAM, with each model's unique updates scaled up by how much of its
change it shares with others in this tensor. For model i, with S_i the entries it changes
together with another model and U_i those it alone changes (|τ| > ε),

    λ_i = 1 + r · clamp(|S_i| / max(|U_i|, ε), 0, α)
    merged = base + Σ_i τ_i [|τ_i| > ε] (λ_i [count = 1] + [count > 1] / count)

Reinforced Agent Merging, arXiv 2601.13572 (RAM+, counted per tensor); mergekit's "ramplus_tl".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from engine.merge.methods.ram import contributions, task_vectors
from engine.merge.spec import BaseUse, MemorySource, MethodSpec, Param, TensorSource, work_dtype


def stream(
    source: TensorSource, *, r: float = 0.1, alpha: float = 0.2, epsilon: float = 1e-5, seed: int = 0
) -> Iterator[torch.Tensor]:
    wd = work_dtype(source.base(*source.row_chunks[0]))
    n = source.n_models
    if not n:
        for s, e in source.row_chunks:
            yield source.base(s, e).to(wd)
        return
    shared = torch.zeros(n, dtype=torch.float64)
    unique = torch.zeros(n, dtype=torch.float64)
    for s, e in source.row_chunks:  # first pass: each model's shared and unique entry counts
        changed, count = contributions(task_vectors(source, s, e, wd), epsilon)
        per_model = changed.reshape(n, -1)
        shared += (per_model & (count > 1).reshape(1, -1)).sum(1).double().cpu()
        unique += (per_model & (count == 1).reshape(1, -1)).sum(1).double().cpu()
    boost = 1 + r * (shared / unique.clamp(min=epsilon)).clamp(0, alpha)  # λ_i
    for s, e in source.row_chunks:
        base = source.base(s, e).to(wd)
        tv = task_vectors(source, s, e, wd)
        changed, count = contributions(tv, epsilon)
        lam = boost.to(device=tv.device, dtype=wd).reshape((n,) + (1,) * (tv.dim() - 1))
        scale = torch.where(count == 1, lam, 1 / count.clamp(min=1).to(wd))  # (n, ...)
        yield base + (tv * changed * scale).sum(0)


def merge(base: torch.Tensor, models: Sequence[torch.Tensor], *, seed: int = 0, **params) -> torch.Tensor:
    (out,) = stream(MemorySource(base, models), **params)
    return out.to(base.dtype)


SPEC = MethodSpec(
    name="ramplus_tl",
    display_name="RAM+ (tensor-local)",
    paper="https://arxiv.org/abs/2601.13572",
    params=(
        Param("r", float, 0.1, doc="how much unique updates are scaled up"),
        Param("alpha", float, 0.2, doc="cap on the shared-to-unique ratio"),
        Param("epsilon", float, 1e-5, doc="a task-vector entry counts as changed when |value| exceeds this"),
    ),
    merge=merge,
    stream=stream,
    base_use=BaseUse.REQUIRED,
    min_models=0,
)
