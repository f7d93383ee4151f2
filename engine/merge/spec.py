"""What a merge method declares, and the tensor source it streams from.

Extension point: a new method is one module in engine/merge/methods/ that builds a
`MethodSpec` and is listed in engine/merge/registry.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import torch

REQUIRED = object()  # sentinel default: the parameter must be set somewhere in the recipe


class Scope(str, Enum):
    """Where a parameter's value comes from (mergekit: SHARED / INPUT / NON_BASE)."""

    GLOBAL = "global"  # one value per tensor, from the recipe's top-level `parameters`
    MODEL = "model"  # one value per input model other than the base (per-model, then global)
    INPUT = "input"  # one value per input including the base (methods that treat the base as an input)


class BaseUse(str, Enum):
    """How a method uses `base_model`."""

    REQUIRED = "required"  # task vectors are taken against it
    OPTIONAL = "optional"  # used when given (nuslerp)
    INPUT = "input"  # an ordinary weighted input, like mergekit's linear


@dataclass(frozen=True)
class Param:
    """One parameter: its name, type (float, bool or int), default (REQUIRED if none) and scope."""

    name: str
    kind: type = float
    default: Any = REQUIRED
    scope: Scope = Scope.GLOBAL
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class TensorSource(Protocol):
    """Rows of one logical tensor from each input, read on demand in the work dtype.

    `shape` is the tensor's shape; `row_chunks` the (start, stop) row ranges a streaming
    method walks in order (one range covering everything for small tensors). Inputs are
    numbered 0..n_models-1 in recipe order; the base, when present, is read separately.
    """

    shape: tuple[int, ...]
    n_models: int
    row_chunks: Sequence[tuple[int, int]]

    def base(self, start: int, stop: int) -> torch.Tensor: ...

    def model(self, index: int, start: int, stop: int) -> torch.Tensor: ...


@dataclass
class MemorySource:
    """A TensorSource over tensors already in memory; `chunk_rows` splits them to test streaming."""

    base_tensor: torch.Tensor | None
    models: Sequence[torch.Tensor]
    chunk_rows: int | None = None
    shape: tuple[int, ...] = field(init=False)
    n_models: int = field(init=False)
    row_chunks: list[tuple[int, int]] = field(init=False)

    def __post_init__(self):
        first = self.base_tensor if self.base_tensor is not None else self.models[0]
        self.shape = tuple(first.shape)
        self.n_models = len(self.models)
        rows = self.shape[0] if self.shape else 1
        step = max(1, self.chunk_rows or rows) if self.shape else 1
        self.row_chunks = [(s, min(s + step, rows)) for s in range(0, rows, step)] or [(0, 0)]

    def _rows(self, t: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return t if t.dim() == 0 else t[start:stop]

    def base(self, start: int, stop: int) -> torch.Tensor:
        return self._rows(self.base_tensor, start, stop)

    def model(self, index: int, start: int, stop: int) -> torch.Tensor:
        return self._rows(self.models[index], start, stop)


MergeFn = Callable[..., torch.Tensor]
StreamFn = Callable[..., Iterator[torch.Tensor]]


@dataclass(frozen=True)
class MethodSpec:
    """A registered merge method.

    name:          mergekit's name for it (the `merge_method` in YAML).
    display_name:  how the dashboard shows it.
    paper:         the paper (or page) it comes from.
    params:        its parameters; per-model ones arrive as lists aligned with the models.
    merge:         pure function `merge(base, models, *, seed, **params) -> Tensor` over whole
                   tensors (base is None unless base_use is REQUIRED/OPTIONAL and a base is set).
    stream:        optional `stream(source, *, seed, **params) -> Iterator[Tensor]` yielding the
                   output row chunk by row chunk, so the executor never holds whole inputs;
                   methods without it get whole tensors.
    base_use:      how `base_model` is used.
    min_models / max_models: allowed number of models besides the base.
    random:        whether results depend on `seed` (random dropping).
    check:         optional `check(global_params, model_params) -> str | None` naming a bad
                   combination of values (e.g. DELLA's density ± epsilon outside (0, 1)).
    one_pass:      `stream` reads each input block once, so the executor can feed every
                   matrix in small cache-sized blocks.
    nonfinite_propagates: an output entry is NaN/Inf whenever that entry of any input is, so
                   the executor checks each output block instead of every input block.
    in_mergekit:   mergekit 0.1.5 implements it under this name; our own methods (False) export
                   to YAML under their own names, which mergekit refuses ("Unimplemented merge method").
    by_tensor_name: `merge` also receives `tensor_name=` (the checkpoint key), for methods that
                   treat some tensors apart (embeddings in the SVD methods).
    by_layer_position: `merge` also receives `layer_position=`, the tensor's block l / (L − 1)
                   (0 outside the blocks), for depth schedules (LiNeS).
    """

    name: str
    display_name: str
    paper: str
    params: tuple[Param, ...]
    merge: MergeFn
    stream: StreamFn | None = None
    base_use: BaseUse = BaseUse.REQUIRED
    min_models: int = 1
    max_models: int | None = None
    random: bool = False
    check: Callable[[dict, dict], str | None] | None = None
    one_pass: bool = False
    nonfinite_propagates: bool = False
    in_mergekit: bool = True
    by_tensor_name: bool = False
    by_layer_position: bool = False

    @property
    def mergekit_note(self) -> str | None:
        """What to tell a user who takes this method's YAML to mergekit; None when mergekit runs it."""
        if self.in_mergekit:
            return None
        return (
            f"merge_method {self.name} ({self.display_name}) is MergeScope's own: mergekit 0.1.5 does not "
            f'implement it and refuses this recipe ("Unimplemented merge method {self.name}"); '
            "run it with `python -m engine merge` or the dashboard"
        )

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def global_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.scope == Scope.GLOBAL)

    @property
    def model_params(self) -> tuple[Param, ...]:
        return tuple(p for p in self.params if p.scope != Scope.GLOBAL)


def work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32: half-precision sums lose the small task vectors."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
