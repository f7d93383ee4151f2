"""Patch: the merge with a layer set taken from each direction's own expert (routed by target
language), beside random blocks of the same size, the merge, the expert and the base."""

import streamlit as st

from engine.patch.experiment import METRICS, experts_by_direction, run_patch_experiment
from engine.patch.layers import CONTROLS_FROM, PARTS, parse_layer_set
from engine.pipeline.systems import checkpoint_system
from views import common, figures, state
from views.patch_systems import RUN_KEY

SIDES = {"last": "last k", "first": "first k", "explicit": "explicit blocks"}

st.title("Patch")
common.need(
    bool(st.session_state.get("base")) and bool(st.session_state.get("experts")),
    "Pick a base model and experts on **Models & merge** first.",
)
merge = common.merged_system()
common.need(merge is not None, "No merge yet: press **Merge** on Models & merge; the patch starts from that merge.")
by_label = common.checkpoints()
base = checkpoint_system(by_label[st.session_state["base"]])
experts = [checkpoint_system(by_label[e]) for e in st.session_state["experts"] if e in by_label]
sets = common.data_sets()
routed_sets = [s for s in sets if s.direction in {e.direction for e in experts}]
common.need(
    bool(routed_sets),
    "Routing needs each direction's own expert: pick directions that the chosen experts were trained for.",
)
if skipped := sorted({s.direction for s in sets} - {s.direction for s in routed_sets}):
    st.info(f"No chosen expert for {', '.join(skipped)}: left out (each direction is routed to its own expert).")
routes = experts_by_direction(experts, routed_sets)
num_layers = next(iter(routes.values())).checkpoint.summary.layers

state.default("patch_side", "last")
state.default("patch_k", min(2, num_layers))
state.default("patch_blocks", "")
state.default("patch_parts", ["norm"])
state.default("patch_controls", 3)
state.default("patch_from", "rest")
state.default("patch_curve", False)
st.session_state["patch_k"] = min(max(1, st.session_state["patch_k"]), num_layers)

cols = st.columns([2, 3, 2])
cols[0].segmented_control("Blocks", list(SIDES), key="patch_side", format_func=SIDES.get)
side = st.session_state.get("patch_side") or "last"
if side == "explicit":
    cols[1].text_input("Blocks (0-based)", key="patch_blocks", placeholder="e.g. 0,4,7 or 2-5")
else:
    cols[1].slider("k", 1, num_layers, key="patch_k", help=f"the {side} k of the model's {num_layers} blocks")
cols[2].multiselect(
    "Also patch",
    list(PARTS),
    key="patch_parts",
    help="the parts outside the blocks; the paper's upper patch takes the final norm with the last blocks",
)
cols = st.columns([2, 2, 2])
cols[0].number_input("Random controls", 0, 20, key="patch_controls", help="seeds 0, 1, …; as many blocks each")
cols[1].segmented_control(
    "Controls drawn from",
    list(CONTROLS_FROM),
    key="patch_from",
    format_func={"rest": "outside the routed blocks", "stack": "every block"}.get,
    help="outside: the paper's rule (its random layers exclude the patched tail); every block: uniform",
)
cols[2].toggle("k-curve (k = 0 … L)", key="patch_curve", help="the same experiment for every k (last or first)")

core = st.session_state["patch_blocks"].strip() if side == "explicit" else f"{side}:{st.session_state['patch_k']}"
text = "+".join([core or "none", *[p for p in PARTS if p in (st.session_state.get("patch_parts") or [])]])


def start_run(text: str = text) -> None:
    st.session_state[RUN_KEY] = text


st.button(
    "Run", key="patch_go", on_click=start_run, type="primary", help=f"patch {text}; cached results come back at once"
)
run_text = st.session_state.get(RUN_KEY)
if not run_text:
    st.info("Choose the blocks and press **Run**.")
    st.stop()

routed = parse_layer_set(run_text, num_layers)
controls = int(st.session_state.get("patch_controls") or 0)
draw_from = st.session_state.get("patch_from") or "rest"
models = common.model_cache()
reporter = common.ProgressReporter("Patching and scoring (cached results come back at once)")
experiment = run_patch_experiment(
    base, merge, list(routes.values()), routed_sets, [routed], models, controls, 0, draw_from, reporter
)
reporter.finish(f"{run_text} patched from each direction's expert, {controls} random control(s)")
table = experiment.table()

state.default("patch_metric", "chrf")
st.segmented_control("Metric", list(METRICS), key="patch_metric", format_func=lambda m: figures.SCORE_COLUMNS[m])
metric = st.session_state.get("patch_metric") or "chrf"
st.subheader(f"{figures.SCORE_COLUMNS[metric]}: {run_text} from each direction's expert")
frame = figures.patch_frame(table, metric)
st.table(frame.drop(columns=["layers"]).set_index("direction").rename_axis(None).style.format(precision=2, na_rep="–"))
common.download_csv(frame, f"patch_{run_text}_{metric}", key="patch_csv")
bars = common.cached_figures(
    ("patch", repr(table), run_text, metric), lambda: figures.patch_bars(table, routed.text, metric)
)
common.show_figure(bars, f"patch_{run_text}_{metric}", key="patch_bars")
st.caption(
    "Patched: the merge with these tensors from the expert of the direction it translates (one model per "
    "direction, each listed on Scores, Layers, Neurons and Samples). Random: as many blocks drawn with seeds "
    f"0 … {max(controls - 1, 0)}, no parts; mean ± sample standard deviation over seeds."
)

if st.session_state.get("patch_curve") and side != "explicit":
    extra = "".join(f"+{p}" for p in routed.parts)
    curve_sets = [parse_layer_set(f"{side}:{k}{extra}", num_layers) for k in range(num_layers + 1)]
    reporter = common.ProgressReporter(f"k-curve: {len(curve_sets)} layer sets")
    curve = run_patch_experiment(
        base, merge, list(routes.values()), routed_sets, curve_sets, models, controls, 0, draw_from, reporter
    ).table()
    reporter.finish("k-curve done")
    st.subheader("k-curve")
    figure = common.cached_figures(
        ("patch_curve", repr(curve), metric, side), lambda: figures.patch_k_curve(curve, metric, side)
    )
    common.show_figure(figure, f"patch_curve_{side}{extra}_{metric}", key="patch_curve_fig")
    common.download_csv(
        figures.patch_frame(curve, metric), f"patch_curve_{side}{extra}_{metric}", key="patch_curve_csv"
    )
