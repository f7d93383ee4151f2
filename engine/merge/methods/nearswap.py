"""NearSwap: take the other model's value where it is already close to the base, keep the base
where they differ a lot. Per entry, w = clamp(t / |b − a|, 0, 1) and out = w·b + (1 − w)·a, so
entries within t of each other are swapped outright and far ones barely move.

From alchemonaut's QuartetAnemoi-70B model card (huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001);
mergekit's "nearswap".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from engine.merge.spec import BaseUse, MemorySource, MethodSpec, Param, TensorSource, work_dtype

MIN_DISTANCE = 1e-6  # |b − a| below this counts as this, so equal entries give w = 1 without 0/0


def nearswap(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    weight = (t / (b - a).abs().clamp(min=MIN_DISTANCE)).clamp(0, 1)
    return weight * b + (1 - weight) * a


def stream(source: TensorSource, *, t: float, seed: int = 0) -> Iterator[torch.Tensor]:
    wd = work_dtype(source.base(*source.row_chunks[0]))
    for s, e in source.row_chunks:
        yield nearswap(t, source.base(s, e).to(wd), source.model(0, s, e).to(wd))


def merge(base: torch.Tensor, models: Sequence[torch.Tensor], *, t: float, seed: int = 0) -> torch.Tensor:
    (out,) = stream(MemorySource(base, models), t=t)
    return out.to(base.dtype)


SPEC = MethodSpec(
    name="nearswap",
    display_name="NearSwap",
    paper="https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
    params=(Param("t", float, doc="distance under which the other model's value is taken whole"),),
    merge=merge,
    stream=stream,
    base_use=BaseUse.REQUIRED,
    min_models=1,
    max_models=1,
    one_pass=True,
)
