"""What every page shares: the cached engine objects, the shared pickers, the current systems,
progress reporting and download buttons. Pages stay thin: they call these and views/figures.py.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from engine.errors import MergeScopeError, RecipeError
from engine.pipeline.catalog import checkpoint_direction, checkpoints_by_label, discover
from engine.pipeline.data import available_directions
from engine.pipeline.data import data_sets as split_sets
from engine.pipeline.memo import Memo
from engine.pipeline.models import ModelCache, limit_torch_threads
from engine.pipeline.prefetch import Prefetcher
from engine.pipeline.recipes import build_recipe, method_specs
from engine.pipeline.systems import System, checkpoint_system, merge_system
from engine.settings import model_roots
from views import state

log = logging.getLogger(__name__)

SPLITS = ("devtest", "dev")
SENTENCE_COUNTS = (8, 16, 32, 64, 128, 256)
DEFAULT_SENTENCES = 32
# Plotly's own camera button saves PNG in the browser, so no server-side image renderer is needed.
PLOT_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


# ----------------------------------------------------------------- cached engine objects


@st.cache_resource(show_spinner=False)
def model_cache() -> ModelCache:
    """Loaded and merged models, shared by every session (ModelCache is thread-safe). Every
    model computation goes through it, so torch's threads are limited here, before the first,
    and the warm-up's imports finish first: transformers resolves its top-level names lazily, and
    a page importing the modelling stack while the warm-up thread does could fail with "cannot
    import name 'DynamicCache' from 'transformers'"."""
    limit_torch_threads()
    warm_up().join()
    return ModelCache()


@st.cache_resource(show_spinner=False)
def prefetcher() -> Prefetcher:
    """One background worker per server for results users are about to ask for."""
    return Prefetcher()


ENGINE_LOG_HANDLER = "mergescope-server-log"


@st.cache_resource(show_spinner=False)
def engine_logging() -> logging.Handler:
    """The engine's messages (models loaded and merged, translations with their time) in the
    server's log, at Streamlit's own `logger.level`: what the server computed, and when."""
    handler = logging.StreamHandler()
    handler.set_name(ENGINE_LOG_HANDLER)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"))
    engine = logging.getLogger("engine")
    for earlier in [h for h in engine.handlers if h.get_name() == ENGINE_LOG_HANDLER]:
        engine.removeHandler(earlier)  # a cleared resource cache sets it up again: one copy of each line
    engine.addHandler(handler)
    engine.setLevel(str(st.get_option("logger.level")).upper())
    engine.propagate = False  # the root logger's last-resort handler would print warnings twice
    return handler


@st.cache_resource(show_spinner=False)
def warm_up() -> threading.Thread:
    """Import the modelling stack and read the language-ID model in the background once per server:
    the first Merge click would otherwise spend seconds importing transformers, and the first
    scores ~0.8 CPU-s reading py3langid's model, while the user waits."""

    def imports():
        import transformers.modeling_utils  # noqa: F401

        import engine.activations  # noqa: F401
        import engine.merge.executor  # noqa: F401
        import engine.translate.evaluate  # noqa: F401
        from engine.translate import langid

        langid.supported_languages()

    thread = threading.Thread(target=imports, name="mergescope-warm-up", daemon=True)
    thread.start()
    return thread


@st.cache_resource(ttl=60, show_spinner=False)
def _discovery(roots: tuple[str, ...]):
    return discover([Path(r) for r in roots])


def discovery():
    """Checkpoints under the model roots; re-scanned at most once a minute."""
    return _discovery(tuple(str(r) for r in model_roots()))


def checkpoints() -> dict:
    return checkpoints_by_label(discovery())


# ----------------------------------------------------------------- shared pickers


