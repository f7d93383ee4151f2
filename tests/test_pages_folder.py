"""Why the page views live in views/, not pages/: Streamlit 1.67 with a router (st.navigation in
app.py) and a pages/ folder beside it.

With a pages/ folder, Streamlit falls back to its older automatic multipage app whenever the
router has not run yet in the process: a real server opens a page's link (a collaborator's URL)
by running the page's file directly, without the router (no shared pickers, no view restored
from the URL), and lists the folder's file names as pages, until someone opens the root page.
AppTest's switch_page likewise runs the page without the router. So the views stay in views/.
If these tests fail, Streamlit changed, and pages/ may be used.
"""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.browser_harness import TIMEOUT_MS, browser, start_server, stop_server  # noqa: F401  (fixture)

ROUTER = """
import streamlit as st
st.sidebar.write("router ran")
st.navigation([st.Page("pages/alpha.py", title="Alpha", url_path="alpha"),
               st.Page("pages/beta.py", title="Beta", url_path="beta")]).run()
"""


@pytest.fixture
def routed_app_with_pages_folder(tmp_path):
    (tmp_path / "pages").mkdir()
    (tmp_path / "app.py").write_text(ROUTER)
    for name in ("alpha", "beta"):
        (tmp_path / "pages" / f"{name}.py").write_text(f"import streamlit as st\nst.title('{name} page')\n")
    return tmp_path / "app.py"


def test_apptest_switches_to_a_page_without_the_router(routed_app_with_pages_folder):
    app = AppTest.from_file(str(routed_app_with_pages_folder)).run()
    assert [m.value for m in app.sidebar.markdown] == ["router ran"]
    app.switch_page("pages/beta.py").run()
    assert [t.value for t in app.title] == ["beta page"]
    assert [m.value for m in app.sidebar.markdown] == []


@pytest.mark.browser
def test_a_fresh_server_opens_page_links_without_the_router_until_the_root_is_opened(
    routed_app_with_pages_folder,
    browser,
    tmp_path,
):
    server = start_server(
        tmp_path, tmp_path, tmp_path / "cache", tmp_path / "server.log", script=str(routed_app_with_pages_folder)
    )
    try:
        seen = []
        for path, title in [("/beta", "beta"), ("/beta", "beta"), ("/", "alpha"), ("/beta", "beta")]:
            page = browser.new_page()
            page.goto(f"{server.url}{path}")
            page.get_by_text(f"{title} page").wait_for(timeout=TIMEOUT_MS)
            page.locator('[data-testid="stSidebarNav"] a').first.wait_for(timeout=TIMEOUT_MS)
            nav = page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
            seen.append((nav, page.get_by_text("router ran").count()))
            page.close()
    finally:
        stop_server(server)
    unrouted, routed = (["app", "alpha", "beta"], 0), (["Alpha", "Beta"], 1)
    assert seen == [unrouted, unrouted, routed, routed]
