"""Layers: L × L CKA heatmaps of two model pairs side by side on one colour scale, their difference,
and the per-layer curves."""

import pandas as pd
import streamlit as st

from engine.pipeline.analyses import SPANS, cka_pair
from engine.pipeline.systems import MERGE
from views import common, figures, interference_panels, state

ALL = "all chosen directions"

st.title("Layers")
common.need(
    bool(st.session_state.get("base")) and bool(st.session_state.get("experts")),
    "Pick a base model and experts on **Models & merge** first.",
)
systems = {s.name: s for s in common.systems()}
names = list(systems)
sets = common.data_sets()
common.need(bool(sets), "No parallel data for the chosen directions; pick directions in the sidebar.")
common.need(len(sets[0]) >= 4, "CKA needs at least 4 sentences per direction; raise the count in the sidebar.")

experts = [n for n in st.session_state["experts"] if n in systems]
merge = MERGE if MERGE in systems else None
base = st.session_state["base"]
defaults = {
    "a_row": experts[0],
    "a_col": experts[1] if len(experts) > 1 else base,
    "b_row": merge or base,
    "b_col": experts[0],
}
for key, value in defaults.items():
    state.default(key, value)
    if st.session_state[key] not in names:
        st.session_state[key] = value

controls = st.columns(4)
state.default("span", "source")
controls[0].segmented_control(
    "Span",
    list(SPANS),
    key="span",
    help="mean-pool each sentence's hidden states over its source or its reference tokens",
)
direction_names = [ALL, *[s.direction for s in sets]]
state.default("cka_direction", ALL)
if st.session_state["cka_direction"] not in direction_names:
    st.session_state["cka_direction"] = ALL
controls[1].selectbox("Sentences from", direction_names, key="cka_direction")
state.default("cka_kind", "linear")
controls[2].segmented_control(
    "CKA",
    ["linear", "debiased"],
    key="cka_kind",
    help="debiased CKA (Nguyen et al. 2021) corrects the upward bias at small n",
)
LAST_LAYER = {"block-output": "block output (paper)", "final-norm": "after final norm"}
state.default("cka_last", "block-output")
controls[3].segmented_control(
    "Last layer",
    list(LAST_LAYER),
    key="cka_last",
    format_func=LAST_LAYER.get,
    help="the last block's raw output, as the paper's cka_masked.py hooks it, or the output after the "
    "model's final norm (Hugging Face's output_hidden_states)",
)
final_norm = st.session_state.get("cka_last") == "final-norm"
span = st.session_state.get("span") or "source"
chosen_sets = (
    sets
    if st.session_state["cka_direction"] == ALL
    else [s for s in sets if s.direction == st.session_state["cka_direction"]]
)
debiased = st.session_state.get("cka_kind") == "debiased"
if not merge:
    st.info("No merge yet: press **Merge** on Models & merge to compare the merge with the experts.")

left, right = st.columns(2)
with left:
    st.markdown("**Left pair** (rows × columns)")
    row = st.columns(2)
    row[0].selectbox("Rows", names, key="a_row")
    row[1].selectbox("Columns", names, key="a_col")
with right:
    st.markdown("**Right pair** (rows × columns)")
    row = st.columns(2)
    row[0].selectbox("Rows", names, key="b_row")
    row[1].selectbox("Columns", names, key="b_col")

reporter = common.ProgressReporter("Capturing representations (cached captures come back at once)")
models = common.model_cache()
pair_a = cka_pair(
    systems[st.session_state["a_row"]],
    systems[st.session_state["a_col"]],
    chosen_sets,
    span,
    models,
    debiased,
    reporter,
    final_norm,
)
pair_b = cka_pair(
    systems[st.session_state["b_row"]],
    systems[st.session_state["b_col"]],
    chosen_sets,
    span,
    models,
    debiased,
    reporter,
    final_norm,
)
reporter.finish(f"CKA on {pair_a.n} sentences, {span} span")

content = tuple((m.values.tobytes(), m.labels, m.signature) for m in (pair_a, pair_b))
comparison = common.cached_figures(("cka", content), lambda: figures.cka_comparison(pair_a, pair_b))
common.show_figure(
    comparison, f"cka_{pair_a.labels[0]}_vs_{pair_a.labels[1]}__{pair_b.labels[0]}_vs_{pair_b.labels[1]}", key="cka"
)

frames = []
for side, m in (("left", pair_a), ("right", pair_b)):
    f = (
        pd.DataFrame(m.values)
        .rename_axis("row_layer")
        .reset_index()
        .melt(id_vars="row_layer", var_name="col_layer", value_name="cka")
    )
    frames.append(f.assign(side=side, rows=m.labels[0], columns=m.labels[1], signature=m.signature))
common.download_csv(pd.concat(frames), "cka_matrices", key="cka_csv")
last = "after the final norm" if final_norm else "the last block's raw output"
st.caption(f"Layer 0 is the embedding output; layer l the output of block l; the last layer {last}. {pair_a.signature}")
interference_panels.draw_layer_profile([pair_a, pair_b], chosen_sets, models)