def draw_shared_pickers() -> None:
    """Data split, sentences per direction and directions: every page's results depend on them."""
    with st.sidebar:
        st.subheader("Data")
        state.default("split", SPLITS[0])
        st.selectbox("Split", SPLITS, key="split", help="devtest for reporting, dev for choosing hyperparameters")
        state.default("n", DEFAULT_SENTENCES)
        if st.session_state["n"] not in SENTENCE_COUNTS:
            st.session_state["n"] = DEFAULT_SENTENCES
        st.select_slider(
            "Sentences per direction",
            SENTENCE_COUNTS,
            key="n",
            help="more sentences: steadier scores, slower first view (results are cached)",
        )
        available = available_directions(st.session_state["split"])
        state.default("directions", [])
        st.session_state["directions"] = [d for d in st.session_state["directions"] if d in available]
        st.multiselect(
            "Directions",
            available,
            key="directions",
            placeholder="the experts' own directions",
            help="empty: the directions the chosen experts were trained for",
        )


def directions() -> list[str]:
    """The directions in play: chosen in the sidebar, else the experts' own, else every one."""
    if st.session_state.get("directions"):
        return list(st.session_state["directions"])
    available = available_directions(st.session_state.get("split", SPLITS[0]))
    by_label = checkpoints()
    own = [checkpoint_direction(by_label[e]) for e in st.session_state.get("experts", []) if e in by_label]
    own = [d for d in own if d in available]
    return sorted(set(own)) or available


def data_sets():
    """The parallel sets of the chosen split and directions, cut to the chosen size."""
    wanted = directions()
    if not wanted:
        return []
    return split_sets(st.session_state.get("split", SPLITS[0]), wanted, st.session_state.get("n", DEFAULT_SENTENCES))


# ----------------------------------------------------------------- the recipe in the view


def parse_schedule(text: str, name: str) -> list[float]:
    """'0.2, 0.5, 0.8' -> [0.2, 0.5, 0.8]; RecipeError naming the parameter otherwise."""
    items = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    try:
        values = [float(t) for t in items]
    except ValueError:
        raise RecipeError(f"schedule for {name}: expected numbers separated by commas, got {text!r}") from None
    if len(values) < 2:
        raise RecipeError(f"schedule for {name}: give at least two values (first layer … last layer)")
    return values


# Slider ranges per parameter name: the paper's grids fit inside (TIES weight up to 2.5).
RANGES = {
    "weight": (0.0, 2.5, 0.05),
    "density": (0.01, 1.0, 0.01),
    "select_topk": (0.01, 1.0, 0.01),
    "t": (0.0, 1.0, 0.05),
    "lambda": (0.0, 2.0, 0.05),
    "gamma": (0.0, 0.2, 0.005),
    "epsilon": (0.0, 0.5, 0.01),
    "common_space_fraction": (0.0, 1.0, 0.05),
}
# Where one name means another scale in another method: NearSwap's t is a distance between
# weights, RAM's epsilon a threshold on single task-vector entries.
METHOD_RANGES = {
    ("nearswap", "t"): (0.0, 0.05, 0.0005),
    ("ram", "epsilon"): (0.0, 0.001, 0.00001),
    ("ramplus_tl", "epsilon"): (0.0, 0.001, 0.00001),
    ("ramplus_tl", "r"): (0.0, 1.0, 0.01),
    ("ramplus_tl", "alpha"): (0.0, 1.0, 0.01),
    ("karcher", "max_iter"): (1, 50, 1),
    ("karcher", "tol"): (0.0, 0.001, 0.00001),
    ("multislerp", "eps"): (0.0, 0.000001, 0.000000001),
}
FALLBACK_RANGE = (0.0, 2.0, 0.01)
REQUIRED_DEFAULTS = {"weight": 0.5, "t": 0.5}
METHOD_DEFAULTS = {("nearswap", "t"): 0.001, ("passthrough", "scale"): 1.0}  # scale 1 copies, as no scale does


def param_range(method: str, name: str) -> tuple[float, float, float]:
    return METHOD_RANGES.get((method, name), RANGES.get(name, FALLBACK_RANGE))


