"""Parameter lookup for one tensor, most specific first: a model's own parameters, then the
recipe's top-level ones; within each, the first tensor-name filter that matches; a list of
values is a per-layer schedule interpolated over the layers (mergekit's "gradients").
"""

from __future__ import annotations

import re
from typing import Any

from engine.errors import RecipeError
from engine.merge.spec import Param, Scope

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def layer_index(tensor_name: str) -> int | None:
    """The block a tensor belongs to ('model.layers.3.mlp...' -> 3); None outside the blocks."""
    match = _LAYER.search(tensor_name)
    return int(match.group(1)) if match else None


def split_layer_name(tensor_name: str) -> tuple[str, int, str] | None:
    """("model.layers.", 3, ".mlp.up_proj.weight") for a block's tensor; None outside the blocks."""
    match = _LAYER.search(tensor_name)
    if not match:
        return None
    return tensor_name[: match.start(1)], int(match.group(1)), tensor_name[match.end(1) :]


def layer_position(tensor_name: str, num_layers: int) -> float:
    """Where a tensor sits in the stack for schedules: layer i of L gives i / (L - 1).

    Tensors outside the blocks (embeddings, final norm, lm_head) get 0, as mergekit gives them.
    """
    index = layer_index(tensor_name)
    return 0.0 if index is None else block_position(index, num_layers)


def block_position(index: int, num_layers: int) -> float:
    """Block `index` of `num_layers` on the schedules' [0, 1] axis: i / (L - 1), 1.0 for a one-block model."""
    return 1.0 if num_layers <= 1 else index / (num_layers - 1)


def coerce(value: Any, kind: type, where: str) -> Any:
    """A scalar checked against the parameter's type; RecipeError naming `where` otherwise."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
            return value.strip().lower() in ("true", "yes")
        raise RecipeError(f"{where}: expected true or false, got {value!r}")
    if isinstance(value, bool):
        raise RecipeError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return kind(value)
    if isinstance(value, str):
        try:
            return kind(float(value))
        except ValueError:
            pass
    raise RecipeError(f"{where}: expected a number, got {value!r}")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def check_setting(setting: Any, kind: type, where: str) -> None:
    """RecipeError when a setting is not a scalar, a schedule, or {value, filter} conditions."""
    conditions = (
        setting if isinstance(setting, list) and setting and all(isinstance(c, dict) for c in setting) else None
    )
    if isinstance(setting, dict):
        conditions = [setting]
    if conditions is not None:
        for cond in conditions:
            unknown = set(cond) - {"value", "filter"}
            if "value" not in cond or unknown:
                raise RecipeError(
                    f"{where}: a conditional setting needs 'value' and optionally 'filter', got keys {sorted(cond)}"
                )
            if cond.get("filter") is not None and not isinstance(cond["filter"], str):
                raise RecipeError(f"{where}: filter must be a tensor-name substring, got {cond['filter']!r}")
            if isinstance(cond["value"], (dict,)) or (
                isinstance(cond["value"], list) and not all(_is_scalar(v) for v in cond["value"])
            ):
                raise RecipeError(f"{where}: conditional value must be a number or a list of numbers")
            check_setting(cond["value"], kind, where)
        return
    if isinstance(setting, list):
        if not setting:
            raise RecipeError(f"{where}: empty schedule; give a value or a list of per-layer values")
        if not all(_is_scalar(v) for v in setting):
            raise RecipeError(f"{where}: a schedule must be a flat list of values, got {setting!r}")
        for v in setting:
            coerce(v, kind, where)
        return
    if not _is_scalar(setting):
        raise RecipeError(f"{where}: unsupported setting {setting!r}")
    coerce(setting, kind, where)


def evaluate(setting: Any, tensor_name: str, t: float, kind: type, where: str) -> Any:
    """The value of one setting for a tensor at layer position t; None when no filter matches."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, list) and setting and all(isinstance(c, dict) for c in setting):
        for cond in setting:
            filt = cond.get("filter")
            if filt is None or filt == "*" or (tensor_name and filt in tensor_name):
                return evaluate(cond["value"], tensor_name, t, kind, where)
        return None
    if isinstance(setting, list):
        values = [coerce(v, kind, where) for v in setting]
        if kind is bool:  # discrete values are picked, not blended
            return values[int(t * (len(values) - 1))]
        scaled = t * (len(values) - 1)
        i0 = int(scaled)
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return kind((1 - frac) * values[i0] + frac * values[i1])
    return coerce(setting, kind, where)


def resolve(param: Param, scopes: list[dict | None], tensor_name: str, t: float, where: str) -> Any:
    """The first value any scope (most specific first) gives for `param`, else its default."""
    for scope in scopes:
        if scope and param.name in scope:
            value = evaluate(scope[param.name], tensor_name, t, param.kind, f"{where}: parameter {param.name!r}")
            if value is not None:
                return value
    if param.required:
        raise RecipeError(f"{where}: missing required parameter {param.name!r} for tensor {tensor_name!r}")
    return param.default


def resolve_all(
    spec,
    global_scopes: list[dict | None],
    model_scopes: list[list[dict | None]],
    model_names: list[str],
    tensor_name: str,
    t: float,
    input_names: list[str] | None = None,
) -> tuple[dict, dict]:
    """(global values, per-model value lists aligned with the models) for one tensor.

    `global_scopes` are the shared settings, most specific first (a slice's, then the recipe's);
    `model_scopes[i]` the settings model i sees, most specific first (its own, then the shared).
    Filters of per-model values match the tensor's name in that model (`input_names`, which
    differ from the output's name when slices move layers), as in mergekit.
    """
    shared = {p.name: resolve(p, global_scopes, tensor_name, t, "parameters") for p in spec.global_params}
    names_in = input_names or [tensor_name] * len(model_names)
    per_model = {
        p.name: [
            resolve(p, scopes, name_in, t, f"model {name}")
            for scopes, name, name_in in zip(model_scopes, model_names, names_in)
        ]
        for p in spec.params
        if p.scope != Scope.GLOBAL
    }
    return shared, per_model
