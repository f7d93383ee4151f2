"""Patching a live model: the tensors of a layer set copied in from another checkpoint, in place.

A patch costs reading the set's tensors from the source's safetensors and one `copy_` each; the
merge itself is never redone, so every direction of a routed experiment reuses one merged model
(patch, score, restore). `patched` restores the model's own tensors on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from engine.checkpoints import Checkpoint
from engine.errors import CheckpointError, RecipeError
from engine.merge.params import layer_index
from engine.patch.layers import LayerSet


def part_of(name: str) -> str:
    """Which part outside the blocks a tensor name belongs to: 'embed', 'head' or 'norm'."""
    if "lm_head" in name or "embed_out" in name:
        return "head"
    if "embed" in name or name.endswith("wte.weight"):
        return "embed"
    return "norm"


def patch_targets(model, layers: LayerSet) -> dict[str, torch.nn.Parameter]:
    """The model's parameters a layer set covers, by name (tied tensors once, under their first name).

    A tied embedding and LM head are one tensor: patching one patches the other, so a set must
    take both or neither (RecipeError otherwise).
    """
    chosen = {}
    for name, param in model.named_parameters():
        block = layer_index(name)
        if (block in layers.blocks) if block is not None else part_of(name) in layers.parts:
            chosen[name] = param
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and embed is not None and head.weight is embed.weight:
        if ("head" in layers.parts) != ("embed" in layers.parts):
            raise RecipeError(
                f"layer set {layers.text!r}: this model ties its LM head to the embedding (one tensor); "
                "take +embed and +head together or neither"
            )
    return chosen


def read_patch(source: Checkpoint, targets: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The source's tensors for `targets`; CheckpointError naming a missing or misshapen tensor."""
    out = {}
    for name, param in targets.items():
        if name not in source.tensor_names:
            raise CheckpointError(f"{source.path}: no tensor named {name!r} to patch in")
        tensor = source.read_tensor(name)
        if tuple(tensor.shape) != tuple(param.shape):
            raise CheckpointError(
                f"{source.path}: tensor {name!r} has shape {tuple(tensor.shape)}, the model's is {tuple(param.shape)}"
            )
        out[name] = tensor
    return out


def apply_patch(model, source: Checkpoint, layers: LayerSet) -> dict[str, torch.Tensor]:
    """Copy the layer set's tensors from `source` into `model`; returns the replaced tensors (clones).

    Every tensor is read and checked before the first copy, so a bad source leaves the model as it was.
    """
    targets = patch_targets(model, layers)
    incoming = read_patch(source, targets)
    saved = {}
    with torch.no_grad():
        for name, param in targets.items():
            saved[name] = param.detach().clone()
            param.copy_(incoming[name])
    return saved


def restore(model, saved: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)


@contextlib.contextmanager
def patched(model, source: Checkpoint, layers: LayerSet) -> Iterator[object]:
    """The model with the layer set taken from `source` inside the block, its own tensors after."""
    saved = apply_patch(model, source, layers)
    try:
        yield model
    finally:
        restore(model, saved)
