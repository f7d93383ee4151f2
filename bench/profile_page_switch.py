"""Where one browser's CPU goes when it switches dashboard pages on a warm cache.

One chromium, the demo zoo, a TIES merge of two En→X experts; every page is visited once, then
the four pages are switched in turn for --rounds rounds. Prints chromium's CPU per switch by page
and by chromium process (renderer, browser, GPU process ...). With --profile, DevTools' sampling
profiler records the renderer's JavaScript during the switches and the self time per switch is
printed by script (Plotly, React, CSS-in-JS ...) and for the renderer's native work (style,
layout and paint: the profiler's "(program)"); the profiler slows the page by about a quarter, so
the by-page figures of a profiled run are high.

    .venv/bin/python bench/profile_page_switch.py [--rounds 6] [--profile]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_dashboard import (  # noqa: E402
    MERGE_SHOWN,
    WARM_ORDER,
    chromium_cpu_by_process,
    click_merge,
    en_x_experts,
    open_page,
    wait_until,
)
from tests.browser_harness import (  # noqa: E402
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    RUN_ENDED,
    ZOO_DATA,
    ZOO_MODELS,
    choose,
    start_server,
    stop_server,
    wait_for_app,
    wait_for_recipe,
)

SETTLE_S = 0.3  # after a page is shown: Plotly and the compositor finish drawing it


def self_ms_by_script(profile: dict) -> collections.Counter[str]:
    """Self time (ms) of a DevTools CPU profile by script file; native entries by their own name."""
    nodes = {n["id"]: n["callFrame"] for n in profile["nodes"]}
    by_script: collections.Counter[str] = collections.Counter()
    for node_id, delta_us in zip(profile["samples"], profile["timeDeltas"]):
        frame = nodes[node_id]
        by_script[frame["url"].rsplit("/", 1)[-1] or frame["functionName"] or "(anonymous)"] += delta_us / 1000
    by_script.pop("(idle)", None)
    return by_script


def merged_session(page, url: str, experts: list[str]) -> None:
    """Pick, merge and visit every page once, so the switches that follow are warm."""
    page.goto(url)
    wait_for_app(page)
    for name in experts:
        choose(page, "Experts", name)
    choose(page, "Method", "TIES")
    wait_for_recipe(page, "TIES")
    click_merge(page)
    wait_until(page, f"({MERGE_SHOWN}) && {RUN_ENDED}")
    for title in (*WARM_ORDER, WARM_ORDER[0]):
        open_page(page, title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--profile", action="store_true", help="record the renderer with DevTools' CPU profiler")
    args = parser.parse_args()

    server = start_server(
        ZOO_MODELS,
        ZOO_DATA,
        Path(tempfile.mkdtemp(prefix="profile-switch-")) / "cache",
        ARTIFACTS / "profile_page_switch.log",
    )
    cpu_by_page: dict[str, list[float]] = {title: [] for title in WARM_ORDER}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            merged_session(page, server.url, en_x_experts([ZOO_MODELS]))
            devtools = page.context.new_cdp_session(page) if args.profile else None
            if devtools:
                devtools.send("Profiler.enable")
                devtools.send("Profiler.start")
            start_by_process = chromium_cpu_by_process()
            for _ in range(args.rounds):
                for title in (*WARM_ORDER[1:], WARM_ORDER[0]):  # Scores is shown: start with the next page
                    before = sum(chromium_cpu_by_process().values())
                    open_page(page, title)
                    time.sleep(SETTLE_S)
                    cpu_by_page[title].append(sum(chromium_cpu_by_process().values()) - before)
            end_by_process = chromium_cpu_by_process()
            profile = devtools.send("Profiler.stop")["profile"] if devtools else None
            browser.close()
    finally:
        stop_server(server)

    switches = args.rounds * len(WARM_ORDER)
    print(
        f"Chromium CPU per warm switch, one browser, {args.rounds} rounds of the four pages"
        f"{' (profiled)' if args.profile else ''}:\n"
    )
    print("| page | CPU per switch (median) |\n|---|---|")
    for title, values in cpu_by_page.items():
        print(f"| {title} | {statistics.median(values):.3f} s |")
    print("\n| chromium process | CPU per switch |\n|---|---|")
    for kind in sorted(end_by_process, key=lambda k: start_by_process.get(k, 0.0) - end_by_process[k]):
        used = (end_by_process[kind] - start_by_process.get(kind, 0.0)) / switches
        if used >= 0.001:
            print(f"| {kind} | {used:.3f} s |")
    if profile:
        print("\n| renderer, self time by script | ms per switch |\n|---|---|")
        for script, ms in self_ms_by_script(profile).most_common(15):
            print(f"| {script} | {ms / switches:.1f} |")


if __name__ == "__main__":
    main()
