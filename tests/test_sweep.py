"""Sweeps on tiny checkpoints: grid validation, failed points, stop and resume without recomputing,
progress records, the backend setting, captures after a sweep."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
import yaml

import engine.sweep.run as sweep_run
from engine.__main__ import main
from engine.errors import RecipeError
from engine.parallel import ParallelSet, save_jsonl
from engine.settings import cache_store
from engine.sweep import PAPER_GRIDS, SMALL_GRIDS, expand, load, run_sweep, validate_grid, write_sweep
from tests.tiny_models import make_model, make_tokenizer, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EN = ["the first of January", "twenty-one thousand euros"]
ES = ["el primero de enero", "veintiún mil euros"]
RU = ["первое января", "двадцать одна тысяча евро"]


@pytest.fixture
def grid_file(model_root, tmp_path):
    base = make_model("qwen2", seed=0, vocab_size=len(make_tokenizer()))
    save_checkpoint(model_root / "base", seed=0)
    for i, d in enumerate(["en-es", "en-ru"], 1):
        save_checkpoint(model_root / f"expert-{d}", seed=i, base=base, delta_scale=0.02)
    for split, order in (("dev", 1), ("devtest", -1)):  # different data, so devtest is never a dev cache hit
        save_jsonl(
            ParallelSet("en", "es", tuple(EN[::order]), tuple(ES[::order])), tmp_path / "data" / split / "en-es.jsonl"
        )
        save_jsonl(
            ParallelSet("en", "ru", tuple(EN[::order]), tuple(RU[::order])), tmp_path / "data" / split / "en-ru.jsonl"
        )
    grid = {
        "base_model": str(model_root / "base"),
        "experts": {d: str(model_root / f"expert-{d}") for d in ("en-es", "en-ru")},
        "data": {"dev": "data/dev", "devtest": "data/devtest"},
        "methods": {"task_arithmetic": {"weight": [0.2, 0.5, 1.0]}},
        "decoding": {"max_new_tokens": 4, "batch_size": 2},
    }
    path = tmp_path / "GRID.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_paper_grids_have_the_papers_sizes():
    sizes = {m: len(expand(m, validate_grid(m, "paper"))) for m in PAPER_GRIDS}
    assert sizes == {"task_arithmetic": 10, "ties": 9 * 25, "dare_linear": 10 * 9, "sce": 9}
    assert validate_grid("ties", "paper")["weight"][-1] == 2.5


def test_mergekits_remaining_methods_sweep_with_the_base_as_their_origin(grid_file):
    """multislerp takes the base as its origin, RAM and NearSwap task vectors on it: each sweep
    point's recipe puts the group's experts on the base, as for the paper's methods."""
    assert len(expand("ramplus_tl", validate_grid("ramplus_tl", SMALL_GRIDS["ramplus_tl"]))) == 4
    data = yaml.safe_load(grid_file.read_text())
    data["methods"] = {"multislerp": {"weight": [1.0]}, "ram": {"epsilon": [0.001, 0.01]}}
    grid_file.write_text(yaml.safe_dump(data))
    config = load(grid_file)
    points = [p for grid in config.grids.values() for p in grid]
    assert [p.label for p in points] == ["multislerp weight=1.0", "ram epsilon=0.001", "ram epsilon=0.01"]
    (group,) = config.groups
    for point in points:
        recipe = sweep_run.build_recipe(config, group, point)
        assert recipe.base_model == str(config.base_model)
        assert [m.model for m in recipe.models] == [str(p) for p in config.groups[group].values()]
    multislerp = sweep_run.build_recipe(config, group, points[0])
    assert [m.parameters for m in multislerp.models] == [{"weight": 1.0}] * 2


@pytest.mark.parametrize(
    "method, grid, message",
    [
        ("tiess", "paper", "tiess"),
        ("ties", {"densty": [0.5], "weight": [1.0]}, "densty"),
        ("ties", {"density": [0.5]}, "weight"),
        ("sce", {"select_topk": ["lots"]}, "select_topk"),
        ("linear", {"weight": [1.0]}, "base"),
        ("karcher", {"max_iter": [10]}, "base"),
        ("nearswap", {"t": []}, "nearswap.t: empty list"),
        ("ram", {"epsilon": ["tiny"]}, "ram.epsilon"),
    ],
)
def test_bad_grids_are_refused_by_name(method, grid, message):
    with pytest.raises(RecipeError, match=message):
        validate_grid(method, grid)


