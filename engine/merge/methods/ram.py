"""RAM (Reinforced Agent Merging): average each entry's task-vector values over only the models
that changed it, so an update made by one model alone is kept whole instead of divided by n:

    merged = base + Σ_i τ_i [|τ_i| > ε] / max(1, Σ_i [|τ_i| > ε]),   τ_i = model_i − base

Reinforced Agent Merging, arXiv 2601.13572; mergekit's "ram".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from engine.merge.spec import BaseUse, MemorySource, MethodSpec, Param, TensorSource, work_dtype


def task_vectors(source: TensorSource, start: int, stop: int, wd: torch.dtype) -> torch.Tensor:
    """(n, rows, ...) task vectors of rows [start, stop)."""
    base = source.base(start, stop).to(wd)
    return torch.stack([source.model(i, start, stop).to(wd) - base for i in range(source.n_models)])


def contributions(tv: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(which models changed each entry by more than ε (n, ...), how many did (...))."""
    changed = tv.abs() > epsilon
    return changed, changed.sum(0)


def stream(source: TensorSource, *, epsilon: float = 1e-5, seed: int = 0) -> Iterator[torch.Tensor]:
    wd = work_dtype(source.base(*source.row_chunks[0]))
    for s, e in source.row_chunks:
        base = source.base(s, e).to(wd)
        if not source.n_models:
            yield base
            continue
        tv = task_vectors(source, s, e, wd)
        changed, count = contributions(tv, epsilon)
        yield base + (tv * changed).sum(0) / count.clamp(min=1)


def merge(base: torch.Tensor, models: Sequence[torch.Tensor], *, seed: int = 0, **params) -> torch.Tensor:
    (out,) = stream(MemorySource(base, models), **params)
    return out.to(base.dtype)


SPEC = MethodSpec(
    name="ram",
    display_name="RAM",
    paper="https://arxiv.org/abs/2601.13572",
    params=(Param("epsilon", float, 1e-5, doc="a task-vector entry counts as changed when |value| exceeds this"),),
    merge=merge,
    stream=stream,
    base_use=BaseUse.REQUIRED,
    min_models=0,
    one_pass=True,
)
