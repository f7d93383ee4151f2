"""Where each output tensor of a `slices:` recipe comes from, and the stacked model's config.

Output layers are numbered through the slices in order: layer k of slice j reads layer
start + k of each of the slice's sources. Tensors outside the blocks come from the first
slice's sources when they are input embeddings (they feed the first block) and from the last
slice's otherwise (final norm, the head), as mergekit plans them. Schedules run over each slice:
t = k / (n − 1) for layer k of n (t = 1 when n = 1), and t = 0 outside the blocks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from engine.errors import CheckpointError
from engine.merge.params import split_layer_name
from engine.recipe import OutputSlice, Recipe

INPUT_EMBEDDINGS = ("embed_tokens", "embed_in", "wte", "wpe")  # across families; GPT-NeoX's head is embed_out
PER_LAYER_CONFIG_KEYS = ("layer_types",)  # config lists with one entry per layer
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer")  # the layer count's name (GPT-2 uses n_layer)


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its name, schedule position, slice, and its name in each slice source."""

    name: str
    t: float
    out_slice: OutputSlice
    source_names: tuple[str, ...]  # aligned with out_slice.sources


def _layers(checkpoint) -> dict[int, list[tuple[str, str]]]:
    """Layer index -> (prefix, suffix) of each of the block's tensor names, in file order."""
    found: dict[int, list[tuple[str, str]]] = {}
    for name in checkpoint.tensor_names:
        if parts := split_layer_name(name):
            prefix, index, suffix = parts
            found.setdefault(index, []).append((prefix, suffix))
    return found


def layer_config(config: dict) -> dict:
    """The part of a config that holds the layer count (the top level, or text_config)."""
    if any(k in config for k in LAYER_COUNT_KEYS) or not isinstance(config.get("text_config"), dict):
        return config
    return config["text_config"]


def plan_slices(recipe: Recipe, opened: dict) -> tuple[list[PlannedTensor], list[tuple[str, int]]]:
    """(every output tensor in write order, (checkpoint ref, layer) behind each output layer).

    CheckpointError naming the checkpoint and layer when a layer range runs past a model's
    blocks or a source lacks a tensor the slice's first source has.
    """
    where = recipe.source or "recipe"
    layers = {ref: _layers(ckpt) for ref, ckpt in opened.items()}
    stored = {ref: set(ckpt.tensor_names) for ref, ckpt in opened.items()}

    def planned(name: str, t: float, index: int, names: tuple[str, ...]) -> PlannedTensor:
        out_slice = recipe.slices[index]
        for src, name_in in zip(out_slice.sources, names):
            if name_in not in stored[src.model]:
                raise CheckpointError(f"{opened[src.model].path}: no tensor {name_in!r} (slices[{index}])")
        return PlannedTensor(name, t, out_slice, names)

    first = opened[recipe.slices[0].sources[0].model]
    outside = [name for name in first.tensor_names if split_layer_name(name) is None]
    embeddings = [name for name in outside if any(m in name for m in INPUT_EMBEDDINGS)]
    plan = [planned(name, 0.0, 0, (name,) * len(recipe.slices[0].sources)) for name in embeddings]
    behind: list[tuple[str, int]] = []
    for i, out_slice in enumerate(recipe.slices):
        length = out_slice.num_layers
        for src in out_slice.sources:
            available = len(layers[src.model])
            if src.layer_range[1] > available:
                raise CheckpointError(
                    f"{where}: slices[{i}]: layer_range {list(src.layer_range)} runs past the "
                    f"{available} layers of {opened[src.model].path}"
                )
        lead = out_slice.sources[0]
        for k in range(length):
            out_index = len(behind)
            behind.append((lead.model, lead.layer_range[0] + k))
            t = k / (length - 1) if length > 1 else 1.0
            for prefix, suffix in layers[lead.model][lead.layer_range[0] + k]:
                names = tuple(f"{prefix}{s.layer_range[0] + k}{suffix}" for s in out_slice.sources)
                plan.append(planned(f"{prefix}{out_index}{suffix}", t, i, names))
    last = len(recipe.slices) - 1
    width = len(recipe.slices[last].sources)
    plan += [planned(name, 0.0, last, (name,) * width) for name in outside if name not in embeddings]
    return plan, behind


def stacked_config(config: dict, behind: list[tuple[str, int]], configs: dict[str, dict]) -> dict:
    """The template's config with as many layers as `behind`, per-layer entries taken from the
    source layer each output layer comes from."""
    out = copy.deepcopy(config)
    holder = layer_config(out)
    key = next((k for k in LAYER_COUNT_KEYS if k in holder), LAYER_COUNT_KEYS[0])
    holder[key] = len(behind)
    for key in PER_LAYER_CONFIG_KEYS:
        if isinstance(holder.get(key), list):
            holder[key] = [layer_config(configs[ref])[key][layer] for ref, layer in behind]
    return out