def test_bad_grid_file_fails_before_any_merge(grid_file, monkeypatch):
    data = yaml.safe_load(grid_file.read_text())
    data["methods"]["ties"] = {"density": [0.5], "weight": [1.0], "nomralize": [True]}
    grid_file.write_text(yaml.safe_dump(data))
    monkeypatch.setattr(sweep_run, "merge_into_model", lambda *a, **k: pytest.fail("merged before validation"))
    with pytest.raises(RecipeError, match="nomralize"):
        load(grid_file)


def counting_merges(monkeypatch):
    merged = []
    real = sweep_run.merge_into_model

    def spy(recipe, *args, **kwargs):
        merged.append(recipe.source)
        return real(recipe, *args, **kwargs)

    monkeypatch.setattr(sweep_run, "merge_into_model", spy)
    return merged


def test_stopped_sweep_resumes_without_recomputing(grid_file, monkeypatch, tmp_path):
    config = load(grid_file)
    merged = counting_merges(monkeypatch)
    steps = []
    first = run_sweep(
        config, progress=lambda done, total, msg: steps.append(done), should_stop=lambda: len(merged) >= 2
    )
    assert first.stopped and len(first.points) == 2 and len(merged) == 2

    merged.clear()
    second = run_sweep(config)
    assert not second.stopped and len(second.points) == 3
    third_point = second.points[2].recipe.source
    best = second.best[("experts", "task_arithmetic")][0].recipe.source
    # The two finished points are not merged again: only the third point (dev) and the best
    # point (devtest, not scored before) need a model.
    assert merged == [third_point, best]
    systems = [r.system for r in second.tables["experts"]]
    assert systems[:4] == ["base", "experts (own direction)", "expert en-es", "expert en-ru"]
    assert systems[4].startswith("task_arithmetic")

    merged.clear()
    third = run_sweep(config)
    assert merged == []  # everything cached
    assert [p.dev for p in third.points] == [p.dev for p in second.points]
    files = {p.name for p in write_sweep(third, tmp_path / "out")}
    assert files == {"points.csv", "table.csv", "table.md"}
    assert "experts (own direction)" in (tmp_path / "out" / "table.md").read_text()


def test_failed_point_is_reported_and_the_sweep_goes_on(grid_file, monkeypatch):
    config = load(grid_file)
    real = sweep_run.merge_into_model

    def flaky(recipe, *args, **kwargs):
        if "weight=0.5" in recipe.source:
            raise RuntimeError("simulated out-of-memory")
        return real(recipe, *args, **kwargs)

    monkeypatch.setattr(sweep_run, "merge_into_model", flaky)
    result = run_sweep(config, use_cache=False)
    assert [p.ok for p in result.points] == [True, False, True]
    assert "simulated" in result.failed[0].error and result.failed[0].recipe.merge_method == "task_arithmetic"
    assert ("experts", "task_arithmetic") in result.best


