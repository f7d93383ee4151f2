"""Neurons: LAPE language-specific neurons per block and condition, base vs fine-tune, NUA of every
pair of systems, source- vs target-span neurons, histograms, and the principal-angle geometry."""

import pandas as pd
import streamlit as st

from engine.pipeline.analyses import SPANS, neuron_report, nua_groups, span_overlap, subspace_geometry
from engine.pipeline.systems import MERGE
from views import common, figures, state

CONDITION_NAMES = {
    "dataset": "data set (the paper's)",
    "span": "span language",
}
CONDITION_AXES = {
    "dataset": "conditions by data set",
    "span": "conditions by span language",
}
NUA_NAMES = {
    "rate": "rates averaged over conditions (the paper's)",
    "concat": "rates of all conditions side by side",
}

PRESET_NAMES = {
    "paper": "Paper's code (0.10 / 0.80 / no filter)",
    "lape": "Original LAPE (0.05 / 0.95 / 0.95)",
    "custom": "Custom",
}


def apply_preset() -> None:
    """Callback: a preset sets the sliders (before they are drawn)."""
    from engine.neurons import PRESETS

    preset = PRESETS.get(st.session_state.get("preset"))
    if preset is not None:
        st.session_state.update(
            top_rate=preset.top_rate,
            activation_bar=preset.activation_bar,
            filter_on=preset.filter is not None,
            filter_q=preset.filter or 0.95,
        )


def mark_custom() -> None:
    st.session_state["preset"] = "custom"


st.title("Neurons")
common.need(
    bool(st.session_state.get("base")) and bool(st.session_state.get("experts")),
    "Pick a base model and experts on **Models & merge** first.",
)
from engine.neurons import LapeSettings  # noqa: E402  (after the check that says what is missing)

systems = {s.name: s for s in common.systems()}
base = systems[st.session_state["base"]]
others = [n for n in systems if n != base.name]
sets = common.data_sets()
common.need(bool(sets), "No parallel data for the chosen directions; pick directions in the sidebar.")

controls = st.columns([2, 2, 2, 2])
state.default("neuron_model", MERGE if MERGE in others else others[0])
if st.session_state["neuron_model"] not in others:
    st.session_state["neuron_model"] = others[0]
controls[0].selectbox("Fine-tune (against the base)", others, key="neuron_model")
state.default("neuron_span", "target")
controls[1].segmented_control(
    "Span", list(SPANS), key="neuron_span", help="which tokens count: the source sentence or the reference translation"
)
state.default("neuron_conditions", "dataset")
if st.session_state["neuron_conditions"] not in CONDITION_NAMES:  # a hand-edited link
    st.session_state["neuron_conditions"] = "dataset"
controls[2].segmented_control(
    "Conditions",
    list(CONDITION_NAMES),
    key="neuron_conditions",
    format_func=CONDITION_NAMES.get,
    help="one LAPE condition per data set's non-English language (so En→X source spans compare the data sets), "
    "or per language of the span's own text",
)
state.default("preset", "paper")
controls[3].selectbox("Preset", list(PRESET_NAMES), key="preset", format_func=PRESET_NAMES.get, on_change=apply_preset)
for key, value in (("top_rate", 0.10), ("activation_bar", 0.80), ("filter_on", False), ("filter_q", 0.95)):
    state.default(key, value)
sliders = st.columns(3)
sliders[0].slider(
    "top_rate",
    0.01,
    0.5,
    step=0.01,
    key="top_rate",
    on_change=mark_custom,
    help="share of all neurons kept, lowest entropy first",
)
sliders[1].slider(
    "activation_bar",
    0.5,
    0.99,
    step=0.01,
    key="activation_bar",
    on_change=mark_custom,
    help="a kept neuron belongs to every language whose p exceeds this quantile of all p",
)
with sliders[2]:
    st.toggle("filter", key="filter_on", on_change=mark_custom, help="drop neurons whose highest p is under a quantile")
    st.slider(
        "filter quantile",
        0.5,
        0.99,
        step=0.01,
        key="filter_q",
        on_change=mark_custom,
        disabled=not st.session_state["filter_on"],
    )
