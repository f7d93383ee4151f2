"""The dashboard in a real browser: Debian chromium through Playwright against `streamlit run app.py`.

On the committed demo zoo when it exists (else on the tiny zoo): pick two En→X experts, choose
TIES, merge, see the merge's Scores row, two Layers heatmaps side by side, Samples; a copied
link opens the same view in a fresh browser context; a bad recipe and an incompatible pair show
readable errors. Screenshots of every page go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import psutil
import pytest

from engine.pipeline.catalog import checkpoint_label, direction_from_name, discover
from engine.pipeline.systems import MERGE
from tests.browser_harness import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    TIMEOUT_MS,
    browser,
    choose,
    clipped_figure_parts,
    dashboard,
    go_to,
    heatmap_boxes,
    screenshot,
    start_server,
    stop_server,
    wait_for_app,
    wait_for_plots,
    wait_for_recipe,
)

pytestmark = pytest.mark.browser
VIEWPORT = {"width": 1500, "height": 2000}  # tall: Streamlit scrolls inside the page, screenshots show the viewport


def en_x_experts(app) -> list[str]:
    """Two En→X experts of the zoo, as the Models page labels them."""
    found = discover(app.roots)
    labels = [checkpoint_label(c, app.roots) for c in found.checkpoints]
    experts = sorted(l for l in labels if (d := direction_from_name(l)) and d.startswith("en-"))
    assert len(experts) >= 2, labels
    return experts[:2]


def test_merge_scores_layers_samples_and_shared_link(dashboard, browser):
    server = dashboard.server
    experts = en_x_experts(dashboard)
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(server.url)
    wait_for_app(page)
    page.get_by_text("Checkpoints", exact=True).wait_for(timeout=TIMEOUT_MS)
    screenshot(page, "browser_models_empty")

    choose(page, "Experts", experts[0])
    # The first pick draws the hidden chart that loads plotly.js: drawn, yet nothing on screen.
    page.locator(".st-key-chart-preload .js-plotly-plot").wait_for(state="attached", timeout=TIMEOUT_MS)
    assert not page.locator(".st-key-chart-preload").is_visible()
    choose(page, "Experts", experts[1])
    choose(page, "Method", "TIES")
    wait_for_recipe(page, "TIES")
    page.get_by_role("button", name="Merge", exact=True).click()
    wait_for_app(page)
    page.get_by_text("Merge ready", exact=False).wait_for(timeout=TIMEOUT_MS)
    assert "merge_method: ties" in page.locator('[data-testid="stCode"]').inner_text()
    screenshot(page, "browser_models_merged")

    go_to(page, "Scores")
    table = page.locator('[data-testid="stTable"]').first
    table.wait_for(timeout=TIMEOUT_MS)
    rows = table.locator("tbody tr")
    names = [rows.nth(i).locator("th").first.inner_text().strip() for i in range(rows.count())]
    assert MERGE in names and experts[0] in names, names
    wait_for_plots(page, 1)
    screenshot(page, "browser_scores")

    # The table downloads as CSV and the figure as HTML, holding what the page shows.
    with page.expect_download(timeout=TIMEOUT_MS) as download:
        page.get_by_role("button", name="CSV", exact=True).first.click()
    assert download.value.suggested_filename == "scores.csv"
    csv = pd.read_csv(download.value.path())
    directions = [h.strip() for h in table.locator("thead th").all_inner_texts()[1:]]
    shown = rows.nth(names.index(MERGE)).locator("td").all_inner_texts()
    merge_rows = csv[csv["system"] == MERGE].set_index("direction")
    assert [merge_rows.loc[d, "chrF"] for d in directions] == pytest.approx([float(v) for v in shown], abs=0.006)
    with page.expect_download(timeout=TIMEOUT_MS) as download:
        page.get_by_role("button", name="HTML", exact=True).first.click()
    assert download.value.suggested_filename == "scores_chrf.html"
    html = Path(download.value.path()).read_text(encoding="utf-8")
    assert "Plotly.newPlot" in html and '"type":"bar"' in html and f'"name":"{MERGE}"' in html
    # PNG: the figure's own camera button, at twice the drawn size.
    chart = page.locator(".js-plotly-plot").first
    chart.hover()
    with page.expect_download(timeout=TIMEOUT_MS) as download:
        chart.locator('.modebar-btn[data-title^="Download plot"]').click()
    assert download.value.suggested_filename == "scores_chrf.png"
    png = Path(download.value.path()).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = chart.locator(".main-svg").first.bounding_box()
    assert int.from_bytes(png[16:20], "big") == round(2 * drawn["width"])  # IHDR width

    go_to(page, "Layers")
    boxes = heatmap_boxes(page)
    assert len(boxes) >= 3  # left, right, difference
    left, right = boxes[0], boxes[1]
    assert abs(left["y"] - right["y"]) < 5 and right["x"] > left["x"] + left["width"] * 0.8  # side by side
    assert not clipped_figure_parts(page)  # the figure's fixed margins hold its labels and colour bars
    screenshot(page, "browser_layers")

    go_to(page, "Neurons")
    wait_for_plots(page, 6)  # two count matrices, gained/lost, NUA, two histograms
    assert not page.locator('[data-testid="stException"]').count()
    screenshot(page, "browser_neurons")

    go_to(page, "Samples")
    samples = page.locator('[data-testid="stHtml"] table').first
    samples.wait_for(timeout=TIMEOUT_MS)
    header = samples.locator("thead").inner_text()
    assert f"{MERGE} · output" in header and "reference" in header
    assert samples.locator("tbody tr").count() >= 4
    screenshot(page, "browser_samples")

    link = page.url
    assert "merged=" in link and "method=ties" in link and "/samples" in link
    fresh = browser.new_context(viewport=VIEWPORT)
    other = fresh.new_page()
    other.goto(link)
    wait_for_app(other)
    shared = other.locator('[data-testid="stHtml"] table').first
    shared.wait_for(timeout=TIMEOUT_MS)
    assert shared.locator("thead").inner_text() == header
    assert shared.locator("tbody").inner_text() == samples.locator("tbody").inner_text()
    screenshot(other, "browser_samples_shared_link")
    go_to(other, "Layers")
    assert len(heatmap_boxes(other)) >= 3
    fresh.close()
    context.close()


def test_bad_recipe_and_incompatible_pair_show_readable_errors(dashboard, browser):
    server = dashboard.server
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(server.url)
    wait_for_app(page)

    page.get_by_text("Load a recipe", exact=False).click()
    page.get_by_label("Recipe YAML").fill("merge_method: frobnicate\nmodels:\n  - model: nowhere\n")
    page.get_by_role("button", name="Load pasted recipe").click()
    wait_for_app(page)
    error = page.locator('[data-testid="stAlertContentError"]').first
    error.wait_for(timeout=TIMEOUT_MS)
    assert "unknown merge_method 'frobnicate'" in error.inner_text()
    assert not page.locator('[data-testid="stException"]').count()
    screenshot(page, "browser_bad_recipe")

    choose(page, "Experts", dashboard.odd_model)
    error = page.locator('[data-testid="stAlertContentError"]').filter(has_text="cannot be merged").first
    error.wait_for(timeout=TIMEOUT_MS)
    assert re.search(r"shape|tensor", error.inner_text())
    assert page.get_by_role("button", name="Merge", exact=True).is_disabled()
    screenshot(page, "browser_incompatible")
    context.close()


def test_a_protocol_session_is_sent_what_a_browser_is(dashboard):
    """bench_dashboard's --remote-users stands users in for browsers with bench/protocol_session.py:
    its runs must be the dashboard's real pages, and a broken one must show as broken."""
    from bench.bench_dashboard import remote_page_shown
    from bench.protocol_session import ProtocolSession

    experts = en_x_experts(dashboard)
    with ProtocolSession(dashboard.server.url, f"experts={','.join(experts)}&method=ties") as session:
        assert remote_page_shown(session.open(""), "Models & merge")
        merge = session.click("Merge")
        assert any(t.startswith("Merge ready") for t in merge.texts("alert")), merge.elements
        assert re.search(r"(^|&)merged=[0-9a-f]{16}(&|$)", session.query_string), session.query_string
        for title, path in (("Scores", "scores"), ("Layers", "layers"), ("Samples", "samples")):
            assert remote_page_shown(session.open(path), title), title

    with ProtocolSession(dashboard.server.url, f"experts={dashboard.odd_model}") as odd:
        run = odd.open("")
        assert any("cannot be merged" in e for e in run.errors), run.errors
        assert not remote_page_shown(run, "Models & merge")