def test_sweep_cli(grid_file, tmp_path, capsys):
    assert main(["sweep", str(grid_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 points, 3 distinct merges" in out
    assert "each expert scored on every direction of its group (4 expert × direction scores" in out
    assert main(["sweep", str(grid_file), "--dry-run", "--own-direction-only"]) == 0
    assert "each expert scored on its own direction (2 expert × direction scores" in capsys.readouterr().out
    assert main(["sweep", str(grid_file), "--out", str(tmp_path / "res")]) == 0
    assert (tmp_path / "res" / "table.csv").read_text().startswith("group,system,direction")


def test_sweep_cli_refuses_an_unknown_method_by_name(grid_file, capsys):
    data = yaml.safe_load(grid_file.read_text())
    data["methods"] = {"magic_merge": {"weight": [1.0]}}
    grid_file.write_text(yaml.safe_dump(data))
    assert main(["sweep", str(grid_file)]) == 2
    assert "magic_merge" in capsys.readouterr().err


def _expert_translations(monkeypatch) -> list[tuple[str, str]]:
    """(expert, target language) of every translation a sweep runs with an expert's weights."""
    from engine.translate.generate import LazyModelTranslator

    calls = []
    real = LazyModelTranslator.translate

    def spy(self, sources, src_lang, tgt_lang):
        calls.append((self.identity, tgt_lang))
        return real(self, sources, src_lang, tgt_lang)

    monkeypatch.setattr(LazyModelTranslator, "translate", spy)
    return calls


@pytest.mark.parametrize("each_expert", [None, False])
def test_expert_rows_on_every_direction_of_their_group_by_default(grid_file, monkeypatch, each_expert):
    from engine.checkpoints import open_checkpoint

    data = yaml.safe_load(grid_file.read_text())
    data["methods"] = {"task_arithmetic": {"weight": [0.5]}}
    if each_expert is not None:
        data["each_expert"] = each_expert
    grid_file.write_text(yaml.safe_dump(data))
    experts = {open_checkpoint(p).fingerprint: d for d, p in data["experts"].items()}
    calls = _expert_translations(monkeypatch)
    steps = []
    config = load(grid_file)
    result = run_sweep(config, use_cache=False, progress=lambda done, total, msg: steps.append((done, total)))
    rows = {r.system: r for r in result.tables["experts"]}
    merge = "task_arithmetic weight=0.5"
    own = rows["experts (own direction)"]
    assert [d.direction for d in own.directions] == ["en-es", "en-ru"]
    expert_calls = sorted((experts[i], tgt) for i, tgt in calls if i in experts)
    if each_expert is None:  # the default: the paper's rows
        assert config.each_expert
        assert list(rows) == ["base", "experts (own direction)", "expert en-es", "expert en-ru", merge]
        assert all(len(r.directions) == 2 for r in rows.values())
        # The own-direction row is made of the expert rows' own cells: 2 experts × 2 directions translated once.
        assert expert_calls == [("en-es", "es"), ("en-es", "ru"), ("en-ru", "es"), ("en-ru", "ru")]
        for d in own.directions:
            assert d in rows[f"expert {d.direction}"].directions
    else:
        assert list(rows) == ["base", "experts (own direction)", merge]
        assert expert_calls == [("en-es", "es"), ("en-ru", "ru")]
    assert steps[-1][0] == steps[-1][1]  # progress reaches its total


def test_zoo_grid_uses_the_experts_present(grid_file, tmp_path):
    # The fixture's folder has the zoo layout: models/{base,expert-*} and data/{dev,devtest}.
    from engine.sweep import from_dict, zoo_grid

    config = from_dict(zoo_grid(tmp_path, dev_limit=1), tmp_path)
    assert {g: sorted(e) for g, e in config.groups.items()} == {"en-x": ["en-es", "en-ru"]}
    assert {m: len(p) for m, p in config.grids.items()} == {
        "task_arithmetic": 5,
        "ties": 6,
        "dare_linear": 3,
        "sce": 3,
        "multislerp": 1,
        "ram": 3,
        "ramplus_tl": 4,
        "tsv_merge": 3,
        "iso_c": 3,
        "iso_cts": 3,
        "pcb_merge": 4,
        "lines": 4,
    }
    assert all(len(s) == 1 for s in config.dev.values()) and config.joint is None


def test_progress_record_follows_the_sweep_to_done(grid_file, monkeypatch):
    from engine.sweep.progress import recent_sweeps, sweeps_folder

    def read():
        (path,) = sweeps_folder().glob("*.json")
        return json.loads(path.read_text())

    seen = []
    config = load(grid_file)
    merged = counting_merges(monkeypatch)
    stopped = run_sweep(
        config,
        should_stop=lambda: len(merged) >= 1,
        progress=lambda done, total, msg: seen.append((done, total, read())),
    )
    assert read()["state"] == "stopped" and read()["done"] == 1
    seen.clear()
    run_sweep(config, progress=lambda done, total, msg: seen.append((done, total, read())))
    # Written at every step, before the caller hears of it: done counts up to the total while running.
    assert [r["done"] for *_, r in seen] == [done for done, *_ in seen] == list(range(1, seen[-1][1] + 1))
    assert all(r["state"] == "running" and r["total"] == total for _, total, r in seen)
    final = read()
    # 3 points on dev; on devtest the best point, the base and the 2 experts
    assert (final["state"], final["done"], final["total"], final["backend"]) == ("done", 7, 7, "local")
    assert final["id"] == seen[0][2]["id"] and recent_sweeps()[0] == final  # a resumed sweep keeps its record
    assert stopped.stopped


def test_failed_points_are_counted_in_the_progress_record(grid_file, monkeypatch):
    from engine.sweep.progress import recent_sweeps

    real = sweep_run.merge_into_model

    def flaky(recipe, *args, **kwargs):
        if "weight=1.0" in recipe.source:
            raise RuntimeError("simulated")
        return real(recipe, *args, **kwargs)

    monkeypatch.setattr(sweep_run, "merge_into_model", flaky)
    run_sweep(load(grid_file), use_cache=False)
    assert recent_sweeps()[0]["failed"] == 1


def test_ray_backend_without_ray_names_the_requirements_file(grid_file, monkeypatch, capsys):
    import sys

    from engine.errors import SettingsError
    from engine.sweep import open_backend

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.delitem(sys.modules, "engine.sweep.ray_backend", raising=False)
    with pytest.raises(SettingsError, match="requirements-ray.txt"):
        open_backend("ray")
    assert main(["sweep", str(grid_file), "--backend", "ray"]) == 2
    assert "requirements-ray.txt" in capsys.readouterr().err


@pytest.mark.parametrize("value, message", [("slurm", "MERGESCOPE_BACKEND"), ("", None), ("RAY", None)])
def test_backend_setting(value, message):
    from engine.errors import SettingsError
    from engine.settings import load_settings

    if message:
        with pytest.raises(SettingsError, match=message):
            load_settings({"MERGESCOPE_BACKEND": value})
    else:
        assert load_settings({"MERGESCOPE_BACKEND": value, "MERGESCOPE_RAY_ADDRESS": " ray://head:10001 "}).backend == (
            value.lower() or "local"
        )
        assert load_settings({"MERGESCOPE_RAY_ADDRESS": " ray://head:10001 "}).ray_address == "ray://head:10001"


def test_sweep_cli_captures_the_table_models(grid_file, model_root, tmp_path):
    from engine.activations import Capture, CaptureSettings, capture, capture_key
    from engine.checkpoints import load_model, open_checkpoint

    assert main(["sweep", str(grid_file), "--out", str(tmp_path / "res"), "--capture"]) == 0
    config = load(grid_file)
    store = cache_store()
    captures = [e for e in store.entries() if e.kind == "capture"]
    # base, two experts and the best merge, each on both devtest sets
    assert len(captures) == 4 * 2
    model, tokenizer = load_model(model_root / "expert-en-ru", device="cpu")
    pairs = config.devtest["en-es"]
    want = capture(model, tokenizer, pairs, device="cpu")
    fingerprint = open_checkpoint(model_root / "expert-en-ru").fingerprint
    key = capture_key(fingerprint, tokenizer, pairs, CaptureSettings(), "cpu")
    got = Capture.from_entry(store.get(key))
    for span in want.hidden:
        torch.testing.assert_close(got.hidden[span], want.hidden[span], rtol=0, atol=1e-6)
        assert torch.equal(got.active[span], want.active[span])


def test_points_that_merge_to_the_same_model_are_merged_and_scored_once(grid_file, monkeypatch, model_root):
    """TIES with normalize on and equal weights: the weight axis is inert (it cancels in the
    normalisation), so its three points are one merge; task arithmetic (no normalize) keeps both."""
    from engine.merge import merge_into_model
    from engine.sweep import points_csv, table_markdown

    data = yaml.safe_load(grid_file.read_text())
    data["methods"] = {
        "ties": {"density": [0.5], "weight": [0.5, 1.0, 2.5], "normalize": [True]},
        "task_arithmetic": {"weight": [0.2, 0.5]},
    }
    grid_file.write_text(yaml.safe_dump(data))
    config = load(grid_file)
    merged = counting_merges(monkeypatch)
    steps = []
    result = run_sweep(config, progress=lambda done, total, msg: steps.append((done, total)))
    first = "ties density=0.5 normalize=True weight=0.5"
    ties = [p for p in result.points if p.point.method == "ties"]
    assert [p.same_as for p in ties] == ["", first, first]
    assert [p.same_as for p in result.points if p.point.method == "task_arithmetic"] == ["", ""]
    # 3 distinct merges on dev, then the best point of each method on devtest: 5 merges, none of
    # the inert points.
    assert len(merged) == 5 and not [s for s in merged if "weight=1.0" in s or "weight=2.5" in s]
    assert all(p.dev.directions == ties[0].dev.directions for p in ties)
    assert [p.dev.system for p in ties] == [p.point.label for p in ties]
    assert steps[-1][0] == steps[-1][1]
    assert "9 grid points" not in table_markdown(result) and "5 grid points, 3 distinct merges" in table_markdown(
        result
    )
    rows = list(csv.DictReader(io.StringIO(points_csv(result))))
    assert [r["same_model_as"] for r in rows if r["method"] == "ties"] == ["", first, first]

    # The sharing is sound: the inert points' models equal the first one's up to float rounding.
    recipes = {p.point.label: p.recipe for p in ties}
    reference = merge_into_model(recipes[first], device="cpu")[0].state_dict()
    heavy = merge_into_model(recipes[ties[2].point.label], device="cpu")[0].state_dict()
    for name, tensor in reference.items():
        torch.testing.assert_close(heavy[name], tensor, rtol=1e-5, atol=1e-6)

    # The table equals the one of the same grid without the inert axis.
    data["methods"]["ties"]["weight"] = [0.5]
    grid_file.write_text(yaml.safe_dump(data))
    without = run_sweep(load(grid_file))
    assert [r.to_dict() for r in without.tables["experts"]] == [r.to_dict() for r in result.tables["experts"]]
