"""Dashboard latency in a real browser (Debian chromium through Playwright) on the demo zoo.

Measures, against `streamlit run app.py` with an empty cache:
  1. cold: from the Merge click to the merge's Scores row, then to the Layers heatmaps
     (navigation clicks included, as a user would do it);
  2. warm: switching pages once everything is cached (median over several switches);
  3. the same with N browser sessions working at once (each merges with its own method, so
     the cold part really merges N recipes).

    .venv/bin/python bench/bench_dashboard.py [--sessions 4] [--switches 8] [--tiny]

--tiny runs on the tests' tiny random zoo (when zoo/models is not built yet). Results are
printed as a Markdown table and written to bench/out/dashboard.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import pipeline  # noqa: E402
from tests.browser_harness import (  # noqa: E402
    ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, ZOO_DATA, ZOO_MODELS, build_demo_zoo, choose, start_server,
    stop_server, wait_for_app,
)

log = logging.getLogger("bench_dashboard")
PAGE_TIMEOUT_MS = 120_000
METHODS = ("TIES", "Task Arithmetic", "Linear DARE", "SCE")  # display names: one per concurrent session
PAGES = {  # page title -> JavaScript condition that says its content is on screen
    "Scores": "[...document.querySelectorAll('[data-testid=\"stTable\"] tbody th')].some(t => t.innerText.trim() === 'merge')",
    "Layers": "document.querySelectorAll('.js-plotly-plot .heatmaplayer').length >= 3",
    "Samples": "[...document.querySelectorAll('[data-testid=\"stTable\"] thead')].some(t => t.innerText.includes('merge · output'))",
    "Models & merge": "document.querySelector('[data-testid=\"stCode\"]') !== null",
}


def open_page(page, title: str) -> float:
    """Click a page in the sidebar; seconds until its heading and content are shown and the run ended."""
    start = time.perf_counter()
    page.get_by_test_id("stSidebar").get_by_test_id("stPageLink").get_by_text(title, exact=True).click()
    page.wait_for_function(
        f"() => [...document.querySelectorAll('h1')].some(h => h.innerText.trim() === {title!r}) && ({PAGES[title]})",
        timeout=PAGE_TIMEOUT_MS,
    )
    wait_for_app(page, settle_ms=0)  # the new page is on screen: only wait for its run to end
    return time.perf_counter() - start


def en_x_experts(roots) -> list[str]:
    found = pipeline.discover(roots)
    labels = [pipeline.checkpoint_label(c, roots) for c in found.checkpoints]
    return sorted(l for l in labels if (d := pipeline.direction_from_name(l)) and d.startswith("en-"))[:2]


def session(url: str, experts: list[str], method: str, switches: int, out: dict, barrier: threading.Barrier | None):
    """One browser of its own (Playwright's sync API is per thread) running `_session`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        try:
            _session(page, url, experts, method, switches, out, barrier)
        except Exception as err:  # keep the other sessions' figures; say what this one saw
            out["error"] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
            page.screenshot(path=str(ARTIFACTS / f"bench_session_{method.replace(' ', '_')}_error.png"))
            log.error("session %s failed: %s", method, out["error"])
        browser.close()


def _session(page, url, experts, method, switches, out, barrier) -> None:
    """One user: pick, merge, Scores, Layers (cold), then switch pages (warm)."""
    page.goto(url)
    wait_for_app(page)
    for name in experts:
        choose(page, "Experts", name)
    choose(page, "Method", method)
    if barrier is not None:
        barrier.wait()  # every session clicks Merge at the same moment
    start = time.perf_counter()
    page.get_by_role("button", name="Merge", exact=True).click()
    page.get_by_text("Merge ready", exact=False).wait_for(timeout=TIMEOUT_MS)
    wait_for_app(page)
    merged = time.perf_counter() - start
    scores = open_page(page, "Scores")
    layers = open_page(page, "Layers")
    cold = time.perf_counter() - start
    order = ["Scores", "Layers", "Models & merge", "Samples"]  # never the page already shown
    open_page(page, "Samples")  # the first visit computes translations the table did not need
    out.update(method=method, merge_s=merged, scores_s=scores, layers_s=layers, cold_s=cold, warm_s=[])
    for i in range(switches):
        out["warm_s"].append(open_page(page, order[i % len(order)]))
        log.info("%s: %s in %.2f s", method, order[i % len(order)], out["warm_s"][-1])


def run(url: str, experts: list[str], sessions: int, switches: int) -> list[dict]:
    results = [{} for _ in range(sessions)]
    barrier = threading.Barrier(sessions) if sessions > 1 else None
    threads = [threading.Thread(target=session, args=(url, experts, METHODS[i % len(METHODS)], switches, results[i], barrier))
               for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def summarise(label: str, results: list[dict]) -> dict:
    failed = [r for r in results if "error" in r]
    results = [r for r in results if "cold_s" in r]
    warm = [w for r in results for w in r["warm_s"]]
    return {
        "label": label, "sessions": len(results),
        "cold_s_median": statistics.median(r["cold_s"] for r in results),
        "cold_s_max": max(r["cold_s"] for r in results),
        "merge_s_max": max(r["merge_s"] for r in results),
        "scores_s_max": max(r["scores_s"] for r in results),
        "layers_s_max": max(r["layers_s"] for r in results),
        "warm_s_median": statistics.median(warm), "warm_s_p90": sorted(warm)[int(0.9 * (len(warm) - 1))],
        "runs": results, "failed": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--switches", type=int, default=8)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random zoo instead of zoo/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    work = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    extra_env = {}
    if args.tiny or not (ZOO_MODELS.is_dir() and ZOO_DATA.is_dir()):
        zoo = build_demo_zoo(work / "zoo")
        models, data = zoo.models, zoo.data
        extra_env["MERGESCOPE_MAX_NEW_TOKENS"] = "6"
        label = "tiny random zoo"
    else:
        models, data, label = ZOO_MODELS, ZOO_DATA, "demo zoo"
    experts = en_x_experts([models])
    summaries = []
    for sessions in (1, args.sessions):
        # A fresh server and an empty cache per round: the cold figures are really cold.
        server = start_server(models, data, work / f"cache-{sessions}", ARTIFACTS / f"bench_dashboard_{sessions}.log",
                              extra_env=extra_env)
        try:
            summaries.append(summarise(label, run(server.url, experts, sessions, args.switches)))
        finally:
            stop_server(server)
    out = Path(__file__).resolve().parent / "out" / "dashboard.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"experts": experts, "cpus": os.cpu_count(), "summaries": summaries}, indent=1))
    print("| zoo | sessions | Merge click → Scores row + Layers heatmaps (median / max) | of which merge | "
          "page switch, warm (median / p90) |")
    print("|---|---|---|---|---|")
    for s in summaries:
        print(f"| {s['label']} | {s['sessions']} | {s['cold_s_median']:.1f} s / {s['cold_s_max']:.1f} s | "
              f"≤ {s['merge_s_max']:.1f} s | {s['warm_s_median']:.2f} s / {s['warm_s_p90']:.2f} s |"
              + (f" {len(s['failed'])} session(s) failed: {s['failed']}" if s["failed"] else ""))
    print(f"experts: {', '.join(experts)}; written to {out}")


if __name__ == "__main__":
    main()
