"""The least a Streamlit page switch costs: two pages holding only a heading, linked from the
sidebar as the dashboard's pages are. bench_dashboard.py switches between them in the same
browsers and on the same cores as the dashboard, as the floor its page switches are set against.

    .venv/bin/python -m streamlit run bench/floor_app.py
"""

import streamlit as st

TITLES = ("First", "Second")


def heading_page(title: str) -> st.Page:
    return st.Page(lambda: st.title(title), title=title, url_path=title.lower(), default=title == TITLES[0])


pages = [heading_page(t) for t in TITLES]
page = st.navigation(pages, position="hidden")
with st.sidebar:
    for p in pages:
        st.page_link(p, label=p.title)
page.run()
