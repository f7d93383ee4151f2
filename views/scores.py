"""Scores: the paper-style table (base, experts, other models, merge) per direction, and bar charts."""

import pandas as pd
import streamlit as st

from engine.pipeline.data import data_languages
from engine.pipeline.recipes import method_specs
from engine.pipeline.scores import evaluate_systems, score_rows
from engine.pipeline.sweep_curves import sweep_curve, sweep_values
from views import common, figures, state
from views.sweep_progress import draw_sweep_progress

st.title("Scores")
draw_sweep_progress()
systems = common.systems()
common.need(
    bool(st.session_state.get("base")) and bool(st.session_state.get("experts")),
    "Pick a base model and experts on **Models & merge** first.",
)
if common.merged_system() is None:
    st.info("No merge yet: press **Merge** on Models & merge to add the merge's row. Showing the checkpoints.")
sets = common.data_sets()
common.need(bool(sets), "No parallel data for the chosen directions; pick directions in the sidebar.")

state.default("expert_directions", "all")
st.segmented_control(
    "Experts scored on",
    list(common.EXPERT_DIRECTIONS),
    key="expert_directions",
    format_func=common.EXPERT_DIRECTIONS.get,
    help="the paper scores each expert on every chosen direction, which shows what it does when "
    "asked for another target; 'own direction' keeps one cell per expert",
)
reporter = common.ProgressReporter("Scoring (cached results come back at once)")
results = evaluate_systems(
    systems, sets, common.model_cache(), progress=reporter, experts_everywhere=common.experts_everywhere()
)
reporter.finish(f"Scored {len(systems)} system(s) on {len(sets)} direction(s), {len(sets[0])} sentences each")
rows = score_rows(results)

table = figures.scores_table(rows)
metrics = list(figures.SCORE_COLUMNS)
state.default("score_metric", "chrf")
st.segmented_control("Metric", metrics, key="score_metric", format_func=lambda m: figures.SCORE_COLUMNS[m])
metric = st.session_state.get("score_metric") or "chrf"

st.subheader(f"{figures.SCORE_COLUMNS[metric]} by system and direction")
wide = figures.scores_wide(rows, metric)
st.table(wide.style.format(precision=2, na_rep="–"))  # small: a plain HTML table, easy to read and copy
common.download_csv(table, "scores", key="scores_csv")
bars = common.cached_figures(("bars", repr(rows), metric), lambda: figures.scores_bars(rows, metric))
common.show_figure(bars, f"scores_{metric}", key="scores_bars")


def start_sweep() -> None:
    st.session_state["sweep_param"] = st.session_state.get("sweep_choice") or ""


st.subheader("Sweep curve")
parts = common.recipe_parts()
if parts is None:
    st.info("A sweep varies one parameter of the recipe on **Models & merge**; pick experts and a method there.")
else:
    base, experts, method, params, _ = parts
    spec = method_specs()[method]
    numeric = [p.name for p in spec.params if p.kind is float]
    if not numeric:
        st.info(f"{spec.display_name} has no numeric parameter to sweep.")
    else:
        state.default(
            "sweep_choice",
            st.session_state.get("sweep_param") if st.session_state.get("sweep_param") in numeric else numeric[0],
        )
        cols = st.columns([2, 1])
        cols[0].selectbox(
            "Parameter",
            numeric,
            key="sweep_choice",
            help="the paper's grid for this method and parameter; the others stay at the recipe's values",
        )
        values = sweep_values(method, st.session_state["sweep_choice"])
        cols[1].button(
            "Run sweep",
            key="sweep_run",
            on_click=start_sweep,
            help=f"{len(values)} merges scored on {st.session_state.get('split')}; cached points are not recomputed",
        )
        st.caption(f"{st.session_state['sweep_choice']} ∈ {{{', '.join(f'{v:g}' for v in values)}}}")
        param = st.session_state.get("sweep_param")
        if param in numeric:
            reporter = common.ProgressReporter(f"Sweeping {param} ({len(sweep_values(method, param))} merges)")
            sweep = sweep_curve(
                base,
                experts,
                method,
                params,
                param,
                sweep_values(method, param),
                sets,
                common.model_cache(),
                progress=reporter,
            )
            reporter.finish(f"Sweep of {param}: done")
            common.show_figure(figures.sweep_figure(sweep, metric), f"sweep_{method}_{param}_{metric}", key="sweep_fig")
            common.download_csv(
                pd.DataFrame(sweep).drop(columns=["identity"]), f"sweep_{method}_{param}", key="sweep_csv"
            )

with st.expander("All metrics, long form, with sacreBLEU and decoding signatures"):
    st.dataframe(table, hide_index=True, width="stretch")
    signatures = pd.DataFrame(rows)[["system", "direction", "bleu_signature", "chrf_signature", "decoding_signature"]]
    st.dataframe(signatures, hide_index=True, width="stretch")
st.caption(
    f"Off-target: share of outputs whose language (py3langid, answering among the data's languages: "
    f"{', '.join(data_languages())}) is not the requested target; 'vs ref. language' compares with "
    "the language detected on each reference instead."
)
