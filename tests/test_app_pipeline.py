"""engine/pipeline: the dashboard's data flow without Streamlit (model cache, cache reuse, data, names)."""

from __future__ import annotations

import importlib
import threading
import time

import pytest

from engine.device import default_device
from engine.errors import DataError, RecipeError
from engine.pipeline.analyses import cka_pair
from engine.pipeline.catalog import checkpoints_by_label, direction_from_name
from engine.pipeline.data import available_directions, data_sets
from engine.pipeline.memo import clear_memo
from engine.pipeline.models import ModelCache, limit_torch_threads
from engine.pipeline.prefetch import Prefetcher, prefetch_checkpoints
from engine.pipeline.recipes import build_recipe, parse_recipe, recipe_hash, recipe_view, recipe_yaml
from engine.pipeline.scores import evaluate_systems, score_rows
from engine.pipeline.systems import checkpoint_system, merge_system
from engine.settings import get_settings
from tests.browser_harness import demo_env, tiny_zoo  # noqa: F401  (fixtures)


@pytest.mark.parametrize(
    "name, direction",
    [
        ("expert-en-es", "en-es"),
        ("expert_es_en", "es-en"),
        ("qwen-en-hi", "en-hi"),
        ("hi2en", "hi-en"),
        ("qwen_en_to_bn", "en-bn"),
        ("zoo/experts/en-ru", "en-ru"),
        ("base", None),
        ("joint", None),
        ("expert-xx-yy", None),  # not language codes the prompt can name
        ("wide-other", None),
    ],
)
def test_direction_from_name(name, direction):
    assert direction_from_name(name) == direction


def test_data_sets_tell_dev_from_devtest_and_cut_to_n(demo_env):
    dev = data_sets("dev", ["en-pt", "en-es"], 3)
    assert [s.direction for s in dev] == ["en-es", "en-pt"]
    assert all(len(s) == 3 for s in dev)
    assert available_directions("devtest") == ["en-es", "en-pt", "es-en"]
    with pytest.raises(DataError, match="no devtest data for en-de"):
        data_sets("devtest", ["en-de"])


def test_model_cache_builds_once_under_concurrent_requests(demo_env, monkeypatch):
    system = checkpoint_system(checkpoints_by_label()["expert-en-es"])
    cache = ModelCache()
    calls = []
    real_build = cache._build

    def slow_build(s):
        calls.append(s.identity)
        time.sleep(0.3)  # long enough for every thread to arrive while the first one builds
        return real_build(s)

    monkeypatch.setattr(cache, "_build", slow_build)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(system))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [system.identity]
    assert len({id(g) for g in got}) == 1 and cache.builds == 1


def test_model_cache_drops_the_least_recently_used(demo_env):
    by_label = checkpoints_by_label()
    systems = [checkpoint_system(by_label[n]) for n in ("base", "expert-en-es", "expert-en-pt")]
    one = ModelCache().get(systems[0]).weight_bytes
    cache = ModelCache(budget_bytes=2 * one)  # room for two of these equal-sized models
    cache.get(systems[0]), cache.get(systems[1]), cache.get(systems[0]), cache.get(systems[2])
    assert systems[0].identity in cache and systems[2].identity in cache and systems[1].identity not in cache


def test_model_cache_keeps_a_model_larger_than_its_budget_until_the_next(demo_env):
    by_label = checkpoints_by_label()
    systems = [checkpoint_system(by_label[n]) for n in ("base", "expert-en-es")]
    cache = ModelCache(budget_bytes=1)
    cache.get(systems[0])
    assert systems[0].identity in cache  # its caller is about to use it
    cache.get(systems[1])
    assert systems[1].identity in cache and systems[0].identity not in cache


