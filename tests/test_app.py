"""The dashboard under streamlit.testing.v1.AppTest: widgets drive the engine, figures carry its data.

Runs on the tiny zoo of tests/browser_harness (random tiny Qwen2 models, so translations are
noise; what is tested is that the page shows exactly what the engine computed).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from engine.neurons import PRESETS
from engine.pipeline.analyses import cka_pair, neuron_report, nua_groups, span_overlap, subspace_geometry
from engine.pipeline.catalog import checkpoints_by_label
from engine.pipeline.data import data_sets
from engine.pipeline.memo import clear_memo
from engine.pipeline.models import ModelCache
from engine.pipeline.recipes import build_recipe, method_specs
from engine.pipeline.scores import evaluate_systems
from engine.pipeline.sweep_curves import sweep_curve, sweep_values
from engine.pipeline.systems import MERGE, System, checkpoint_system, merge_system
from engine.settings import REPO_ROOT, get_settings
from tests.browser_harness import demo_env, tiny_zoo  # noqa: F401  (fixtures)
from views import common, figures

TIMEOUT = 240
INTERFERENCE_TITLES = ("Interference per layer", "Task-vector cosine", "CKA and interference")
APP = REPO_ROOT / "app.py"


@pytest.fixture
def app(demo_env, monkeypatch):
    # Random tiny models never emit end-of-turn; a small cap keeps generation short.
    monkeypatch.setenv("MERGESCOPE_MAX_NEW_TOKENS", "6")
    get_settings.cache_clear()
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def pick(at: AppTest, experts=("expert-en-es", "expert-en-pt"), method="ties") -> AppTest:
    at.multiselect(key="experts").set_value(list(experts)).run()
    at.selectbox(key="method").set_value(method).run()
    return at


def merge(at: AppTest) -> AppTest:
    at.button(key="merge").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def array(value) -> np.ndarray:
    """A figure array as Plotly serialises it: a plain list, or a typed array (dtype, base64 bdata, shape)."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = [int(n) for n in str(value.get("shape", len(flat))).split(",")]
        return flat.reshape(shape).astype(float)
    return np.array(value, dtype=float)


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def without_interference(figs: list[dict]) -> list[dict]:
    """The charts other than the interference panels (tests/test_app_interference.py checks those)."""
    return [f for f in figs if not f["layout"].get("title", {}).get("text", "").startswith(INTERFERENCE_TITLES)]


def systems_of(at: AppTest) -> list[System]:
    """The systems the view describes, rebuilt outside Streamlit from the URL's parameters.
    Forgets in-memory results first, so expected values are recomputed, not the page's own objects."""
    clear_memo()
    params = at.query_params
    by_label = checkpoints_by_label()
    names = [params["base"], *params["experts"].split(",")]
    extras = params["extra_systems"].split(",") if "extra_systems" in params else []
    out = [checkpoint_system(by_label[n]) for n in names + extras]
    if "merged" in params:
        method = params["method"]
        spec = method_specs()[method]
        values = {}
        for p in spec.params:
            key = f"p_{method}__{p.name}"
            if key in params:
                text = params[key]
                values[p.name] = text == "true" if p.kind is bool else p.kind(float(text))
        recipe = build_recipe(names[0], names[1:], method, values)
        out.append(merge_system(recipe))
    return out


def test_models_page_lists_checkpoints_and_refusals(app):
    table = app.dataframe[0].value
    assert set(table["name"]) == {"base", "expert-en-es", "expert-en-pt", "expert-es-en", "joint", "wide-other"}
    assert table.set_index("name").loc["expert-en-es", "direction"] == "en-es"
    refused = [m.value for m in app.markdown if "pickle-only" in m.value]
    assert refused and "safetensors only" in refused[0]
    assert app.info[0].value.startswith("Pick one or more experts")
    assert app.multiselect(key="extra_systems").value == ["joint"]  # the paper's table has the joint model
    assert app.button(key="merge").disabled


def test_the_chart_library_loads_once_on_the_first_pick(app):
    """The session's second run of Models & merge draws one hidden chart of the trace kinds the
    pages use (it has the browser load plotly.js early); its first run and later runs draw none."""
    assert not charts(app)
    app.multiselect(key="experts").set_value(["expert-en-es"]).run()
    (preload,) = without_interference(charts(app))
    assert {t["type"] for t in preload["data"]} == {"heatmap", "scatter", "bar"}
    assert any("display: none" in h.proto.body for h in app.get("html"))
    app.multiselect(key="experts").set_value(["expert-en-es", "expert-en-pt"]).run()
    assert not without_interference(charts(app))
    app.switch_page("views/scores.py").run()
    assert len(charts(app)) == 1 and charts(app)[0]["data"][0]["type"] == "bar"  # the page's own bars only


