"""Merge methods by mergekit's names.

To add a method: write engine/merge/methods/<name>.py defining `SPEC = MethodSpec(...)`
(a pure `merge` function over tensors, its parameters, display name and paper; optionally a
row-chunk `stream` for memory-bounded merges) and add the module name to `_MODULES`.
Recipes, the executor, the CLI and the dashboard pick it up from here.
"""

from __future__ import annotations

import functools
import importlib

from engine.errors import RecipeError
from engine.merge.spec import MethodSpec

_MODULES = (
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "sce",
    "slerp",
    "model_stock",
    "nuslerp",
    "multislerp",
    "karcher",
    "nearswap",
    "arcee_fusion",
    "passthrough",
    "ram",
    "ramplus_tl",
    "tsv_merge",
    "iso_c",
    "iso_cts",
    "pcb_merge",
    "lines",
)


@functools.cache
def methods() -> dict[str, MethodSpec]:
    """Every registered method, by name, in a stable order."""
    found = {}
    for module in _MODULES:
        spec = importlib.import_module(f"engine.merge.methods.{module}").SPEC
        if spec.name in found:
            raise ValueError(f"merge method {spec.name!r} registered twice")
        found[spec.name] = spec
    return found


def get_method(name: str) -> MethodSpec:
    """The method called `name`; RecipeError listing the known ones otherwise."""
    try:
        return methods()[name]
    except KeyError:
        raise RecipeError(f"unknown merge_method {name!r}; known: {', '.join(methods())}") from None