def test_the_model_memory_budget_is_a_setting_else_half_the_memory(demo_env, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_MODEL_MEMORY_GB", "0.5")
    get_settings.cache_clear()
    assert ModelCache().budget_bytes == 512 * 1024**2
    monkeypatch.delenv("MERGESCOPE_MODEL_MEMORY_GB")
    monkeypatch.setenv("MERGESCOPE_DEVICE", "cpu")
    get_settings.cache_clear()
    default_device.cache_clear()
    try:
        mem_total_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
        assert ModelCache().budget_bytes == pytest.approx(mem_total_kib * 1024 / 2, rel=0.02)
    finally:
        default_device.cache_clear()  # the next test's settings choose its device again


def test_warm_views_need_no_model(demo_env, monkeypatch):
    """Scores and captures come from the content-addressed cache: a second process (fresh
    ModelCache) shows the same results without loading or merging anything."""
    monkeypatch.setenv("MERGESCOPE_MAX_NEW_TOKENS", "4")
    get_settings.cache_clear()
    by_label = checkpoints_by_label()
    recipe = build_recipe("base", ["expert-en-es", "expert-en-pt"], "ties", {"weight": 0.5, "density": 0.5})
    systems = [checkpoint_system(by_label["base"]), merge_system(recipe)]
    sets = data_sets("dev", ["en-es", "en-pt"], 4)

    cold = ModelCache()
    scores = score_rows(evaluate_systems(systems, sets, cold))
    matrix = cka_pair(systems[0], systems[1], sets, "source", cold)
    assert cold.builds == 2

    clear_memo()  # as a fresh process: only the disk cache remains
    warm = ModelCache()
    assert score_rows(evaluate_systems(systems, sets, warm)) == scores
    again = cka_pair(systems[0], systems[1], sets, "source", warm)
    assert (again.values == matrix.values).all()
    assert warm.builds == 0


def test_scoring_reports_progress_only_for_systems_it_scores(demo_env, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_MAX_NEW_TOKENS", "4")
    get_settings.cache_clear()
    by_label = checkpoints_by_label()
    systems = [checkpoint_system(by_label[n]) for n in ("base", "expert-en-es")]
    sets = data_sets("dev", ["en-es"], 4)
    models = ModelCache()
    evaluate_systems(systems[:1], sets, models)
    reports = []
    evaluate_systems(systems, sets, models, progress=lambda done, total, message: reports.append((done, total)))
    assert reports == [(1, 2), (2, 2)]  # base was in memory: only the expert's scoring and the end
    reports.clear()
    evaluate_systems(systems, sets, models, progress=lambda done, total, message: reports.append((done, total)))
    assert reports == [(2, 2)]


def test_language_id_answers_among_the_data_languages_whatever_is_picked(demo_env, monkeypatch):
    """Picking a second direction neither re-translates the first (same cache entry) nor changes
    its off-target rate: language ID answers among every language of the data (en, es, pt here),
    not only the languages of the directions on screen."""
    evaluate_module = importlib.import_module(
        "engine.translate.evaluate"
    )  # the package exports a function of that name
    generate = importlib.import_module("engine.translate.generate")

    monkeypatch.setenv("MERGESCOPE_MAX_NEW_TOKENS", "4")
    get_settings.cache_clear()
    translated, asked = [], []
    real_generate, real_detect = generate.generate_translations, evaluate_module.detect
    monkeypatch.setattr(
        generate,
        "generate_translations",
        lambda model, tok, sources, src, tgt, *a, **k: (
            translated.append(f"{src}-{tgt}") or real_generate(model, tok, sources, src, tgt, *a, **k)
        ),
    )
    monkeypatch.setattr(
        evaluate_module,
        "detect",
        lambda texts, languages: asked.append(tuple(languages)) or real_detect(texts, languages),
    )
    base = checkpoint_system(checkpoints_by_label()["base"])
    models = ModelCache()

    one = evaluate_systems([base], data_sets("dev", ["en-es"], 4), models)
    two = evaluate_systems([base], data_sets("dev", ["en-es", "en-pt"], 4), models)
    assert translated == ["en-es", "en-pt"]
    assert set(asked) == {("en", "es", "pt")}
    assert two[0].directions[0] == one[0].directions[0]


def test_recipe_round_trip_through_the_view(demo_env):
    recipe = build_recipe(
        "base",
        ["expert-en-es", "expert-es-en"],
        "task_arithmetic",
        {"weight": 0.3, "normalize": True},
        {"density": [0.2, 0.9]},
    )
    view = recipe_view(parse_recipe(recipe_yaml(recipe)))
    assert (view.base, view.experts, view.method) == ("base", ["expert-en-es", "expert-es-en"], "task_arithmetic")
    assert view.params["weight"] == pytest.approx(0.3) and view.params["normalize"] is True
    assert view.schedules == {"density": [0.2, 0.9]}
    assert recipe_hash(parse_recipe(recipe_yaml(recipe))) == recipe_hash(recipe)
    with pytest.raises(RecipeError, match="no checkpoint called nowhere"):
        build_recipe("base", ["nowhere"], "ties", {"weight": 1.0})


def test_prefetch_fills_the_cache_so_the_foreground_loads_nothing(demo_env, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_MAX_NEW_TOKENS", "4")
    get_settings.cache_clear()
    by_label = checkpoints_by_label()
    systems = [checkpoint_system(by_label[n]) for n in ("base", "expert-en-es")]
    sets = data_sets("dev", ["en-es", "en-pt"], 4)
    prefetcher = Prefetcher()
    background = ModelCache()
    prefetch_checkpoints(prefetcher, systems, sets, background)
    prefetch_checkpoints(prefetcher, systems, sets, background)  # queued once only
    prefetcher._pool.shutdown(wait=True)
    assert background.builds == 2
    clear_memo()
    foreground = ModelCache()
    evaluate_systems(systems, sets, foreground)
    cka_pair(systems[0], systems[1], sets, "target", foreground)
    assert foreground.builds == 0


def test_torch_threads_limited_to_a_quarter_of_the_cores_unless_set(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert limit_torch_threads(cpus=2) == 1 == torch.get_num_threads()
        assert limit_torch_threads(cpus=16) == 4 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the operator's choice wins
        torch.set_num_threads(3)
        assert limit_torch_threads(cpus=16) == 3
    finally:
        torch.set_num_threads(before)


def test_sweep_curve_merges_a_model_once_when_the_weight_cancels(demo_env, monkeypatch):
    """TIES with normalize on: every weight gives the same model, so the curve is one merge."""
    from engine.pipeline.sweep_curves import sweep_curve

    clear_memo()
    models = ModelCache()
    built = []
    real_build = models._build
    monkeypatch.setattr(models, "_build", lambda s: built.append(s.name) or real_build(s))
    sets = data_sets("devtest", ["en-es"], 4)
    params = {"density": 0.5, "normalize": True, "weight": 1.0}
    rows = sweep_curve(
        "base", ["expert-en-es", "expert-en-pt"], "ties", params, "weight", [0.5, 1.0, 2.5], sets, models
    )
    assert built == ["ties weight=0.5"]
    avg = [r for r in rows if r["direction"] == "avg"]
    assert [r["value"] for r in avg] == [0.5, 1.0, 2.5] and len({r["chrf"] for r in avg}) == 1
    assert [r["system"] for r in avg] == ["ties weight=0.5", "ties weight=1", "ties weight=2.5"]
    # normalize off: the weight matters, and each value is merged.
    built.clear()
    sweep_curve(
        "base",
        ["expert-en-es", "expert-en-pt"],
        "ties",
        {**params, "normalize": False},
        "weight",
        [0.5, 1.0],
        sets,
        models,
    )
    assert built == ["ties weight=0.5", "ties weight=1"]
