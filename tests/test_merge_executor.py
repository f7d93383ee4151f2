"""The streaming executor: live models, checkpoint folders, schedules on the right layers, and
refusals that name the file and the problem and leave no partial output behind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file, save_file

import engine.merge.executor as executor
from engine.__main__ import main
from engine.errors import (
    CheckpointError,
    IncompatibleModelsError,
    InsufficientMemoryError,
    MergeScopeError,
    PathNotAllowedError,
)
from engine.merge import estimate_memory, iter_merged, merge_into_model, plan_merge, save_merge
from engine.recipe import loads
from engine.settings import get_settings
from tests.tiny_models import save_checkpoint


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("exec_zoo")
    base_path = save_checkpoint(root / "base", seed=0)
    base = transformers.AutoModelForCausalLM.from_pretrained(base_path)
    for i in (1, 2):
        save_checkpoint(root / f"e{i}", base=base, delta_scale=0.05, seed=i)
    return root


@pytest.fixture
def zoo(zoo_dir, tmp_path, monkeypatch):
    """The shared checkpoints plus a per-test writable root for damaged copies."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("MERGESCOPE_MODEL_ROOTS", f"{zoo_dir}:{scratch}")
    get_settings.cache_clear()
    return zoo_dir, scratch


def _recipe(root: Path, method="ties", weight="0.5", base="base", extra="", models=("e1", "e2")):
    lines = [f"merge_method: {method}", f"base_model: {root / base}", "models:"]
    for m in models:
        lines += [f"  - model: {root / m}", f"    parameters: {{weight: {weight}, density: 0.6}}"]
    return loads("\n".join(lines) + "\n" + extra, source="recipe.yaml")


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_live_model_equals_saved_checkpoint_and_runs(zoo, tmp_path):
    root, _ = zoo
    recipe = _recipe(root)
    model, tokenizer = merge_into_model(recipe, device="cpu")
    out = save_merge(recipe, tmp_path / "merged", device="cpu")
    saved = load_file(out / "model.safetensors")
    live = model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(live[name], tensor.to(live[name].dtype)), name
    assert {"config.json", "tokenizer.json", "chat_template.jinja", "mergekit_config.yml", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    assert loads((out / "mergekit_config.yml").read_text()) == recipe
    card = (out / "README.md").read_text()
    assert "TIES" in card and "arxiv.org/abs/2306.01708" in card and "Recipe hash" in card
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "twenty-one"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reloaded(ids).logits)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template


def test_sharded_output_holds_the_same_tensors(zoo, tmp_path):
    root, _ = zoo
    recipe = _recipe(root, extra="dtype: bfloat16\n")
    single = save_merge(recipe, tmp_path / "one", device="cpu")
    sharded = save_merge(recipe, tmp_path / "many", device="cpu", max_shard_bytes=20_000)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    merged = {}
    for shard in shards:
        merged.update(load_file(sharded / shard))
    reference = load_file(single / "model.safetensors")
    assert merged.keys() == reference.keys()
    assert all(torch.equal(merged[k], reference[k]) and merged[k].dtype == torch.bfloat16 for k in merged)
    assert json.loads((sharded / "config.json").read_text())["dtype"] == "bfloat16"
    assert transformers.AutoModelForCausalLM.from_pretrained(sharded).dtype == torch.bfloat16


# RAM+ counts each model's shared and unique entries over the whole tensor before merging any block;
# epsilon near the task vectors' scale (0.05) makes both kinds of entry common.
@pytest.mark.parametrize(
    "method,extra",
    [
        ("ties", ""),
        ("task_arithmetic", ""),
        ("ram", "parameters: {epsilon: 0.05}"),
        ("ramplus_tl", "parameters: {epsilon: 0.05, r: 0.5, alpha: 0.5}"),
    ],
)
def test_row_chunk_streaming_from_checkpoints_equals_whole_tensors(zoo, monkeypatch, method, extra):
    root, _ = zoo
    recipe = _recipe(root, method=method, extra=extra)
    monkeypatch.setattr(executor, "ONE_PASS_CHUNK_ELEMENTS", 1 << 30)  # one-pass methods too: matrices whole
    whole = dict(iter_merged(plan_merge(recipe), "cpu"))
    monkeypatch.setattr(executor, "CHUNK_ELEMENTS", 100)  # every matrix in several row blocks
    monkeypatch.setattr(executor, "ONE_PASS_CHUNK_ELEMENTS", 100)
    monkeypatch.setattr(executor, "STREAM_ABOVE", 100)
    chunked = dict(iter_merged(plan_merge(recipe), "cpu"))
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-6, atol=1e-7)


