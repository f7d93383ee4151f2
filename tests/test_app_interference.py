"""The interference panels under AppTest: the Models page's heatmap and cosine matrix, and the Layers
page's profile, carry the engine's values (recomputed here outside Streamlit)."""

from __future__ import annotations

import numpy as np

from engine.interference import MEASURES
from engine.neurons import PRESETS
from engine.pipeline.analyses import cka_pair
from engine.pipeline.data import data_sets
from engine.pipeline.interference import interference_with_neurons, weight_interference
from engine.pipeline.models import ModelCache
from tests.browser_harness import demo_env, tiny_zoo  # noqa: F401  (fixtures)
from tests.test_app import app, array, charts, merge, pick, systems_of  # noqa: F401  (app is a fixture)


def titled(at, prefix: str) -> dict:
    (fig,) = [f for f in charts(at) if f["layout"].get("title", {}).get("text", "").startswith(prefix)]
    return fig


def test_models_page_heatmap_and_cosine_matrix_equal_the_engines(app):
    pick(app)  # two experts; nothing merged
    assert not app.exception and not app.error, [e.value for e in app.error]
    systems = {s.name: s for s in systems_of(app)}
    profile = weight_interference(systems["base"], [systems["expert-en-es"], systems["expert-en-pt"]])
    heatmap = titled(app, "Interference per layer")["data"][0]
    measures = profile.measures()
    assert heatmap["x"] == [MEASURES[k] for k in measures]
    assert heatmap["y"] == ["embed", *[f"block {g}" for g in profile.groups[1:-1]], "head"]
    np.testing.assert_allclose(array(heatmap["customdata"]), np.column_stack(list(measures.values())), rtol=1e-12)

    layer = app.select_slider(key="interference_layer")
    row = len(profile.groups) // 2  # the middle layer to start with
    assert layer.value == f"block {profile.groups[row]}"
    cosine = titled(app, "Task-vector cosine")["data"][0]
    np.testing.assert_allclose(array(cosine["z"]), profile.cosine[row], rtol=1e-12)
    np.testing.assert_allclose(array(cosine["customdata"]), profile.subspace_overlap[row], rtol=1e-12)

    layer.set_value("embed").run()
    np.testing.assert_allclose(array(titled(app, "Task-vector cosine")["data"][0]["z"]), profile.cosine[0], rtol=1e-12)
    assert app.query_params["interference_layer"] == "embed"
    assert {b.proto.label for b in app.get("download_button")} >= {"CSV", "HTML"}


def test_layers_page_draws_the_profile_on_the_cka_layer_axis(app):
    # task arithmetic: a merge no test_app test makes, so none finds it already in the shared model cache
    merge(pick(app, method="task_arithmetic"))
    app.switch_page("views/layers.py").run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    systems = {s.name: s for s in systems_of(app)}
    sets = data_sets("devtest", ["en-es", "en-pt"], 32)
    models = ModelCache()
    experts = [systems["expert-en-es"], systems["expert-en-pt"]]
    profile = interference_with_neurons(systems["base"], experts, sets, PRESETS["paper"], models)
    cka = cka_pair(systems["expert-en-es"], systems["expert-en-pt"], sets, "source", models)
    fig = titled(app, "CKA and interference")
    lines = {t["name"]: t for t in fig["data"]}
    np.testing.assert_allclose(array(lines["expert-en-es vs expert-en-pt"]["y"]), np.diag(cka.values), rtol=1e-9)
    score = lines[MEASURES["score"]]
    np.testing.assert_array_equal(array(score["x"]), profile.positions)
    np.testing.assert_allclose(array(score["y"]), profile.score, rtol=1e-12)
    neurons = array(lines[MEASURES["neuron_overlap"]]["y"])
    np.testing.assert_allclose(neurons, profile.measures()["neuron_overlap"], rtol=1e-12)
    assert np.isnan(neurons[0]) and np.isnan(neurons[-1])  # embedding and head have no gate neurons
    assert profile.positions.tolist() == list(range(len(np.diag(cka.values)) + 1))  # blocks line up with CKA's