settings = LapeSettings(
    st.session_state["top_rate"],
    st.session_state["activation_bar"],
    st.session_state["filter_q"] if st.session_state["filter_on"] else None,
)
span = st.session_state.get("neuron_span") or "target"
conditions = st.session_state.get("neuron_conditions") or "dataset"
state.default("nua_mode", "rate")
if st.session_state["nua_mode"] not in NUA_NAMES:
    st.session_state["nua_mode"] = "rate"
st.selectbox("NUA vectors", list(NUA_NAMES), key="nua_mode", format_func=NUA_NAMES.get)
nua_mode = st.session_state["nua_mode"]
finetune = systems[st.session_state["neuron_model"]]

reporter = common.ProgressReporter("Capturing activations (cached captures come back at once)")
models = common.model_cache()
report = neuron_report(base, finetune, sets, span, settings, models, reporter, conditions, nua_mode)
reporter.finish(f"LAPE over {', '.join(report.languages)} ({span} spans, {CONDITION_AXES[conditions]})")

left, right = st.columns(2)
with left:
    common.show_figure(
        figures.count_heatmap(
            report.base.counts,
            report.languages,
            f"{base.name}: neurons per block ({CONDITION_AXES[conditions]})",
            report.base.signature,
        ),
        "neurons_base",
        key="counts_base",
    )
with right:
    common.show_figure(
        figures.count_heatmap(
            report.finetune.counts,
            report.languages,
            f"{finetune.name}: neurons per block ({CONDITION_AXES[conditions]})",
            report.finetune.signature,
        ),
        "neurons_finetune",
        key="counts_finetune",
    )
counts = pd.DataFrame(report.finetune.counts, columns=list(report.languages)).rename_axis("block_index").reset_index()
common.download_csv(counts.assign(model=finetune.name), "neuron_counts", key="counts_csv")

left, right = st.columns(2)
with left:
    common.show_figure(
        figures.selection_comparison(report.comparison, f"{base.name} → {finetune.name}: gained / lost"),
        "neurons_gained_lost",
        key="gained_lost",
    )
with right:
    common.show_figure(
        figures.nua_figure(report.nua, f"Neuron usage alignment, {base.name} vs {finetune.name}"), "nua", key="nua"
    )
    thirds = st.columns(3)
    for col, name, value in zip(
        thirds, ("lower", "middle", "upper"), (report.nua.lower, report.nua.middle, report.nua.upper)
    ):
        col.metric(f"NUA {name} third", f"{value:.3f}")

layers = len(report.histograms.entropy_counts)
state.default("neuron_layer", 1)
st.session_state["neuron_layer"] = min(max(1, int(st.session_state["neuron_layer"])), layers)
st.slider("Block for the histograms", 1, layers, key="neuron_layer")
layer = st.session_state["neuron_layer"] - 1
left, right = st.columns(2)
with left:
    common.show_figure(
        figures.layer_histograms(
            report.histograms.entropy_edges,
            [report.base_histograms.entropy_counts[layer], report.histograms.entropy_counts[layer]],
            [base.name, finetune.name],
            f"Entropy over conditions, block {layer + 1}",
            "entropy",
        ),
        "entropy_histogram",
        key="entropy_hist",
    )
with right:
    common.show_figure(
        figures.layer_histograms(
            report.histograms.selectivity_edges,
            [report.base_histograms.selectivity_counts[layer], report.histograms.selectivity_counts[layer]],
            [base.name, finetune.name],
            f"Selectivity (largest normalised p), block {layer + 1}",
            "selectivity",
        ),
        "selectivity_histogram",
        key="selectivity_hist",
    )

more = common.ProgressReporter("Capturing the other systems (cached captures come back at once)")
st.subheader("Neuron usage alignment of every pair of models")
unmerged = common.systems(include_merge=False)  # the paper's pairs: base and fine-tunes, no merge
if len(unmerged) < 3:
    st.info("Pick at least two experts to compare fine-tunes with each other.")
