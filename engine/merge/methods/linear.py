"""Linear: the weighted average Σ w_i x_i / Σ w_i of all inputs ("model soups").

Wortsman et al. 2022, arXiv 2203.05482. As in mergekit, `base_model` is just one more input.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from engine.merge.spec import BaseUse, MemorySource, MethodSpec, Param, Scope, TensorSource, work_dtype


def stream(
    source: TensorSource, *, weight: Sequence[float], normalize: bool = True, seed: int = 0
) -> Iterator[torch.Tensor]:
    """Yield Σ w_i x_i (÷ Σ w_i when normalize) row chunk by row chunk."""
    wd = work_dtype(source.model(0, *source.row_chunks[0]))
    for s, e in source.row_chunks:
        acc = None
        for i, w in enumerate(weight):
            term = source.model(i, s, e).to(wd) * w  # (rows, ...)
            acc = term if acc is None else acc.add_(term)
        yield acc / sum(weight) if normalize else acc


def merge(base: torch.Tensor | None, models: Sequence[torch.Tensor], *, seed: int = 0, **params) -> torch.Tensor:
    (out,) = stream(MemorySource(None, models), **params)
    return out.to(models[0].dtype)


SPEC = MethodSpec(
    name="linear",
    display_name="Linear",
    paper="https://arxiv.org/abs/2203.05482",
    params=(
        Param("weight", float, scope=Scope.INPUT, doc="weight of this model in the average"),
        Param("normalize", bool, True, doc="divide by the summed weights"),
    ),
    merge=merge,
    stream=stream,
    base_use=BaseUse.INPUT,
    min_models=1,
)