def test_the_server_listens_on_localhost_only(dashboard):
    """The test server is started as `make demo` starts it, with no address given: the project's
    .streamlit/config.toml must keep it off every interface but the loopback."""
    server = psutil.Process(dashboard.server.process.pid)
    listening = {c.laddr.ip for c in server.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}


def test_a_fresh_server_opens_a_link_with_models_picked(dashboard, browser, tmp_path):
    """A collaborator's link opened on a server that has just started: the Models page prefetches
    while the server's warm-up thread is still importing the modelling stack, and must wait for it
    (two threads resolving transformers' lazy names at once failed with "cannot import name")."""
    experts = en_x_experts(dashboard)
    server = start_server(
        os.pathsep.join(map(str, dashboard.roots)),
        dashboard.zoo.data,
        tmp_path / "cache",
        ARTIFACTS / "tests.test_browser.fresh_server.log",
    )
    try:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"{server.url}/?base=base&experts={','.join(experts)}&method=ties")
        wait_for_recipe(page, "TIES")
        wait_for_app(page)
        screenshot(page, "browser_fresh_server_link")
        assert page.get_by_text("Something went wrong").count() == 0
        assert page.get_by_text("Download YAML").count() == 1
        page.close()
    finally:
        stop_server(server)
    assert "Traceback" not in (ARTIFACTS / "tests.test_browser.fresh_server.log").read_text()