else:
    groups = nua_groups(unmerged, base, sets, span, models, more, conditions, nua_mode)
    content = (groups.signature, groups.names, groups.base_finetune.tobytes(), groups.finetune_finetune.tobytes())
    common.show_figure(
        common.cached_figures(
            ("nua_groups", content),
            lambda: figures.nua_groups_figure(groups, "Mean NUA: base–fine-tune pairs vs fine-tune–fine-tune pairs"),
        ),
        "nua_pairs",
        key="nua_pairs",
    )
    rows = st.columns(2)
    for col, name, values in zip(
        rows,
        ("base–fine-tune", "fine-tune–fine-tune"),
        (groups.base_finetune_thirds, groups.finetune_finetune_thirds),
    ):
        col.markdown(f"**{name}**, lower / middle / upper third: " + " / ".join(f"{v:.3f}" for v in values))
    nua_rows = pd.DataFrame(
        [
            {"a": a, "b": b, "block": l + 1, "nua": v, "signature": r.signature}
            for (a, b), r in groups.pairs.items()
            for l, v in enumerate(r.per_layer)
        ]
    )
    common.download_csv(nua_rows, "nua_pairs", key="nua_pairs_csv")

st.subheader(f"{finetune.name}: source-span vs target-span neurons")
if conditions != "dataset":
    # Grouped by span language the two spans have different conditions (e.g. en vs es, pt): nothing to pair.
    st.info("The source/target overlap pairs each condition's neurons on the two spans; choose data-set conditions.")
else:
    overlap = span_overlap(finetune, sets, settings, models, more)
    common.show_figure(
        common.cached_figures(
            ("span_overlap", finetune.name, overlap.signature, overlap.languages, overlap.jaccard.tobytes()),
            lambda: figures.span_overlap_heatmap(
                overlap, f"Jaccard of source- and target-span neurons, {finetune.name}"
            ),
        ),
        "span_overlap",
        key="span_overlap",
    )
    st.caption(
        "Per condition: "
        + ", ".join(f"{lang} {v:.3f}" for lang, v in zip(overlap.languages, overlap.per_language))
        + f"; all {overlap.mean:.3f} (mean over blocks; two empty sets count as 1.0)"
    )
    common.download_csv(
        pd.DataFrame(overlap.jaccard, columns=list(overlap.languages)).rename_axis("block_index").reset_index(),
        "span_overlap",
        key="span_overlap_csv",
    )

st.subheader("Representation geometry")
geometry = subspace_geometry(list(systems.values()), sets, span, models, progress=more)
geometry_content = (geometry.signature, geometry.names, geometry.median_angle.tobytes(), geometry.distance.tobytes())
common.show_figure(
    common.cached_figures(
        ("principal_angles", geometry_content),
        lambda: figures.principal_angle_curves(
            geometry, f"Median principal angle between top-{geometry.rank} PCA subspaces"
        ),
    ),
    "principal_angles",
    key="principal_angles",
)
n_layers = geometry.median_angle.shape[0]
state.default("geometry_layer", n_layers - 1)
st.session_state["geometry_layer"] = min(max(0, int(st.session_state["geometry_layer"])), n_layers - 1)
st.slider("Layer for the map (0: embeddings)", 0, n_layers - 1, key="geometry_layer")
map_layer = st.session_state["geometry_layer"]
common.show_figure(
    common.cached_figures(
        ("subspace_map", geometry_content, map_layer),
        lambda: figures.subspace_map(
            geometry.mds_coordinates(map_layer),
            geometry.names,
            f"Subspace map (classical MDS), layer {map_layer}",
            geometry.signature,
        ),
    ),
    "subspace_map",
    key="subspace_map",
)
angle_rows = pd.DataFrame(
    [
        {
            "a": a,
            "b": b,
            "layer": l,
            "median_angle_deg": geometry.median_angle[l, p],
            "distance": geometry.distance[l, p],
        }
        for p, (a, b) in enumerate(geometry.pairs)
        for l in range(n_layers)
    ]
)
common.download_csv(angle_rows, "principal_angles", key="principal_angles_csv")
more.finish("NUA pairs, span overlap and geometry")