def test_engine_messages_reach_the_server_log(app, monkeypatch):
    """What the server computes (merges, translations with their time) is logged at Streamlit's
    logger.level with the thread that ran it, so a slow page can be traced in the server's log."""
    (handler,) = [h for h in logging.getLogger("engine").handlers if h.get_name() == common.ENGINE_LOG_HANDLER]
    stream = io.StringIO()
    monkeypatch.setattr(handler, "stream", stream)
    merge(pick(app))
    app.switch_page("views/scores.py").run()
    text = stream.getvalue()
    assert re.search(
        r"INFO \[ScriptRunner\.scriptThread\] engine\.pipeline\.models: merging [0-9a-f]{12} in memory", text
    ), text
    assert re.search(
        r"\] engine\.translate\.evaluate: translated en-es \(8 sentences\) with \S+ in \d+\.\d\d s", text
    ), text


def test_the_server_reads_the_language_id_model_before_the_first_scores(demo_env):
    """The warm-up thread, started by the app's first run, reads py3langid's model (~0.8 CPU-s)."""
    from engine.translate import langid

    langid._read_identifier.cache_clear()
    common.warm_up.clear()
    AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    common.warm_up().join()  # the thread the run started (a cached resource)
    assert langid._read_identifier.cache_info().currsize == 1


def test_sliders_come_from_the_registry_and_drive_the_recipe(app):
    pick(app, method="ties")
    labels = {s.label for s in app.slider}
    assert {p.name for p in method_specs()["ties"].params if p.kind is float} <= labels
    app.slider(key="p_ties__density").set_value(0.3).run()
    recipe = yaml.safe_load(app.code[0].value)
    assert recipe["merge_method"] == "ties"
    assert recipe["base_model"].endswith("/base")
    assert [m["model"].rsplit("/", 1)[-1] for m in recipe["models"]] == ["expert-en-es", "expert-en-pt"]
    assert all(m["parameters"]["density"] == pytest.approx(0.3) for m in recipe["models"])
    assert recipe["parameters"]["normalize"] is True
    assert app.query_params["p_ties__density"] == "0.3"


@pytest.mark.parametrize(
    "method,experts",
    [
        ("multislerp", ("expert-en-es", "expert-en-pt")),
        ("karcher", ("expert-en-es", "expert-en-pt")),
        ("nearswap", ("expert-en-es",)),
        ("arcee_fusion", ("expert-en-es",)),
        ("passthrough", ("expert-en-es",)),
        ("ram", ("expert-en-es", "expert-en-pt")),
        ("ramplus_tl", ("expert-en-es", "expert-en-pt")),
    ],
)
def test_mergekits_remaining_methods_get_their_sliders_and_recipe(app, method, experts):
    pick(app, experts=experts, method=method)
    assert not app.error, [e.value for e in app.error]
    spec = method_specs()[method]
    assert {s.label for s in app.slider} >= {p.name for p in spec.params if p.kind is not bool}
    assert {t.label for t in app.toggle} >= {p.name for p in spec.params if p.kind is bool}
    values = {p.name: app.slider(key=f"p_{method}__{p.name}").value for p in spec.params if p.kind is not bool}
    values |= {p.name: app.toggle(key=f"p_{method}__{p.name}").value for p in spec.params if p.kind is bool}
    shown = yaml.safe_load(app.code[0].value)
    assert shown == build_recipe("base", list(experts), method, values).to_dict()
    # passthrough copies its one input, so the recipe names no base (mergekit would add it as a second input).
    assert ("base_model" in shown) == (method != "passthrough")
    if method == "karcher":  # the base is one of the averaged inputs, as in mergekit
        assert [m["model"].rsplit("/", 1)[-1] for m in shown["models"]] == [*experts, "base"]
    if method == "nearswap":  # t is a distance between weights here, not slerp's 0..1 position
        assert shown["parameters"]["t"] == pytest.approx(0.001)
        app.slider(key="p_nearswap__t").set_value(0.002).run()
        assert yaml.safe_load(app.code[0].value)["parameters"]["t"] == pytest.approx(0.002)
        assert app.query_params["p_nearswap__t"] == "0.002"
    if method == "ram":
        assert shown["parameters"]["epsilon"] == pytest.approx(1e-5)
    if method in ("ram", "passthrough"):
        merge(app)
        assert app.query_params["merged"]


