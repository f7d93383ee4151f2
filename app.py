"""MergeScope dashboard: the router.

Lists the pages, restores the view from the URL, draws the shared pickers (data split, sentence
count, directions) and runs the chosen page. Engine errors reach the user as messages, never as
tracebacks. Run with `make demo` (binds to 127.0.0.1, see .streamlit/config.toml).
"""

import logging

import streamlit as st

from engine.errors import MergeScopeError
from views import common, state

log = logging.getLogger("mergescope.app")

st.set_page_config(page_title="MergeScope", layout="wide")

PAGES = [
    st.Page("views/models.py", title="Models & merge", url_path="models", default=True),
    st.Page("views/scores.py", title="Scores", url_path="scores"),
    st.Page("views/layers.py", title="Layers", url_path="layers"),
    st.Page("views/neurons.py", title="Neurons", url_path="neurons"),
    st.Page("views/samples.py", title="Samples", url_path="samples"),
    st.Page("views/patch.py", title="Patch", url_path="patch"),
]

common.engine_logging()
common.warm_up()
state.restore_from_url()
state.keep_alive()
page = st.navigation(PAGES, position="hidden")
with st.sidebar:
    # Our own links carry the view in their query string, so the next page opens with it even
    # when the browser's session is new (a reconnect, a copied link, a new tab).
    view = state.url_params()
    for p in PAGES:
        st.page_link(p, label=p.title, query_params=view)
    st.divider()
try:
    common.draw_shared_pickers()
except MergeScopeError as err:
    st.error(str(err))
if page.url_path == PAGES[0].url_path:  # where sessions start; a link to a chart page loads plotly.js anyway
    common.preload_charts()
state.write_to_url()

try:
    page.run()
except MergeScopeError as err:
    st.error(str(err))
except Exception as err:  # an engine bug: say what failed, keep the traceback in the server log
    log.exception("page %s failed", page.title)
    st.error(f"Something went wrong on this page ({type(err).__name__}: {err}). The server log has the details.")