def test_per_layer_schedule_and_filters_hit_the_right_tensors(zoo):
    root, _ = zoo
    text = (
        f"merge_method: task_arithmetic\nbase_model: {root / 'base'}\nmodels:\n"
        f"  - model: {root / 'e1'}\n    parameters:\n"
        "      weight: [{filter: self_attn, value: 0.0}, {value: [0.0, 1.0]}]\n"
    )
    merged = dict(iter_merged(plan_merge(loads(text)), "cpu"))
    base = load_file(root / "base" / "model.safetensors")
    expert = load_file(root / "e1" / "model.safetensors")
    layers = 4
    for name, tensor in merged.items():
        delta = expert[name].double() - base[name].double()
        if ".layers." in name and "self_attn" not in name:
            layer = int(name.split(".layers.")[1].split(".")[0])
            weight = layer / (layers - 1)  # planted: the schedule [0, 1] over 4 blocks
        else:
            weight = 0.0  # attention (filter) and embeddings / head (t = 0)
        torch.testing.assert_close(tensor.double(), base[name].double() + weight * delta, rtol=0, atol=1e-6, msg=name)


def _damaged_copy(root: Path, scratch: Path, name: str, tensor_name: str, value: float) -> Path:
    import shutil

    target = scratch / name
    shutil.copytree(root / "e2", target)
    tensors = load_file(target / "model.safetensors")
    tensors[tensor_name] = tensors[tensor_name].clone()
    tensors[tensor_name].view(-1)[3] = value
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.mark.parametrize("method, weight", [("ties", "0.5"), ("task_arithmetic", "0.5"), ("task_arithmetic", "0.0")])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_input_is_refused_naming_file_and_tensor_without_partial_output(
    zoo, tmp_path, value, method, weight
):
    # The task-arithmetic family checks its outputs, not its inputs: a NaN/Inf input must reach
    # the output even when its model's weight is 0 or its entry is trimmed away.
    root, scratch = zoo
    last = plan_merge(_recipe(root)).jobs[-1].name  # fail late: earlier tensors are already written
    bad = _damaged_copy(root, scratch, f"bad-{method}-{weight}-{value}", last, value)
    recipe = _recipe(root, method=method, weight=weight, models=("e1", str(bad)))
    with pytest.raises(CheckpointError, match=rf"{bad / 'model.safetensors'}: tensor '{last}' holds 1 NaN/Inf"):
        save_merge(recipe, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        merge_into_model(recipe, device="cpu")


def test_merge_that_would_not_fit_is_refused_before_starting(zoo, tmp_path, monkeypatch):
    root, _ = zoo
    recipe = _recipe(root)
    est = estimate_memory(plan_merge(recipe), torch.device("cpu"), into_model=True)
    params = sum(math.prod(t.shape) for t in load_file(root / "base" / "model.safetensors").values())
    assert est.host_bytes >= params * 4  # the live model itself, in float32
    monkeypatch.setattr(executor, "available_memory", lambda device: (10_000, None))
    with pytest.raises(
        InsufficientMemoryError,
        match=r"recipe.yaml: merge refused before starting: it needs about .* GiB .* 0.00 GiB available",
    ):
        save_merge(recipe, tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    with pytest.raises(InsufficientMemoryError):
        merge_into_model(recipe, device="cpu")


def test_existing_output_is_kept_unless_overwrite(zoo, tmp_path):
    root, _ = zoo
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MergeScopeError, match="already exists"):
        save_merge(_recipe(root), out, device="cpu")
    assert (out / "keep.txt").read_text() == "mine"
    save_merge(_recipe(root), out, device="cpu", overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert _leftovers(tmp_path) == []


def test_checkpoints_outside_roots_or_incompatible_are_refused(zoo, tmp_path):
    root, scratch = zoo
    outside = save_checkpoint(tmp_path / "elsewhere", seed=5)
    with pytest.raises(PathNotAllowedError, match="outside the configured model roots"):
        save_merge(_recipe(root, models=("e1", str(outside))), tmp_path / "out", device="cpu")
    wide = save_checkpoint(scratch / "wide", seed=5, hidden_size=64)
    with pytest.raises(IncompatibleModelsError, match="shape"):
        save_merge(_recipe(root, models=("e1", str(wide))), tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_cli_merges_and_reports_bad_recipes(zoo, tmp_path, capsys):
    root, _ = zoo
    good = tmp_path / "good.yaml"
    _recipe(root).save(good)
    assert main(["merge", str(good), "--out", str(tmp_path / "cli"), "--device", "cpu", "--no-progress"]) == 0
    assert (tmp_path / "cli" / "model.safetensors").is_file()
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(good.read_text())
    del data["models"][0]["parameters"]["weight"]
    bad.write_text(yaml.safe_dump(data))
    assert main(["merge", str(bad), "--out", str(tmp_path / "cli2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: model" in err and "missing required parameter 'weight'" in err
    assert not (tmp_path / "cli2").exists() and _leftovers(tmp_path) == []


def test_cli_merges_checkpoints_named_in_its_recipe_outside_the_roots(zoo, tmp_path):
    """The terminal's user is trusted with the paths in the recipe they name; nothing else is."""
    root, _ = zoo
    outside = save_checkpoint(tmp_path / "elsewhere", seed=5)
    named = tmp_path / "named.yaml"
    _recipe(root, models=("e1", str(outside))).save(named)
    assert main(["merge", str(named), "--out", str(tmp_path / "cli"), "--device", "cpu", "--no-progress"]) == 0
    assert (tmp_path / "cli" / "model.safetensors").is_file()
    with pytest.raises(PathNotAllowedError, match="outside the configured model roots"):
        save_merge(_recipe(root, models=("e1", str(outside))), tmp_path / "api", device="cpu")
    assert not (tmp_path / "api").exists()


def test_tied_embedding_models_merge_into_a_live_model(model_root):
    """The demo zoo ties lm_head to the embedding: the live merge must keep them one tensor."""
    base_path = save_checkpoint(model_root / "base", tie_word_embeddings=True)
    base = transformers.AutoModelForCausalLM.from_pretrained(base_path)
    experts = [
        save_checkpoint(model_root / f"e{i}", base=base, delta_scale=0.05, seed=i, tie_word_embeddings=True)
        for i in (1, 2)
    ]
    recipe = loads(
        f"merge_method: task_arithmetic\nbase_model: {base_path}\nmodels:\n"
        + "".join(f"  - model: {e}\n    parameters: {{weight: 0.5}}\n" for e in experts),
        source="tied.yaml",
    )
    model, _ = merge_into_model(recipe, device="cpu")

    # Reference: base + 0.5 * sum of task vectors, in float64 from the saved files.
    tensors = [load_file(p / "model.safetensors") for p in (base_path, *experts)]
    expected = {
        n: (t.double() + sum(0.5 * (e[n].double() - t.double()) for e in tensors[1:])) for n, t in tensors[0].items()
    }
    live = model.state_dict()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    for name, value in expected.items():
        torch.testing.assert_close(live[name].double(), value, rtol=1e-6, atol=1e-6)
    ids = torch.tensor([[3, 17, 42, 99]])
    reference = transformers.AutoModelForCausalLM.from_pretrained(base_path)
    reference.load_state_dict({n: v.float() for n, v in expected.items()}, strict=False)
    reference.tie_weights()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)


def test_merge_next_to_a_checkpoint_load_keeps_tied_embeddings(tmp_path, monkeypatch):
    """transformers' from_pretrained makes tie_weights a no-op for every thread while it runs; a
    merge built during another thread's load once came out with lm_head untied (a dashboard
    session merging while the prefetch worker loaded a checkpoint). Here the load is held inside
    from_pretrained while the merge runs: the merge must wait for it and come out tied."""
    import threading

    from engine.checkpoints import load_model

    base_path = save_checkpoint(tmp_path / "base", seed=0, tie_word_embeddings=True)
    base = transformers.AutoModelForCausalLM.from_pretrained(base_path)
    for i in (1, 2):
        save_checkpoint(tmp_path / f"e{i}", base=base, delta_scale=0.05, seed=i, tie_word_embeddings=True)
    monkeypatch.setenv("MERGESCOPE_MODEL_ROOTS", str(tmp_path))
    get_settings.cache_clear()

    inside_load, release_load = threading.Event(), threading.Event()
    original_init = transformers.Qwen2ForCausalLM.__init__

    def init_that_pauses_the_load(self, config, *args, **kwargs):
        original_init(self, config, *args, **kwargs)
        if threading.current_thread() is loader_thread:
            inside_load.set()
            release_load.wait(timeout=60)

    monkeypatch.setattr(transformers.Qwen2ForCausalLM, "__init__", init_that_pauses_the_load)
    loaded, merged, errors = [], [], []
    loader_thread = threading.Thread(target=lambda: loaded.append(load_model(tmp_path / "e1", device="cpu")))
    merger = threading.Thread(target=lambda: _merge_or_error(_recipe(tmp_path), merged, errors))
    loader_thread.start()
    assert inside_load.wait(timeout=60)
    merger.start()
    merger.join(timeout=2)  # with the patch active, a merge that does not wait fails in this time
    release_load.set()
    loader_thread.join(timeout=60)
    merger.join(timeout=60)
    assert loaded
    assert errors == []
    model, _ = merged[0]
    assert model.lm_head.weight is model.model.embed_tokens.weight


def _merge_or_error(recipe, merged: list, errors: list) -> None:
    try:
        merged.append(merge_into_model(recipe, device="cpu"))
    except MergeScopeError as err:
        errors.append(str(err))
