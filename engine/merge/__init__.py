"""The merge engine: methods by mergekit's names, recipes, and a streaming executor.

    from engine.recipe import load
    from engine.merge import merge_into_model, save_merge
    model, tokenizer = merge_into_model(load("recipe.yaml"))

Names are imported on first use: engine.recipe imports the registry from here, and the
executor imports engine.recipe.
"""

import importlib

_EXPORTS = {
    "MemoryEstimate": "executor",
    "MergePlan": "executor",
    "estimate_memory": "executor",
    "iter_merged": "executor",
    "merge_into_model": "executor",
    "plan_merge": "executor",
    "save_merge": "executor",
    "get_method": "registry",
    "methods": "registry",
    "BaseUse": "spec",
    "MethodSpec": "spec",
    "Param": "spec",
    "Scope": "spec",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine.merge' has no attribute {name!r}")
    return getattr(importlib.import_module(f"engine.merge.{_EXPORTS[name]}"), name)