def param_default(method: str, p):
    """A parameter's starting value: its declared default, or ours for required ones."""
    if p.kind is bool:
        return bool(p.default) if not p.required else False
    if (method, p.name) in METHOD_DEFAULTS:
        return float(METHOD_DEFAULTS[(method, p.name)])
    return float(REQUIRED_DEFAULTS.get(p.name, param_range(method, p.name)[0]) if p.required else p.default)


def recipe_parts() -> tuple[str, list[str], str, dict, dict] | None:
    """(base, experts, method, parameters, schedules) from the view state; None while incomplete."""
    base, experts, method = (
        st.session_state.get("base"),
        st.session_state.get("experts") or [],
        st.session_state.get("method"),
    )
    if not base or not experts or not method:
        return None
    specs = method_specs()
    if method not in specs:
        raise RecipeError(f"unknown merge method {method!r} in the link; known: {', '.join(specs)}")
    params, schedules = {}, {}
    for p in specs[method].params:
        # Every parameter, drawn yet or not: a Merge click can land before the sliders of a newly
        # chosen method were drawn, and the recipe (and its hash) must not depend on that.
        params[p.name] = p.kind(st.session_state.get(state.param_key(method, p.name), param_default(method, p)))
        skey = state.schedule_key(method, p.name)
        if st.session_state.get("schedule_on") and p.kind is float and st.session_state.get(skey, "").strip():
            schedules[p.name] = parse_schedule(st.session_state[skey], p.name)
    return base, list(experts), method, params, schedules


def _recipe_and_merge() -> tuple | None:
    """(recipe, its merge System) for the pickers' view; built once per distinct view, since
    hashing a recipe fingerprints every checkpoint it names."""
    parts = recipe_parts()
    if parts is None:
        return None
    base, experts, method, params, schedules = parts
    cache_key = repr(parts)
    memo = st.session_state.setdefault("_recipe_memo", {})
    if cache_key not in memo:
        memo.clear()
        recipe = build_recipe(base, experts, method, params, schedules)
        memo[cache_key] = (recipe, merge_system(recipe))
    return memo[cache_key]


def current_recipe():
    """The recipe the pickers describe (None while incomplete)."""
    entry = _recipe_and_merge()
    return entry[0] if entry else None


def recipe_identity() -> str | None:
    """The content hash of the current recipe (None while incomplete)."""
    entry = _recipe_and_merge()
    return entry[1].identity if entry else None


def merged_system():
    """The merge System when the user merged the current recipe (or opened a link that did)."""
    merged = st.session_state.get("merged")
    if not merged:
        return None
    entry = _recipe_and_merge()
    if entry is None:
        return None
    return entry[1] if entry[1].identity.startswith(merged) else None


def systems(include_merge: bool = True) -> list[System]:
    """Base, experts, other chosen models and the merge, in the paper table's order."""
    by_label = checkpoints()
    names = [
        st.session_state.get("base"),
        *st.session_state.get("experts", []),
        *st.session_state.get("extra_systems", []),
    ]
    out, seen = [], set()
    for name in names:
        if name and name in by_label and name not in seen:
            seen.add(name)
            out.append(checkpoint_system(by_label[name]))
    if include_merge and (merge := merged_system()) is not None:
        out.append(merge)
        from views.patch_systems import routed_systems  # the Patch page's patched merges, one per direction

        out += routed_systems(merge, out)
    return out


# Which directions an expert is scored on (Scores and Samples): the paper's every direction, or its own.
EXPERT_DIRECTIONS = {"all": "every direction (paper)", "own": "own direction"}


def experts_everywhere() -> bool:
    """Whether experts are scored on every chosen direction (the view's 'expert_directions')."""
    return st.session_state.get("expert_directions", "all") != "own"


def need(condition: bool, message: str) -> None:
    """Say what is missing and stop the page."""
    if not condition:
        st.info(message)
        st.stop()


