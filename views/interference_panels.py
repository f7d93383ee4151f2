"""Interference panels: the picked experts' weight-space profile on Models & merge (before Merge),
and the profile under the CKA curves on Layers."""

import streamlit as st

from engine.errors import DataError
from engine.neurons import PRESETS
from engine.pipeline.interference import interference_with_neurons, weight_interference
from views import common, figures, state

LAPE_SETTINGS = PRESETS["paper"]


def _picked():
    """(base system, expert systems) of the Models & merge pickers."""
    by_name = {s.name: s for s in common.systems(include_merge=False)}
    experts = [by_name[e] for e in st.session_state.get("experts", []) if e in by_name]
    return by_name[st.session_state["base"]], experts


def _content_key(profile) -> tuple:
    return (profile.experts, profile.signature, profile.score.tobytes(), profile.cosine.tobytes())


def draw_weight_interference() -> None:
    """Per-layer heatmap (layers × measures) and the pairwise cosine matrix of one layer."""
    base, experts = _picked()
    st.subheader("Interference before merging")
    st.caption(
        "Task vectors τ = expert − base, read from the checkpoints (no data, no generation) and cached by "
        "their fingerprints. README, *How the analyses are defined*, says what each measure is."
    )
    reporter = common.ProgressReporter("Reading task vectors")
    profile = weight_interference(base, experts, progress=reporter)
    reporter.finish(f"Task vectors of {len(experts)} expert(s) against {base.name}")
    key = _content_key(profile)
    heatmap = common.cached_figures(("interference_heatmap", key), lambda: figures.interference_heatmap(profile))
    common.show_figure(heatmap, f"interference_{base.name}", key="interference_heatmap")
    common.download_csv(figures.interference_table(profile), f"interference_{base.name}", key="interference_csv")

    labels = [figures.layer_label(g) for g in profile.groups]
    state.default("interference_layer", labels[len(labels) // 2])
    if st.session_state["interference_layer"] not in labels:
        st.session_state["interference_layer"] = labels[len(labels) // 2]
    st.select_slider("Layer", labels, key="interference_layer")
    row = labels.index(st.session_state["interference_layer"])
    cosine = common.cached_figures(("interference_cosine", key, row), lambda: figures.interference_cosine(profile, row))
    common.show_figure(cosine, f"task_vector_cosine_{labels[row]}", key="interference_cosine")
    common.download_csv(
        figures.interference_pairs_table(profile), f"interference_pairs_{base.name}", key="interference_pairs_csv"
    )
    if len(experts) < 2:
        st.info("Pick two or more experts for the pairwise measures (cosine, subspace overlap, sign conflict).")


def draw_layer_profile(cka_pairs, sets, models) -> None:
    """The interference profile on the CKA curves' layer axis, with the experts' LAPE neuron overlap
    when the chosen directions hold each expert's language."""
    base, experts = _picked()
    reporter = common.ProgressReporter("Interference of the experts' task vectors")
    try:
        profile = interference_with_neurons(base, experts, sets, LAPE_SETTINGS, models, progress=reporter)
    except DataError as err:
        profile = weight_interference(base, experts, progress=reporter)
        st.caption(f"Weight-space measures only, no neuron overlap: {err}")
    reporter.finish(f"Interference of {len(experts)} expert(s)")
    key = (_content_key(profile), tuple((m.values.tobytes(), m.labels) for m in cka_pairs))
    fig = common.cached_figures(("cka_interference", key), lambda: figures.cka_and_interference(cka_pairs, profile))
    common.show_figure(fig, f"cka_and_interference_{base.name}", key="cka_interference")
    common.download_csv(figures.interference_table(profile), f"interference_{base.name}", key="layers_interference_csv")