@pytest.mark.parametrize("method", ["tsv_merge", "iso_c", "iso_cts", "pcb_merge"])
def test_our_own_methods_have_sliders_and_say_mergekit_refuses_their_yaml(app, method):
    pick(app, method=method)
    spec = method_specs()[method]
    assert {p.name for p in spec.params} <= {s.label for s in app.slider}
    app.slider(key=f"p_{method}__lambda").set_value(0.4).run()
    text = app.code[0].value
    recipe = yaml.safe_load(text)
    assert recipe["merge_method"] == method and recipe["parameters"]["lambda"] == pytest.approx(0.4)
    assert text.startswith("# ")  # the note travels with the downloaded file
    (note,) = [i.value for i in app.info if "mergekit" in i.value]
    assert f"Unimplemented merge method {method}" in note and "MergeScope's own" in note
    merge(app)
    assert app.success and "Merge ready" in app.success[0].value


def test_lines_gets_its_depth_sliders_and_merges(app):
    pick(app, method="lines")
    app.slider(key="p_lines__alpha").set_value(0.2).run()
    app.slider(key="p_lines__beta").set_value(0.6).run()
    recipe = yaml.safe_load(app.code[0].value)
    assert recipe["merge_method"] == "lines"
    assert recipe["parameters"] == pytest.approx({"alpha": 0.2, "beta": 0.6})
    assert [i.value for i in app.info if "Unimplemented merge method lines" in i.value]
    merge(app)
    assert app.success and "Merge ready" in app.success[0].value


def test_mergekit_methods_get_no_refusal_note(app):
    pick(app, method="ties")
    assert not [i.value for i in app.info if "mergekit" in i.value]


def test_per_layer_schedule_goes_into_the_yaml(app):
    pick(app, method="task_arithmetic")
    app.toggle(key="schedule_on").set_value(True).run()
    app.text_input(key="s_task_arithmetic__weight").input("0.2, 0.8").run()
    recipe = yaml.safe_load(app.code[0].value)
    assert all(m["parameters"]["weight"] == [0.2, 0.8] for m in recipe["models"])
    app.text_input(key="s_task_arithmetic__weight").input("0.2, lots").run()
    assert any("schedule for weight" in e.value for e in app.error)
    assert not app.exception


def test_incompatible_pick_is_explained_before_anything_runs(app):
    pick(app, experts=("expert-en-es", "wide-other"))
    message = app.error[0].value
    assert "cannot be merged" in message and "wide-other" in message and "shape" in message
    assert app.button(key="merge").disabled
    assert not app.code  # no recipe shown for an impossible merge


def test_bad_recipe_shows_a_readable_error(app):
    app.text_area(key="recipe_text").input("merge_method: frobnicate\nmodels:\n  - model: x\n").run()
    app.button(key="recipe_load").click().run()
    assert not app.exception
    assert "unknown merge_method 'frobnicate'" in app.error[0].value
    app.text_area(key="recipe_text").input("merge_method: [unclosed").run()
    app.button(key="recipe_load").click().run()
    assert "not valid YAML" in app.error[0].value


def test_pasted_recipe_sets_the_pickers(app, demo_env):
    models = demo_env.models
    text = (
        f"merge_method: dare_linear\nbase_model: {models / 'base'}\nmodels:\n"
        f"  - model: {models / 'expert-en-pt'}\n    parameters: {{weight: 0.7, density: 0.4}}\n"
        f"  - model: {models / 'expert-es-en'}\n    parameters: {{weight: 0.7, density: 0.4}}\n"
    )
    app.text_area(key="recipe_text").input(text).run()
    app.button(key="recipe_load").click().run()
    assert app.selectbox(key="method").value == "dare_linear"
    assert app.multiselect(key="experts").value == ["expert-en-pt", "expert-es-en"]
    assert app.slider(key="p_dare_linear__density").value == pytest.approx(0.4)
    assert app.slider(key="p_dare_linear__weight").value == pytest.approx(0.7)
    first = yaml.safe_load(app.code[0].value)["models"][0]["parameters"]
    assert (first["weight"], first["density"]) == (pytest.approx(0.7), pytest.approx(0.4))


