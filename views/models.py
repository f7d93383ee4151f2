"""Models & merge: the checkpoints found, the recipe (pickers or YAML), and the Merge button."""

import streamlit as st

from engine.errors import MergeScopeError
from engine.pipeline.catalog import checkpoint_label, compatibility, summary_rows
from engine.pipeline.prefetch import prefetch_checkpoints
from engine.pipeline.recipes import method_specs, parse_recipe, recipe_view, recipe_yaml
from views import common, interference_panels, state

DEFAULT_METHOD = "task_arithmetic"


def load_recipe_into_view(text: str, source: str) -> None:
    """Callback: a pasted or uploaded YAML recipe sets the pickers (before they are drawn)."""
    st.session_state.pop("_recipe_error", None)
    try:
        view = recipe_view(parse_recipe(text, source))
    except MergeScopeError as err:
        st.session_state["_recipe_error"] = str(err)
        return
    st.session_state.update(experts=view.experts, method=view.method, merged="")
    if view.base is not None:  # a single-input recipe (passthrough) names no base: keep the picked one
        st.session_state["base"] = view.base
    for name, value in view.params.items():
        st.session_state[state.param_key(view.method, name)] = value if isinstance(value, bool) else float(value)
    st.session_state["schedule_on"] = bool(view.schedules)
    for name, values in view.schedules.items():
        st.session_state[state.schedule_key(view.method, name)] = ", ".join(f"{v:g}" for v in values)
    st.session_state["_recipe_notes"] = view.notes


def load_pasted() -> None:
    load_recipe_into_view(st.session_state.get("recipe_text", ""), "the pasted recipe")


def load_uploaded() -> None:
    upload = st.session_state.get("recipe_upload")
    if upload is not None:
        load_recipe_into_view(upload.getvalue().decode("utf-8", errors="replace"), upload.name)


def request_merge() -> None:
    """Callback: merge the recipe the pickers describe *now*. Computed here rather than bound when
    the button was drawn, so a click that lands before the previous rerun finished still merges
    what the user sees selected."""
    identity = common.recipe_identity()
    if identity is not None:
        st.session_state["merged"] = identity[:16]


def draw_checkpoints(discovery) -> None:
    st.subheader("Checkpoints")
    common.need(
        bool(discovery.checkpoints) or bool(discovery.refused),
        "No checkpoints found under the model roots. Set MERGESCOPE_MODEL_ROOTS to folders holding "
        "Hugging Face checkpoints (config.json + safetensors), or build the demo zoo.",
    )
    if discovery.checkpoints:
        st.dataframe(summary_rows(discovery), hide_index=True, width="stretch")
    if discovery.refused:
        with st.expander(f"{len(discovery.refused)} folder(s) refused"):
            for folder, reason in discovery.refused:
                st.markdown(f"**{folder}**: {reason}")


def draw_param(method: str, p) -> None:
    key = state.param_key(method, p.name)
    state.default(key, common.param_default(method, p))
    if p.kind is bool:
        st.session_state[key] = bool(st.session_state[key])
        st.toggle(p.name, key=key, help=p.doc or None)
        return
    low, high, step = common.param_range(method, p.name)
    value = min(high, max(low, float(st.session_state[key])))  # a link may carry any number
    if p.kind is int:
        st.session_state[key] = int(round(value))
        st.slider(p.name, int(low), int(high), step=int(step), key=key, help=p.doc or None)
        return
    st.session_state[key] = value
    # Thresholds like 1e-5 would read 0.00 in the slider's default format.
    st.slider(p.name, low, high, step=step, key=key, help=p.doc or None, format="%.1e" if step < 1e-3 else None)


st.title("Models & merge")
discovery = common.discovery()
draw_checkpoints(discovery)
labels = [checkpoint_label(c) for c in discovery.checkpoints]
common.need(len(labels) >= 2, "A merge needs at least two checkpoints (a base and an expert).")

if error := st.session_state.pop("_recipe_error", None):
    st.error(error)
for note in st.session_state.pop("_recipe_notes", []):
    st.warning(note)

