"""Passthrough: copy one input's tensors unchanged (optionally times `scale`). With mergekit's
`slices:` syntax this stacks layer ranges of one or several models into a deeper model
("frankenmerges", layer stacking; e.g. SOLAR's depth up-scaling, Kim et al. 2023, arXiv 2312.15166).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from engine.merge.spec import BaseUse, MemorySource, MethodSpec, Param, Scope, TensorSource, work_dtype


def stream(source: TensorSource, *, scale: Sequence[float | None], seed: int = 0) -> Iterator[torch.Tensor]:
    factor = scale[0]
    for s, e in source.row_chunks:
        x = source.model(0, s, e)
        yield x if factor is None else x.to(work_dtype(x)) * factor


def merge(base: torch.Tensor | None, models: Sequence[torch.Tensor], *, seed: int = 0, **params) -> torch.Tensor:
    (out,) = stream(MemorySource(None, models), **params)
    return out.to(models[0].dtype)


SPEC = MethodSpec(
    name="passthrough",
    display_name="Passthrough",
    paper="https://arxiv.org/abs/2312.15166",
    params=(Param("scale", float, None, scope=Scope.INPUT, doc="multiply the tensor by this (none: copy)"),),
    merge=merge,
    stream=stream,
    base_use=BaseUse.INPUT,
    min_models=1,
    max_models=1,
    one_pass=True,
    nonfinite_propagates=True,
)