def test_pasted_passthrough_keeps_the_base_and_slices_are_sent_to_the_cli(app, demo_env):
    models = demo_env.models
    text = f"merge_method: passthrough\nmodels:\n  - model: {models / 'expert-en-pt'}\n    parameters: {{scale: 0.5}}\n"
    app.text_area(key="recipe_text").input(text).run()
    app.button(key="recipe_load").click().run()
    assert not app.error, [e.value for e in app.error]
    assert app.selectbox(key="method").value == "passthrough"
    assert app.selectbox(key="base").value == "base"  # the recipe names none: the picked base stays
    assert app.multiselect(key="experts").value == ["expert-en-pt"]
    assert app.slider(key="p_passthrough__scale").value == pytest.approx(0.5)
    stacked = (
        f"merge_method: passthrough\nslices:\n  - sources:\n      - model: {models / 'expert-en-pt'}\n"
        "        layer_range: [0, 2]\n"
    )
    app.text_area(key="recipe_text").input(stacked).run()
    app.button(key="recipe_load").click().run()
    assert "merge a slices: recipe with python -m engine merge" in app.error[0].value


def test_a_copied_link_reproduces_the_view(app, demo_env, monkeypatch):
    pick(app, method="ties")
    app.slider(key="p_ties__density").set_value(0.5).run()
    merge(app)
    link = dict(app.query_params)
    fresh = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    fresh.query_params.update(link)
    fresh.run()
    assert not fresh.exception
    assert fresh.multiselect(key="experts").value == ["expert-en-es", "expert-en-pt"]
    assert fresh.selectbox(key="method").value == "ties"
    assert fresh.slider(key="p_ties__density").value == pytest.approx(0.5)
    assert fresh.code[0].value == app.code[0].value
    assert any("Merge ready" in s.value for s in fresh.success)


def test_scores_page_shows_the_engines_scores(app):
    merge(pick(app))
    app.switch_page("views/scores.py").run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    wide = app.table[0].value  # systems × directions, chrF
    systems = systems_of(app)
    assert list(wide.index) == [s.name for s in systems]
    assert MERGE in wide.index
    sets = data_sets("devtest", ["en-es", "en-pt"], 32)
    results = evaluate_systems(systems, sets, ModelCache())
    for r in results:
        for d in r.directions:
            assert wide.loc[r.system, d.direction] == pytest.approx(round(d.scores.chrf, 2))
    bars = charts(app)[0]
    assert {t["name"] for t in bars["data"]} == set(wide.index)
    [signatures] = [d.value for d in app.dataframe if "decoding_signature" in d.value.columns]
    assert set(signatures["decoding_signature"]) == {"decoding:greedy|max_new_tokens:6|postprocess:paper"}
    # Each expert on every chosen direction by default, as the paper's table; its own direction as the option.
    experts = {r.system: r for r in results if r.system.startswith("expert-")}
    assert {tuple(d.direction for d in r.directions) for r in experts.values()} == {("en-es", "en-pt")}
    assert "expert_directions" not in app.query_params
    app.segmented_control(key="expert_directions").set_value("own").run()
    own = app.table[0].value
    assert app.query_params["expert_directions"] == "own"
    assert pd.isna(own.loc["expert-en-es", "en-pt"]) and pd.isna(own.loc["expert-en-pt", "en-es"])
    for name, direction in (("expert-en-es", "en-es"), ("expert-en-pt", "en-pt")):
        [d] = [d for d in experts[name].directions if d.direction == direction]
        assert own.loc[name, direction] == pytest.approx(round(d.scores.chrf, 2))


def test_progress_only_while_work_runs(app):
    """A page that computes shows its progress, then what it did; the same page again, its results
    in memory, shows neither (an element less for the browser on every warm page switch)."""

    def reports():
        return [c.value for c in app.caption if c.value.startswith("✓ ")]

    common.model_cache.clear()  # the server-wide model cache may hold this merge from another test
    merge(pick(app))
    assert len(reports()) == 1 and reports()[0].startswith("✓ Merged in memory")
    app.switch_page("views/scores.py").run()
    assert len(reports()) == 1 and reports()[0].startswith("✓ Scored")
    app.switch_page("views/models.py").run()
    assert reports() == [] and "Merge ready" in app.success[0].value
    app.switch_page("views/scores.py").run()
    assert not app.error and len(app.table) == 1
    assert reports() == [] and len(app.status) == 0


