"""The Patch page in a real browser (Debian chromium through Playwright, `streamlit run app.py`), on the
committed demo zoo when it exists: merge two En→X experts, open Patch, run last-2 with 3 random
controls, see the table and the chart, and open the patched merge on Layers. Screenshots go to
test-artifacts/."""

from __future__ import annotations

import pytest

from engine.pipeline.systems import MERGE
from tests.browser_harness import (  # noqa: F401  (fixtures)
    TIMEOUT_MS,
    browser,
    choose,
    dashboard,
    go_to,
    heatmap_boxes,
    screenshot,
    wait_for_app,
    wait_for_plots,
    wait_for_recipe,
)
from tests.test_browser import VIEWPORT, en_x_experts

pytestmark = pytest.mark.browser


def test_patch_last_two_with_three_controls_then_layers(dashboard, browser):
    experts = en_x_experts(dashboard)
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(dashboard.server.url)
    wait_for_app(page)
    for expert in experts:
        choose(page, "Experts", expert)
    choose(page, "Method", "TIES")
    wait_for_recipe(page, "TIES")
    page.get_by_role("button", name="Merge", exact=True).click()
    wait_for_app(page)
    page.get_by_text("Merge ready", exact=False).wait_for(timeout=TIMEOUT_MS)

    go_to(page, "Patch")
    page.get_by_text("Choose the blocks", exact=False).wait_for(timeout=TIMEOUT_MS)
    page.get_by_role("button", name="Run", exact=True).click()  # the defaults: last 2 blocks (+norm), 3 controls
    wait_for_app(page)
    table = page.locator('[data-testid="stTable"]').first
    table.wait_for(timeout=TIMEOUT_MS)
    header = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    assert {"merge", "patched (routed)", "random mean", "random sd", "expert", "base"} <= set(header), header
    rows = table.locator("tbody tr")
    directions = [rows.nth(i).locator("th").first.inner_text().strip() for i in range(rows.count())]
    assert directions[-1] == "avg" and len(directions) == len(experts) + 1, directions
    controls = header.index("controls")
    assert all(rows.nth(i).locator("th, td").nth(controls).inner_text().strip() == "3" for i in range(rows.count()))
    wait_for_plots(page, 1)
    assert "patch_run=last%3A2%2Bnorm" in page.url or "patch_run=last:2+norm" in page.url, page.url
    assert not page.locator('[data-testid="stException"]').count()
    screenshot(page, "browser_patch")

    patched = f"{MERGE} · {experts[0]} last:2+norm"
    go_to(page, "Layers")
    choose(page, "Rows", patched)
    wait_for_app(page)
    assert len(heatmap_boxes(page)) >= 3
    assert not page.locator('[data-testid="stException"]').count()
    screenshot(page, "browser_patch_layers")
    context.close()
