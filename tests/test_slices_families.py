"""Layer stacking (mergekit's slices) on the ten tiny families: the output folder loads in
transformers with every weight in place, has the stacked layer count and per-layer entries, and
holds each source layer where the slices put it."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from engine.merge import merge_into_model, save_merge
from engine.merge.params import split_layer_name
from engine.recipe import from_dict
from engine.settings import get_settings
from tests.tiny_families import FAMILIES, LAYERS, save_family


@pytest.fixture(scope="module")
def family_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    for family in FAMILIES:
        save_family(root, family)
    return root


@pytest.fixture
def families(family_root, model_root, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_MODEL_ROOTS", f"{family_root}:{model_root}")
    get_settings.cache_clear()
    return family_root


def _stack(folder) -> dict:
    """ft1's blocks 0..LAYERS-2, then ft2's blocks 1..LAYERS-1: 2 (LAYERS − 1) blocks."""
    return {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(folder / "ft1"), "layer_range": [0, LAYERS - 1]}]},
            {"sources": [{"model": str(folder / "ft2"), "layer_range": [1, LAYERS]}]},
        ],
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_stacked_folder_loads_with_the_source_layers_in_place(families, model_root, family, one_torch_thread):
    folder = families / family
    recipe = from_dict(_stack(folder))
    out = save_merge(recipe, model_root / f"{family}-stacked", device="cpu")
    stacked = 2 * (LAYERS - 1)
    # Which source layer each output layer holds, from the recipe: (model, layer).
    behind = [("ft1", i) for i in range(LAYERS - 1)] + [("ft2", i) for i in range(1, LAYERS)]
    written = load_file(out / "model.safetensors")
    sources = {name: load_file(folder / name / "model.safetensors") for name in ("ft1", "ft2")}
    for name, tensor in written.items():
        parts = split_layer_name(name)
        if parts is None:  # embeddings from the first slice's model, the rest from the last's
            model = "ft1" if any(m in name for m in ("embed_tokens", "embed_in", "wte", "wpe")) else "ft2"
            assert torch.equal(tensor, sources[model][name]), name
            continue
        prefix, index, suffix = parts
        model, layer = behind[index]
        assert torch.equal(tensor, sources[model][f"{prefix}{layer}{suffix}"]), name
    assert len({split_layer_name(n)[1] for n in written if split_layer_name(n)}) == stacked

    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert model.config.get_text_config().num_hidden_layers == stacked
    types = getattr(model.config.get_text_config(), "layer_types", None)
    if types is not None:  # per-layer attention kinds follow their source layers
        source_types = {m: transformers.AutoConfig.from_pretrained(folder / m).get_text_config() for m in sources}
        assert types == [source_types[m].layer_types[i] for m, i in behind]
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 11]])).logits
    assert logits.shape[:2] == (1, 4) and torch.isfinite(logits).all()

    live, _ = merge_into_model(recipe, "cpu", dtype=torch.bfloat16)
    loaded, in_memory = model.to(torch.bfloat16).state_dict(), live.state_dict()
    assert set(loaded) == set(in_memory)
    for name, tensor in loaded.items():
        assert torch.equal(tensor, in_memory[name]), name
    assert (
        json.loads((out / "config.json").read_text())["architectures"]
        == json.loads((folder / "base" / "config.json").read_text())["architectures"]
    )
