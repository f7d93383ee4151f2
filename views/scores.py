"""Scores: the paper-style table (base, experts, other models, merge) per direction, and bar charts."""

import pandas as pd
import streamlit as st

from engine import pipeline
from views import common, figures, state

st.title("Scores")
common.need_engine("engine.translate", "Scores")
systems = common.systems()
common.need(bool(st.session_state.get("base")) and bool(st.session_state.get("experts")),
            "Pick a base model and experts on **Models & merge** first.")
if common.merged_system() is None:
    st.info("No merge yet: press **Merge** on Models & merge to add the merge's row. Showing the checkpoints.")
sets = common.data_sets()
common.need(bool(sets), "No parallel data for the chosen directions; pick directions in the sidebar.")

reporter = common.ProgressReporter("Scoring (cached results come back at once)")
results = pipeline.evaluate_systems(systems, sets, common.model_cache(), progress=reporter)
reporter.finish(f"Scored {len(systems)} system(s) on {len(sets)} direction(s), {len(sets[0])} sentences each")
rows = pipeline.score_rows(results)

table = figures.scores_table(rows)
metrics = list(figures.SCORE_COLUMNS)
state.default("score_metric", "chrf")
st.segmented_control("Metric", metrics, key="score_metric", format_func=lambda m: figures.SCORE_COLUMNS[m])
metric = st.session_state.get("score_metric") or "chrf"

st.subheader(f"{figures.SCORE_COLUMNS[metric]} by system and direction")
wide = figures.scores_wide(rows, metric)
st.table(wide.style.format(precision=2, na_rep="–"))  # small: a plain HTML table, easy to read and copy
common.download_csv(table, "scores", key="scores_csv")
common.show_figure(figures.scores_bars(rows, metric), f"scores_{metric}", key="scores_bars")

with st.expander("All metrics, long form, with sacreBLEU signatures"):
    st.dataframe(table, hide_index=True, width="stretch")
    signatures = pd.DataFrame(rows)[["system", "direction", "bleu_signature", "chrf_signature"]]
    st.dataframe(signatures, hide_index=True, width="stretch")
st.caption("Off-target: share of outputs whose language (py3langid, restricted to the languages in play) is not the "
           "requested target; 'vs ref. language' compares with the language detected on each reference instead.")