def test_layers_heatmaps_carry_the_engines_cka(app, monkeypatch):
    merge(pick(app))
    app.switch_page("views/layers.py").run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    (fig,) = without_interference(charts(app))  # one figure: both maps, their difference, the per-layer curves
    heatmaps = [t for t in fig["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 3  # left, right, difference
    systems = {s.name: s for s in systems_of(app)}
    sets = data_sets("devtest", ["en-es", "en-pt"], 32)
    cache = ModelCache()
    left = cka_pair(systems["expert-en-es"], systems["expert-en-pt"], sets, "source", cache)
    right = cka_pair(systems[MERGE], systems["expert-en-es"], sets, "source", cache)
    np.testing.assert_allclose(array(heatmaps[0]["z"]), left.values, rtol=1e-9)
    np.testing.assert_allclose(array(heatmaps[1]["z"]), right.values, rtol=1e-9)
    np.testing.assert_allclose(array(heatmaps[2]["z"]), left.values - right.values, rtol=1e-9, atol=1e-12)
    curves = [t for t in fig["data"] if t["type"] == "scatter"]
    np.testing.assert_allclose(array(curves[0]["y"]), np.diag(left.values), rtol=1e-9)
    np.testing.assert_allclose(array(curves[1]["y"]), np.diag(right.values), rtol=1e-9)
    # one colour scale for the two maps, symmetric around 0 for the difference
    assert heatmaps[0]["coloraxis"] == heatmaps[1]["coloraxis"] != heatmaps[2]["coloraxis"]
    scale, diff_scale = fig["layout"]["coloraxis"], fig["layout"]["coloraxis2"]
    assert scale["cmax"] == 1.0 and scale["cmin"] <= min(left.values.min(), right.values.min())
    assert diff_scale["cmin"] == -diff_scale["cmax"] == pytest.approx(-np.abs(left.values - right.values).max())
    assert "layer %{y}" in heatmaps[0]["hovertemplate"]

    app.segmented_control(key="span").set_value("target").run()
    target = cka_pair(systems["expert-en-es"], systems["expert-en-pt"], sets, "target", cache)
    z = array(charts(app)[0]["data"][0]["z"])
    np.testing.assert_allclose(z, target.values, rtol=1e-9)
    assert app.query_params["span"] == "target"

    # Coming back to the page draws the same figures without building them again.
    built = []
    build = figures.cka_comparison
    monkeypatch.setattr(figures, "cka_comparison", lambda a, b: built.append((a, b)) or build(a, b))
    app.switch_page("views/scores.py").run()
    app.switch_page("views/layers.py").run()
    assert not built
    np.testing.assert_allclose(array(charts(app)[0]["data"][0]["z"]), target.values, rtol=1e-9)
    assert "last:block-output" in target.signature and "raw output" in app.caption[-1].value

    # The last layer after the final norm, the labelled option: only row and column L change.
    app.segmented_control(key="cka_last").set_value("final-norm").run()
    normed = cka_pair(systems["expert-en-es"], systems["expert-en-pt"], sets, "target", cache, final_norm=True)
    np.testing.assert_allclose(array(charts(app)[0]["data"][0]["z"]), normed.values, rtol=1e-9)
    np.testing.assert_allclose(normed.values[:-1, :-1], target.values[:-1, :-1], rtol=1e-9)
    assert not np.allclose(normed.values[-1], target.values[-1])
    assert app.query_params["cka_last"] == "final-norm" and "after the final norm" in app.caption[-1].value


def test_neurons_page_counts_equal_the_engines(app):
    merge(pick(app))
    app.switch_page("views/neurons.py").run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    systems = {s.name: s for s in systems_of(app)}
    sets = data_sets("devtest", ["en-es", "en-pt"], 32)
    report = neuron_report(systems["base"], systems[MERGE], sets, "target", PRESETS["paper"], ModelCache())
    figs = charts(app)
    counts = [f for f in figs if f["data"][0]["type"] == "heatmap"]
    np.testing.assert_array_equal(array(counts[0]["data"][0]["z"]), report.base.counts)
    np.testing.assert_array_equal(array(counts[1]["data"][0]["z"]), report.finetune.counts)
    assert counts[0]["data"][0]["x"] == ["es", "pt"]
    nua = [f for f in figs if "Neuron usage alignment" in f["layout"]["title"]["text"]][0]
    np.testing.assert_allclose(array(nua["data"][0]["y"]), report.nua.per_layer, rtol=1e-9)

    app.selectbox(key="preset").set_value("lape").run()
    assert app.slider(key="top_rate").value == pytest.approx(0.05)
    assert app.toggle(key="filter_on").value is True
    lape = neuron_report(systems["base"], systems[MERGE], sets, "target", PRESETS["lape"], ModelCache())
    z = array([f for f in charts(app) if f["data"][0]["type"] == "heatmap"][1]["data"][0]["z"])
    np.testing.assert_array_equal(z, lape.finetune.counts)


def test_neurons_page_source_span_on_en_x_shows_the_papers_analyses(app):
    merge(pick(app))
    app.switch_page("views/neurons.py").run()
    app.segmented_control(key="neuron_span").set_value("source").run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    systems = {s.name: s for s in systems_of(app)}
    base, merged = systems["base"], systems[MERGE]
    unmerged = [s for s in systems.values() if s.name != MERGE]
    sets = data_sets("devtest", ["en-es", "en-pt"], 32)
    models = ModelCache()

    def figure(title: str) -> dict:
        return next(f for f in charts(app) if f["layout"]["title"]["text"].startswith(title))

    # English sources of En→es and En→pt: the conditions are the data sets' languages.
    report = neuron_report(base, merged, sets, "source", PRESETS["paper"], models)
    counts = figure("merge: neurons per block")
    assert counts["data"][0]["x"] == ["es", "pt"] and "conditions by data set" in counts["layout"]["title"]["text"]
    np.testing.assert_array_equal(array(counts["data"][0]["z"]), report.finetune.counts)
    np.testing.assert_allclose(array(figure("Neuron usage alignment")["data"][0]["y"]), report.nua.per_layer, rtol=1e-9)

    groups = nua_groups(unmerged, base, sets, "source", models)
    traces = {t["name"]: t for t in figure("Mean NUA")["data"]}
    np.testing.assert_allclose(array(traces["base–fine-tune"]["y"]), groups.base_finetune, rtol=1e-9)
    np.testing.assert_allclose(array(traces["fine-tune–fine-tune"]["y"]), groups.finetune_finetune, rtol=1e-9)

    overlap = span_overlap(merged, sets, PRESETS["paper"], models)
    np.testing.assert_allclose(array(figure("Jaccard of source- and target-span")["data"][0]["z"]), overlap.jaccard)

    geometry = subspace_geometry(list(systems.values()), sets, "source", models)
    angles = figure("Median principal angle")["data"]
    assert [t["name"] for t in angles] == [f"{a} vs {b}" for a, b in geometry.pairs]
    for p, trace in enumerate(angles):
        np.testing.assert_allclose(array(trace["y"]), geometry.median_angle[:, p], rtol=1e-9)
    layer = app.slider(key="geometry_layer").value
    points = figure("Subspace map")["data"][0]
    assert points["text"] == list(geometry.names)
    xy = geometry.mds_coordinates(layer)
    np.testing.assert_allclose(array(points["x"]), xy[:, 0], atol=1e-12)
    np.testing.assert_allclose(array(points["y"]), xy[:, 1], atol=1e-12)

    # The concatenated NUA option, and span-language conditions (the option), which on English sources
    # leave one condition: the page says so.
    app.selectbox(key="nua_mode").set_value("concat").run()
    concat = neuron_report(base, merged, sets, "source", PRESETS["paper"], models, nua_mode="concat")
    np.testing.assert_allclose(array(figure("Neuron usage alignment")["data"][0]["y"]), concat.nua.per_layer, rtol=1e-9)
    app.segmented_control(key="neuron_conditions").set_value("span").run()
    assert any("give only en" in e.value for e in app.error)
    app.segmented_control(key="neuron_span").set_value("target").run()
    assert not app.error
    assert app.query_params["neuron_conditions"] == "span" and app.query_params["nua_mode"] == "concat"
    assert "conditions by span language" in figure("merge: neurons per block")["layout"]["title"]["text"]


class _TableReader(HTMLParser):
    """The header, cell texts and cell classes of the first HTML table (stdlib parser only)."""

    def __init__(self):
        super().__init__()
        self.header, self.rows, self.classes = [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
            self.classes.append([])
        elif tag in ("td", "th"):
            self._cell = [tag, dict(attrs).get("class", ""), ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            kind, classes, text = self._cell
            (self.header if kind == "th" else self.rows[-1]).append(text)
            if kind == "td":
                self.classes[-1].append(classes.split())
            self._cell = None


def samples_html(at: AppTest) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The Samples page's table as shown (texts) and the CSS classes of each cell."""
    reader = _TableReader()
    reader.feed(at.html[0].value)
    rows = [r for r in reader.rows if r]
    classes = [c for c in reader.classes if c]
    return pd.DataFrame(rows, columns=reader.header), pd.DataFrame(classes, columns=reader.header)


def test_samples_page_shows_outputs_and_off_target_flags(app):
    merge(pick(app))
    app.switch_page("views/samples.py").run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    table, classes = samples_html(app)
    systems = systems_of(app)
    # the languages in play (what language ID chooses among) are those of every chosen direction
    sets = data_sets("devtest", ["en-es", "en-pt"], 32)
    results = {r.system: r for r in evaluate_systems(systems, sets, ModelCache())}
    merged = results[MERGE].directions[0]
    assert merged.direction == "en-es"
    assert list(table["source"]) == list(sets[0].sources)
    assert list(table[f"{MERGE} · output"]) == [s.output for s in merged.samples]
    assert list(table[f"{MERGE} · detected"]) == [s.detected for s in merged.samples]
    assert [float(c) for c in table[f"{MERGE} · chrF"]] == [round(s.chrf, 1) for s in merged.samples]
    for system, result in results.items():  # exactly the off-target outputs are highlighted
        shown_here = [d for d in result.directions if d.direction == "en-es"]
        if not shown_here:
            continue
        samples = shown_here[0].samples
        for field in ("output", "detected"):
            shown = ["off-target" in c for c in classes[f"{system} · {field}"]]
            assert shown == [s.detected != "es" for s in samples], (system, field)
    assert not any("off-target" in c for c in classes["source"])

    app.toggle(key="off_target_only").set_value(True).run()
    filtered, _ = samples_html(app)
    off = {
        i
        for s in results.values()
        for d in s.directions
        if d.direction == "en-es"
        for i, x in enumerate(d.samples)
        if x.detected != "es"
    }
    assert {int(i) for i in filtered["item"]} == off


def test_pages_without_input_say_what_is_missing(app):
    for page in ("views/scores.py", "views/layers.py", "views/neurons.py", "views/samples.py"):
        app.switch_page(page).run()
        assert not app.exception
        assert any("Models & merge" in i.value for i in app.info), page


def test_engine_errors_are_messages_not_tracebacks(app, monkeypatch):
    merge(pick(app))
    monkeypatch.setenv("MERGESCOPE_MAX_NEW_TOKENS", "many")
    get_settings.cache_clear()
    app.switch_page("views/scores.py").run()
    assert not app.exception
    assert "MERGESCOPE_MAX_NEW_TOKENS" in app.error[0].value


def test_sweep_curve_plots_the_engines_scores(app):
    pick(app, method="task_arithmetic")
    app.switch_page("views/scores.py").run()
    app.selectbox(key="sweep_choice").set_value("weight").run()
    app.button(key="sweep_run").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert app.query_params["sweep_param"] == "weight"
    sweep = [f for f in charts(app) if "against weight" in f["layout"]["title"]["text"]][0]
    avg = [t for t in sweep["data"] if t["name"] == "avg"][0]
    values = sweep_values("task_arithmetic", "weight")
    np.testing.assert_allclose(array(avg["x"]), values)
    params = {"weight": 0.5, "density": 1.0, "normalize": False, "rescale": False, "int8_mask": False, "lambda": 1.0}
    rows = sweep_curve(
        "base",
        ["expert-en-es", "expert-en-pt"],
        "task_arithmetic",
        params,
        "weight",
        values,
        data_sets("devtest", ["en-es", "en-pt"], 32),
        ModelCache(),
    )
    expected = [r["chrf"] for r in rows if r["direction"] == "avg"]
    np.testing.assert_allclose(array(avg["y"]), expected, rtol=1e-9)


def test_missing_model_roots_is_a_message(demo_env, monkeypatch, tmp_path):
    monkeypatch.setenv("MERGESCOPE_MODEL_ROOTS", str(tmp_path / "nowhere"))
    get_settings.cache_clear()
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    assert any("MERGESCOPE_MODEL_ROOTS: not a folder" in e.value for e in at.error)
