"""The view state: widget values that live in the URL, so a copied link reproduces the view.

Every persisted widget has an explicit session-state key registered here with a codec (how its
value reads from and writes to a query parameter). The router (app.py) calls, in this order:

    restore_from_url()  # first run of a session only: query parameters -> session state
    keep_alive()        # widget state survives pages that do not draw the widget
    write_to_url()      # session state -> query parameters (non-default values only)

Widgets never take `value=`/`default=` arguments: their defaults are put in session state with
`default()` before they are drawn, which keeps Streamlit from warning about two sources of
truth and lets a restored link win over the built-in default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import streamlit as st

log = logging.getLogger(__name__)

LIST_SEPARATOR = ","
PARAM_PREFIX = "p_"  # merge parameters: p_<method>__<param>; one key per method keeps slider ranges apart
SCHEDULE_PREFIX = "s_"  # per-layer schedules: s_<method>__<param>, a comma-separated list of values
RESTORED_FLAG = "_view_restored"


@dataclass(frozen=True)
class Codec:
    parse: Callable[[str], Any]
    format: Callable[[Any], str]


def _parse_bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _parse_list(text: str) -> list[str]:
    return [item for item in text.split(LIST_SEPARATOR) if item]


TEXT = Codec(str, str)
INT = Codec(int, str)
FLOAT = Codec(float, lambda v: f"{v:g}")
BOOL = Codec(_parse_bool, lambda v: "1" if v else "0")
LIST = Codec(_parse_list, lambda v: LIST_SEPARATOR.join(v))

# key -> codec. Page options are registered next to the app-wide ones so one table says what a
# link carries.
VIEW_KEYS: dict[str, Codec] = {
    # recipe (Models & merge)
    "base": TEXT,
    "experts": LIST,
    "method": TEXT,
    "schedule_on": BOOL,
    "merged": TEXT,  # recipe hash of the merge the user asked for
    "interference_layer": TEXT,  # the layer of the task-vector cosine matrix
    # data (sidebar, app-wide)
    "split": TEXT,
    "n": INT,
    "directions": LIST,
    # Scores
    "score_metric": TEXT,
    "extra_systems": LIST,
    "expert_directions": TEXT,  # experts scored on every chosen direction ("all") or their own ("own")
    "sweep_param": TEXT,  # set when a sweep curve was asked for; a link re-draws it (from the cache)
    # Layers
    "a_row": TEXT,
    "a_col": TEXT,
    "b_row": TEXT,
    "b_col": TEXT,
    "span": TEXT,
    "cka_direction": TEXT,
    "cka_kind": TEXT,
    "cka_last": TEXT,
    # Neurons
    "preset": TEXT,
    "top_rate": FLOAT,
    "activation_bar": FLOAT,
    "filter_on": BOOL,
    "filter_q": FLOAT,
    "neuron_model": TEXT,
    "neuron_span": TEXT,
    "neuron_layer": INT,
    "neuron_conditions": TEXT,
    "nua_mode": TEXT,
    "geometry_layer": INT,
    # Samples
    "sample_direction": TEXT,
    "sample_systems": LIST,
    "off_target_only": BOOL,
    # Patch
    "patch_side": TEXT,
    "patch_k": INT,
    "patch_blocks": TEXT,
    "patch_parts": LIST,
    "patch_controls": INT,
    "patch_from": TEXT,
    "patch_curve": BOOL,
    "patch_metric": TEXT,
    "patch_run": TEXT,  # the routed set that was run; a link re-draws it (from the cache)
}


def codec_for(key: str) -> Codec | None:
    if key in VIEW_KEYS:
        return VIEW_KEYS[key]
    if key.startswith(PARAM_PREFIX):
        # Merge parameters are floats or booleans; the Models page coerces to the declared kind.
        return Codec(lambda t: _parse_bool(t) if t.lower() in ("true", "false") else float(t), _format_param)
    if key.startswith(SCHEDULE_PREFIX):
        return TEXT
    return None


def _format_param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def param_key(method: str, name: str) -> str:
    return f"{PARAM_PREFIX}{method}__{name}"


def schedule_key(method: str, name: str) -> str:
    return f"{SCHEDULE_PREFIX}{method}__{name}"


def _persisted_keys() -> list[str]:
    return [k for k in st.session_state.keys() if isinstance(k, str) and codec_for(k) is not None]


def _current_method_only(key: str) -> bool:
    # Parameters of methods the user looked at but did not pick stay in the session, not in the link.
    if key.startswith((PARAM_PREFIX, SCHEDULE_PREFIX)):
        return key.split("__")[0][len(PARAM_PREFIX) :] == st.session_state.get("method")
    return True


def restore_from_url() -> None:
    """Copy query parameters into session state, once per session (a shared link's first load)."""
    if st.session_state.get(RESTORED_FLAG):
        return
    st.session_state[RESTORED_FLAG] = True
    for key, text in st.query_params.to_dict().items():
        codec = codec_for(key)
        if codec is None:
            continue
        try:
            st.session_state[key] = codec.parse(text)
        except ValueError:
            log.warning("ignoring malformed query parameter %s=%r", key, text)


def keep_alive() -> None:
    """Streamlit drops a widget's state on runs that do not draw it; re-assigning keeps it."""
    for key in _persisted_keys():
        st.session_state[key] = st.session_state[key]


def default(key: str, value: Any) -> None:
    """Give a keyed widget its starting value unless the session (or a link) already set one."""
    if key not in st.session_state:
        st.session_state[key] = value


def url_params() -> dict[str, str]:
    """The query parameters that describe the current view."""
    params = {}
    for key in sorted(_persisted_keys()):
        if not _current_method_only(key):
            continue
        value = st.session_state[key]
        if value is None or value == [] or value == "":
            continue
        params[key] = codec_for(key).format(value)
    return params


def write_to_url() -> None:
    """Mirror the view state into the URL; untouched when nothing changed (no history noise)."""
    params = url_params()
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)
