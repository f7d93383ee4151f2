"""Layer patching: layer sets and random controls, in-place patches against the expert's and the
merge's own tensors, routing by direction (planted), the table's statistics by hand, identities,
export and the CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

from engine.checkpoints import open_checkpoint
from engine.errors import MergeScopeError, RecipeError
from engine.parallel import ParallelSet, save_jsonl
from engine.patch.experiment import PatchScore, run_patch_experiment, summary_table
from engine.patch.export import export_patched
from engine.patch.layers import control_sets, parse_layer_set, random_blocks
from engine.patch.patching import apply_patch, patched
from engine.patch.systems import patched_system
from engine.pipeline.models import ModelCache
from engine.pipeline.systems import checkpoint_system, merge_system
from engine.recipe import from_dict
from tests.tiny_models import save_checkpoint

DIRECTIONS = ("en-de", "en-es")


@pytest.fixture
def tiny(model_root, one_torch_thread):
    """base and two fine-tune-like experts named by direction (4 blocks, untied head)."""
    base_path = save_checkpoint(model_root / "base", seed=0)
    base = transformers.AutoModelForCausalLM.from_pretrained(base_path)
    experts = {
        d: save_checkpoint(model_root / f"expert-{d}", base=base, delta_scale=0.05, seed=i + 1)
        for i, d in enumerate(DIRECTIONS)
    }
    recipe = from_dict(
        {
            "merge_method": "task_arithmetic",
            "base_model": str(base_path),
            "models": [{"model": str(p), "parameters": {"weight": 0.5}} for p in experts.values()],
        }
    )
    return model_root, base_path, experts, recipe


def _state(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _live(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ------------------------------------------------------------------ layer sets


@pytest.mark.parametrize(
    ("text", "blocks", "parts"),
    [
        ("last:3", (5, 6, 7), ()),
        ("first:2+norm", (0, 1), ("norm",)),
        ("0,2-4", (0, 2, 3, 4), ()),
        ("0 5 2-3+norm", (0, 2, 3, 5), ("norm",)),
        ("all+head+embed", tuple(range(8)), ("embed", "head")),
        ("last:0", (), ()),
    ],
)
def test_layer_sets_parse(text, blocks, parts):
    layers = parse_layer_set(text, 8)
    assert (layers.blocks, layers.parts) == (blocks, parts)
    assert parse_layer_set(layers.text, 8) == layers  # the canonical text reads back


@pytest.mark.parametrize("text", ["last:9", "8", "top:2", "1-x", "last:2+lm"])
def test_bad_layer_sets_are_refused_with_the_reason(text):
    with pytest.raises(RecipeError, match="layer set"):
        parse_layer_set(text, 8)


def test_random_controls_are_seeded_distinct_and_of_the_requested_size():
    routed = parse_layer_set("last:3+norm", 12)
    first = control_sets(routed, 12, 6, seed=7)
    again = control_sets(routed, 12, 6, seed=7)
    assert first == again  # the same seed gives the same layers
    for drawn in first:
        assert len(drawn.blocks) == 3 and len(set(drawn.blocks)) == 3
        assert not set(drawn.blocks) & {9, 10, 11}  # the paper's rule: outside the routed blocks
        assert drawn.parts == ()
    assert len({d.blocks for d in first}) > 1  # seeds differ
    # Independent reference: Python's own seeded sampler over the eligible blocks.
    assert first[2].blocks == tuple(sorted(random.Random(9).sample(range(9), 3)))
    stack = control_sets(routed, 12, 40, seed=0, draw_from="stack")
    assert {b for d in stack for b in d.blocks} & {9, 10, 11}  # 'stack' may draw the routed blocks
    with pytest.raises(RecipeError, match="cannot draw 5"):
        random_blocks(5, 6, seed=0, exclude=(4, 5))


# ------------------------------------------------------------------ patching tensors


def test_full_patch_equals_the_expert_and_empty_patch_equals_the_merge(tiny):
    _, _, experts, recipe = tiny
    models = ModelCache()
    merge = merge_system(recipe)
    model = models.get(merge).model
    merged = _live(model)
    expert = open_checkpoint(experts["en-de"])
    with patched(model, expert, parse_layer_set("all+embed+norm+head", 4)):
        theirs = _state(experts["en-de"])
        live = _live(model)
        assert set(live) == set(theirs)
        for name, tensor in theirs.items():
            assert torch.equal(live[name], tensor), name
    for name, tensor in _live(model).items():  # restored on exit
        assert torch.equal(tensor, merged[name]), name
    with patched(model, expert, parse_layer_set("last:0", 4)):
        assert all(torch.equal(t, merged[n]) for n, t in _live(model).items())


def test_a_block_patch_takes_exactly_those_blocks(tiny):
    _, _, experts, recipe = tiny
    model = ModelCache().get(merge_system(recipe)).model
    merged = _live(model)
    theirs = _state(experts["en-es"])
    apply_patch(model, open_checkpoint(experts["en-es"]), parse_layer_set("1,3+norm", 4))
    for name, tensor in _live(model).items():
        takes = name.startswith(("model.layers.1.", "model.layers.3.", "model.norm."))
        assert torch.equal(tensor, theirs[name] if takes else merged[name]), name


def test_tied_head_needs_embed_too(model_root):
    path = save_checkpoint(model_root / "tied", seed=0, tie_word_embeddings=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    with pytest.raises(RecipeError, match="ties its LM head"):
        apply_patch(model, open_checkpoint(path), parse_layer_set("last:1+head", 4))


def test_patched_systems_have_content_identities_and_build_from_the_cached_merge(tiny):
    _, _, experts, recipe = tiny
    merge = merge_system(recipe)
    de, es = (checkpoint_system(open_checkpoint(experts[d])) for d in DIRECTIONS)
    last2 = parse_layer_set("last:2+norm", 4)
    one = patched_system(merge, de, last2)
    assert one.identity == patched_system(merge, de, parse_layer_set("2-3+norm", 4)).identity
    assert one.identity != patched_system(merge, es, last2).identity
    assert one.identity != patched_system(merge, de, parse_layer_set("last:2", 4)).identity
    assert one.direction == "en-de"
    models = ModelCache()
    live = _live(models.get(one).model)
    assert models.builds == 2  # the merge once, then its patched copy
    merged = _live(models.get(merge).model)
    theirs = _state(experts["en-de"])
    for name, tensor in live.items():
        takes = name.startswith(("model.layers.2.", "model.layers.3.", "model.norm."))
        assert torch.equal(tensor, theirs[name] if takes else merged[name]), name


def test_export_writes_the_patched_tensors(tiny, tmp_path):
    _, _, experts, recipe = tiny
    merge = merge_system(recipe)
    system = patched_system(merge, checkpoint_system(open_checkpoint(experts["en-es"])), parse_layer_set("last:1", 4))
    models = ModelCache()
    out = export_patched(system, models, tmp_path / "x")
    saved = _state(out)
    for name, tensor in _live(models.get(system).model).items():
        assert torch.equal(saved[name], tensor), name
    assert json.loads((out / "patch.json").read_text())["blocks"] == [3]
    with pytest.raises(MergeScopeError, match="already exists"):
        export_patched(system, models, out)


# ------------------------------------------------------------------ routing and the table


def _planted_sets(experts) -> list[ParallelSet]:
    # The reference of each direction is the name of its expert: a translator that answers with the
    # name of the expert whose last block it carries scores chrF 100 exactly when routing is right.
    return [ParallelSet("en", d.split("-")[1], ("one", "two"), (f"expert-{d}",) * 2) for d in DIRECTIONS]


def test_each_direction_is_scored_with_its_own_experts_blocks(tiny, monkeypatch):
    from engine.translate import generate

    _, base_path, experts, recipe = tiny
    last_block = {d: _state(p)["model.layers.3.mlp.up_proj.weight"] for d, p in experts.items()}

    def whose_last_block(self, sources, src_lang, tgt_lang):
        weight = self.model.model.layers[3].mlp.up_proj.weight.detach()
        owner = next((f"expert-{d}" for d, t in last_block.items() if torch.equal(weight, t)), "merge")
        return [owner] * len(sources)

    monkeypatch.setattr(generate.ModelTranslator, "translate", whose_last_block)
    base = checkpoint_system(open_checkpoint(base_path))
    expert_systems = [checkpoint_system(open_checkpoint(p)) for p in experts.values()]
    merge = merge_system(recipe)
    models = ModelCache()
    run = run_patch_experiment(
        base, merge, expert_systems, _planted_sets(experts), [parse_layer_set("last:1", 4)], models, controls=2
    )
    patched_rows = [s for s in run.scores if s.role == "patched"]
    assert sorted(s.direction for s in patched_rows) == list(DIRECTIONS)
    assert all(s.chrf == pytest.approx(100.0) for s in patched_rows)
    assert all(s.chrf < 50 for s in run.scores if s.role in ("merge", "control"))  # controls leave block 3 alone
    merged = ModelCache().get(merge).model
    assert all(torch.equal(t, dict(merged.named_parameters())[n]) for n, t in _live(models.get(merge).model).items())


def test_table_mean_and_spread_equal_a_hand_computation():
    def score(direction, role, chrf, seed=None, layers="last:2"):
        return PatchScore(
            direction, role, "" if role in ("base", "merge", "expert") else layers, seed, (), 1.0, chrf, 0.1
        )

    controls = {"en-de": [10.0, 20.0, 45.0], "en-es": [30.0, 31.0, 35.0]}
    scores = [score(d, r, v) for d in DIRECTIONS for r, v in (("base", 20.0), ("merge", 15.0), ("expert", 80.0))]
    scores += [score(d, "patched", 40.0 if d == "en-de" else 50.0) for d in DIRECTIONS]
    scores += [score(d, "control", v, seed=s) for d, vs in controls.items() for s, v in enumerate(vs)]
    rows = {r["direction"]: r for r in summary_table(scores, ["last:2"])}
    for d, vs in controls.items():
        assert rows[d]["control_mean_chrf"] == pytest.approx(np.mean(vs))
        assert rows[d]["control_spread_chrf"] == pytest.approx(np.std(vs, ddof=1))
    per_seed = np.mean([controls["en-de"], controls["en-es"]], axis=0)  # each seed's direction average
    assert rows["avg"]["control_mean_chrf"] == pytest.approx(per_seed.mean())
    assert rows["avg"]["control_spread_chrf"] == pytest.approx(np.std(per_seed, ddof=1))
    assert rows["avg"]["patched_chrf"] == pytest.approx(45.0)
    assert rows["en-de"]["controls"] == 3


def test_cli_writes_the_table(tiny, tmp_path, monkeypatch):
    from engine.__main__ import main

    monkeypatch.setenv("MERGESCOPE_MAX_NEW_TOKENS", "4")
    _, _, experts, recipe = tiny
    recipe_file = tmp_path / "recipe.yaml"
    recipe.save(recipe_file)
    data = []
    for s in _planted_sets(experts):
        data.append(tmp_path / f"{s.direction}.jsonl")
        save_jsonl(s, data[-1])
    out = tmp_path / "report.json"
    argv = ["patch", str(recipe_file), "--layers", "last:1+norm", "last:2", "--controls", "2"]
    outs = ["--out", str(out), "--out", str(tmp_path / "r.md"), "--export", str(tmp_path / "patched")]
    assert main([*argv, "--data", *map(str, data), *outs]) == 0
    report = json.loads(out.read_text())
    rows = report["table"]
    assert [(r["layers"], r["direction"]) for r in rows] == [
        (layers, d) for layers in ("last:1+norm", "last:2") for d in (*DIRECTIONS, "avg")
    ]
    assert all(r["controls"] == 2 for r in rows)
    # Every control is listed with its seed and blocks, so per-seed figures come from the report.
    controls = [c for c in report["scores"] if c["role"] == "control"]
    assert sorted({(c["layers"], c["seed"]) for c in controls}) == [
        (t, seed) for t in ("last:1+norm", "last:2") for seed in (0, 1)
    ]
    assert all(len(c["blocks"]) == int(c["layers"][5]) for c in controls)
    assert {c["direction"] for c in controls} == set(DIRECTIONS)
    assert "| en-de |" in (tmp_path / "r.md").read_text()
    for d in DIRECTIONS:  # the first set's patched merge, one checkpoint per direction
        exported = _state(tmp_path / "patched" / d)
        assert torch.equal(
            exported["model.layers.3.self_attn.q_proj.weight"],
            _state(experts[d])["model.layers.3.self_attn.q_proj.weight"],
        )
        assert json.loads((tmp_path / "patched" / d / "patch.json").read_text())["parts"] == ["norm"]
    bad = main(["patch", str(recipe_file), "--layers", "last:7", "--data", *map(str, data)])
    assert bad == 2
