"""Samples: translations side by side with sentence chrF and detected language; off-target outputs highlighted."""

import streamlit as st

from engine.pipeline.scores import evaluate_systems, sample_rows
from views import common, figures, state

st.title("Samples")
common.need(
    bool(st.session_state.get("base")) and bool(st.session_state.get("experts")),
    "Pick a base model and experts on **Models & merge** first.",
)
all_systems = common.systems()
sets = common.data_sets()
common.need(bool(sets), "No parallel data for the chosen directions; pick directions in the sidebar.")

names = [s.name for s in all_systems]
state.default("sample_systems", [])
st.session_state["sample_systems"] = [n for n in st.session_state["sample_systems"] if n in names]
st.multiselect("Models", names, key="sample_systems", placeholder="all: base, experts, other models and the merge")
chosen = [s for s in all_systems if s.name in (st.session_state["sample_systems"] or names)]

directions = [s.direction for s in sets]
state.default("sample_direction", directions[0])
if st.session_state["sample_direction"] not in directions:
    st.session_state["sample_direction"] = directions[0]
st.selectbox("Direction", directions, key="sample_direction")
state.default("off_target_only", False)
st.toggle("Only sentences with an off-target output", key="off_target_only")

reporter = common.ProgressReporter("Translating (cached results come back at once)")
results = evaluate_systems(
    chosen, sets, common.model_cache(), progress=reporter, experts_everywhere=common.experts_everywhere()
)
reporter.finish("Translations ready")
table = figures.samples_table(sample_rows(results, st.session_state["sample_direction"]))
common.need(
    not table.empty,
    "No translations for this direction (experts are scored on their own direction only; see **Scores**).",
)
if st.session_state["off_target_only"]:
    detected = [c for c in table.columns if c.endswith(" · detected")]
    table = table[(table[detected].ne(table["target"], axis=0)).any(axis=1)]
table = table.drop(columns=["direction"])  # one direction at a time; its target is the 'target' column
st.caption(
    f"{len(table)} sentence(s). Red: the output's detected language is not the target "
    f"({st.session_state['sample_direction'].split('-')[1]})."
)
# An HTML table keeps every sentence and highlight visible without scrolling inside a grid.
st.html(figures.samples_html(table))
common.download_csv(table, f"samples_{st.session_state['sample_direction']}", key="samples_csv")
