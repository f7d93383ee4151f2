"""The Patch page under AppTest, on the tiny zoo of tests/browser_harness: its table and chart show
the engine's routed-patching values, the view lives in the URL, and the patched merges appear on
the other pages."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from engine.patch.experiment import run_patch_experiment
from engine.patch.layers import parse_layer_set
from engine.pipeline.catalog import checkpoints_by_label
from engine.pipeline.data import data_sets
from engine.pipeline.memo import clear_memo
from engine.pipeline.models import ModelCache
from engine.pipeline.systems import checkpoint_system
from tests.browser_harness import demo_env, tiny_zoo  # noqa: F401  (fixtures)
from tests.test_app import APP, TIMEOUT, app, array, charts, merge, pick, systems_of  # noqa: F401  (fixture and helpers)
from views import figures


def test_patch_page_shows_the_engines_routed_table_and_chart(app):
    merge(pick(app, experts=("expert-en-es", "expert-en-pt"), method="task_arithmetic"))
    app.switch_page("views/patch.py").run()
    assert "Choose the blocks" in app.info[-1].value
    app.slider(key="patch_k").set_value(1).run()
    app.number_input(key="patch_controls").set_value(2).run()
    app.button(key="patch_go").click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    assert app.query_params["patch_run"] == "last:1+norm"
    assert app.query_params["patch_controls"] == "2"

    # Expected values recomputed outside the page: a fresh model cache, memo cleared.
    systems = systems_of(app)
    clear_memo()
    by_label = checkpoints_by_label()
    experts = [checkpoint_system(by_label[n]) for n in ("expert-en-es", "expert-en-pt")]
    sets = data_sets(app.query_params.get("split", "devtest"), ["en-es", "en-pt"], 8)
    layers = parse_layer_set("last:1+norm", experts[0].checkpoint.summary.layers)
    expected = run_patch_experiment(
        systems[0], systems[-1], experts, sets, [layers], ModelCache(), controls=2, seed=0
    ).table()
    shown = app.table[0].value
    want = figures.patch_frame(expected, "chrf").set_index("direction")
    assert list(shown.index) == ["en-es", "en-pt", "avg"]
    for column in ("base", "merge", "patched (routed)", "random mean", "random sd", "expert"):
        assert list(shown[column]) == pytest.approx(list(want[column]), abs=0.006), column

    (bars,) = charts(app)
    by_name = {t["name"]: t for t in bars["data"]}
    assert list(array(by_name["patched (routed)"]["y"])) == pytest.approx(list(want["patched (routed)"]), abs=1e-9)
    assert list(array(by_name["random"]["error_y"]["array"])) == pytest.approx(list(want["random sd"]), abs=1e-9)

    # The k-curve: the same experiment for k = 0 … L, its average per k drawn against k.
    app.toggle(key="patch_curve").set_value(True).run()
    assert not app.exception and not app.error
    curve_sets = [parse_layer_set(f"last:{k}+norm", layers.blocks[-1] + 1) for k in range(layers.blocks[-1] + 2)]
    clear_memo()
    curve = run_patch_experiment(systems[0], systems[-1], experts, sets, curve_sets, ModelCache(), 2, 0).table()
    want_curve = [r["patched_chrf"] for r in curve if r["direction"] == "avg"]
    (_, k_curve) = charts(app)
    patched_line = next(t for t in k_curve["data"] if t["name"] == "patched (last k)")
    assert list(array(patched_line["x"])) == list(range(len(curve_sets)))
    assert list(array(patched_line["y"])) == pytest.approx(want_curve, abs=0.006)  # shown rounded to 0.01
    assert want_curve[0] == pytest.approx(want.loc["avg", "merge"], abs=0.006)  # k = 0 is the merge

    # A copied link opens the same view: the run's set, its controls, the table (from the cache).
    fresh = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    fresh.query_params.update(dict(app.query_params))
    fresh.run()
    fresh.switch_page("views/patch.py").run()
    assert not fresh.exception and not fresh.error
    assert fresh.table[0].value.equals(shown)

    # The patched merges (one per direction) are systems on the other pages.
    app.switch_page("views/layers.py").run()
    options = app.selectbox(key="b_row").options
    assert {"merge · expert-en-es last:1+norm", "merge · expert-en-pt last:1+norm"} <= set(options)
    app.selectbox(key="b_row").set_value("merge · expert-en-es last:1+norm").run()
    assert not app.exception and not app.error


def test_patch_page_says_what_is_missing(app):
    app.switch_page("views/patch.py").run()
    assert not app.exception
    assert any("Models & merge" in i.value for i in app.info)
    app.switch_page("views/models.py").run()
    pick(app, experts=("expert-en-es", "expert-en-pt"), method="task_arithmetic")
    app.switch_page("views/patch.py").run()
    assert any("No merge yet" in i.value for i in app.info)