left, right = st.columns([1, 1])
with left:
    st.subheader("Recipe")
    state.default("base", next((l for l in labels if "base" in l), labels[0]))
    if st.session_state["base"] not in labels:
        st.error(f"The link names a base {st.session_state['base']!r} that is not under the model roots.")
        st.session_state["base"] = labels[0]
    st.selectbox("Base model", labels, key="base")
    others = [l for l in labels if l != st.session_state["base"]]
    state.default("experts", [])
    if unknown := [e for e in st.session_state["experts"] if e not in others]:
        st.warning(f"Not available as experts: {', '.join(unknown)}")
    st.session_state["experts"] = [e for e in st.session_state["experts"] if e in others]
    st.multiselect("Experts", others, key="experts", placeholder="fine-tunes to merge")
    state.default("extra_systems", [l for l in others if "joint" in l.lower()])  # the paper's table has the joint model
    st.session_state["extra_systems"] = [e for e in st.session_state["extra_systems"] if e in others]
    st.multiselect(
        "Also compare",
        others,
        key="extra_systems",
        placeholder="e.g. the jointly trained model",
        help="shown next to the merge on Scores, Layers and Samples; not merged",
    )

    specs = method_specs()
    state.default("method", DEFAULT_METHOD if DEFAULT_METHOD in specs else next(iter(specs)))
    st.selectbox("Method", list(specs), key="method", format_func=lambda m: specs[m].display_name)
    spec = specs[st.session_state["method"]]
    st.caption(f"{spec.display_name} · [{spec.paper}]({spec.paper})")
    for p in spec.params:
        draw_param(spec.name, p)
    state.default("schedule_on", False)
    st.toggle(
        "Per-layer schedule",
        key="schedule_on",
        help="a list of values from the first layer to the last, interpolated over the layers (mergekit gradients)",
    )
    if st.session_state["schedule_on"]:
        for p in spec.params:
            if p.kind is float:
                st.text_input(
                    f"{p.name} over the layers",
                    key=state.schedule_key(spec.name, p.name),
                    placeholder="e.g. 0.2, 0.5, 1.0 (empty: the slider's value everywhere)",
                )

chosen = [st.session_state["base"], *st.session_state["experts"], *st.session_state["extra_systems"]]
by_label = common.checkpoints()
problems = compatibility([by_label[c] for c in chosen])

with right:
    st.subheader("mergekit YAML")
    recipe, recipe_error = None, None
    if problems:
        st.error("These checkpoints cannot be merged or compared:\n\n" + "\n".join(f"- {p}" for p in problems))
    elif not st.session_state["experts"]:
        st.info("Pick one or more experts to build a recipe.")
    else:
        try:
            recipe = common.current_recipe()
        except MergeScopeError as err:
            recipe_error = str(err)
            st.error(recipe_error)
    if recipe is not None:
        # While the user looks at the recipe, score and capture the checkpoints in the background:
        # after the Merge click only the merge itself is left to compute.
        try:
            prefetch_checkpoints(
                common.prefetcher(), common.systems(include_merge=False), common.data_sets(), common.model_cache()
            )
        except MergeScopeError:
            pass  # e.g. no data for these directions: the pages that need it will say so
        text = recipe_yaml(recipe)
        st.code(text, language="yaml")
        if note := spec.mergekit_note:
            st.info(note)
        st.download_button(
            "Download YAML",
            text,
            file_name="recipe.yaml",
            mime="application/x-yaml",
            key="recipe_download",
            on_click="ignore",
        )
    with st.expander("Load a recipe (paste or upload mergekit YAML)"):
        st.text_area("Recipe YAML", key="recipe_text", height=160)
        st.button("Load pasted recipe", key="recipe_load", on_click=load_pasted)
        st.file_uploader("or upload", type=["yaml", "yml"], key="recipe_upload", on_change=load_uploaded)

st.divider()
if recipe is not None:
    identity = common.recipe_identity()
    merged_now = bool(st.session_state.get("merged")) and identity.startswith(st.session_state["merged"])
    st.button("Merge", key="merge", type="primary", on_click=request_merge)
    if merged_now:
        system = common.merged_system()
        if system.identity not in common.model_cache():  # a merge to run, not one already in memory
            reporter = common.ProgressReporter(
                f"Merging {len(st.session_state['experts'])} expert(s) with {spec.display_name}"
            )
            reporter(0, 1, "merging in memory")
            common.model_cache().get(system)
            reporter.finish(f"Merged in memory · recipe {identity[:12]}")
        st.success(f"Merge ready (recipe {identity[:12]}). See it on the other pages:")
        cols = st.columns(4)
        for col, (target, title) in zip(
            cols,
            [
                ("views/scores.py", "Scores"),
                ("views/layers.py", "Layers"),
                ("views/neurons.py", "Neurons"),
                ("views/samples.py", "Samples"),
            ],
        ):
            col.page_link(target, label=title, query_params=state.url_params())
    elif st.session_state.get("merged"):
        st.info("The recipe changed since the last merge; press Merge to merge it.")
else:
    st.button(
        "Merge",
        key="merge",
        type="primary",
        disabled=True,
        help="pick compatible base and experts first" if not recipe_error else recipe_error,
    )

if recipe is not None:  # computed from the checkpoints alone: no Merge needed
    st.divider()
    interference_panels.draw_weight_interference()