# ----------------------------------------------------------------- progress and downloads


class ProgressReporter:
    """An engine progress callback drawn as one progress bar that says what runs, made on the first
    report of work still to do; results that come from the cache report none, so a warm page draws
    nothing. A bar, not an st.status box: the box's spinner keeps the browser repainting while the
    work runs (~0.09 CPU-s per second per session, taken from the cores the server computes on) and
    each box costs the server a 50 ms pause (Streamlit's own)."""

    def __init__(self, label: str):
        self.label = label
        self.slot = st.empty()  # keeps the bar's place on the page until it is needed
        self.started = False

    def __call__(self, done: int, total: int, message: str) -> None:
        if not self.started:
            if total and done >= total:
                return
            self.started = True
        self.slot.progress(min(1.0, done / total) if total else 1.0, text=f"{self.label} · {message}")

    def finish(self, label: str) -> None:
        if self.started:
            self.slot.caption(f"✓ {label}")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "figure"


# Plotly validates every property while a figure is built (~50 ms for a heatmap), and a page
# switch draws the same figures again: built once per content, shared by sessions (st.plotly_chart
# sends a copy, never the figure itself).
_FIGURES = Memo(capacity=64)


def cached_figures(key: tuple, build):
    """`build()` (a figure or a tuple of them) once per content `key`."""
    return _FIGURES.get_or_compute(key, build)


# plotly.js is a 4.7 MB script that a browser tab parses and compiles when it shows its first
# chart: 2-2.6 CPU-s on a 2-core machine, measured. A hidden chart drawn on the session's second run
# of Models & merge (the first pick) has the tab pay that while the user picks models, not after
# the Merge click; on the first run it would hold up the page's own widgets, still loading then.
# Its traces are the kinds the pages draw, so their code is compiled too.
_PRELOAD_KEY = "_chart_preload"


def preload_charts() -> None:
    """Call on each run of Models & merge: on the session's second, a hidden chart at the end of
    the sidebar loads plotly.js into the browser tab."""
    stage = st.session_state.get(_PRELOAD_KEY, "first run")
    st.session_state[_PRELOAD_KEY] = "second run" if stage == "first run" else "done"
    if stage != "second run":
        return
    figure = go.Figure([go.Heatmap(z=[[0.0, 1.0], [1.0, 0.0]]), go.Scatter(y=[0.0, 1.0]), go.Bar(y=[1.0, 0.5])])
    with st.sidebar.container(key="chart-preload"):
        st.html("<style>.st-key-chart-preload {display: none;}</style>")
        st.plotly_chart(figure, key="chart_preload", config={"displayModeBar": False})


def show_figure(fig, name: str, key: str) -> None:
    """A Plotly figure with PNG (camera button) and HTML downloads."""
    config = {**PLOT_CONFIG, "toImageButtonOptions": {**PLOT_CONFIG["toImageButtonOptions"], "filename": slug(name)}}
    st.plotly_chart(fig, key=key, config=config, width="stretch")
    # Built on click only: a self-contained page embeds plotly.js (megabytes), and must open offline.
    st.download_button(
        "HTML",
        lambda: fig.to_html(include_plotlyjs=True, full_html=True),
        file_name=f"{slug(name)}.html",
        mime="text/html",
        key=f"{key}_html",
        on_click="ignore",
        help="interactive figure, works offline; PNG: the camera button on the figure",
    )


def download_csv(frame: pd.DataFrame, name: str, key: str) -> None:
    # Built on click only, as the figures' HTML: every run of a page would format tables nobody downloads.
    st.download_button(
        "CSV",
        lambda: frame.to_csv(index=False),
        file_name=f"{slug(name)}.csv",
        mime="text/csv",
        key=key,
        on_click="ignore",
    )


def show_error(err: MergeScopeError) -> None:
    st.error(str(err))


def labels(systems_: Sequence[System]) -> list[str]:
    return [s.name for s in systems_]
