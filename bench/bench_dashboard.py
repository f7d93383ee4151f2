"""Dashboard latency in a real browser (Debian chromium through Playwright) on the demo zoo.

Measures, against `streamlit run app.py` with an empty cache:
  1. cold: from the Merge click to the merge's Scores row, then to the Layers heatmaps
     (navigation clicks included, as a user would do it);
  2. warm: switching pages once everything is cached (median over several switches);
  3. the same with N browser sessions working at once (each merges with its own method, so
     the cold part really merges N recipes);
  4. with --think-s T, people who look before they click: every session waits a random
     0.5-1.5 T (seeded per session, so the sessions drift apart) before each pick, before the
     Merge click (all sessions still click it at the same moment) and before each warm switch;
     the default 0 clicks back to back, all sessions at once, a stress test;
  5. CPU seconds per warm switch, chromium's (every browser process) and the server's, which
     other jobs on the machine distort much less than wall-clock time, and the same two over
     the cold part (from the Merge clicks until every session's heatmaps are shown);
  6. the floor: the same warm switches, same browsers and cores, between the two heading-only
     pages of bench/floor_app.py, i.e. what any Streamlit page switch costs here;
  7. with --remote-users, the N-session rounds as one browser and N-1 users whose browsers run
     on machines of their own: bench/protocol_session.py sends the server what their browsers
     would and draws nothing, so the one browser shares the 2 cores with the server's work for N
     users and not with N-1 more chromiums. The browser's figures are the headline; the others'
     are the server's round trips.

    .venv/bin/python bench/bench_dashboard.py [--sessions 4] [--switches 8] [--think-s T] [--remote-users] [--tiny]
                                              [--torch-threads N]

The browser is told a page is shown by a MutationObserver (see wait_until), not by Playwright's
per-frame polling, which keeps chromium drawing while a page computes. --tiny runs on the tests'
tiny random zoo (when zoo/models is not built yet). Results are printed as ready rows for
BENCHMARKS.md (load average included) and written to bench/out/dashboard.json.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import logging
import os
import random
import shlex
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import psutil
from playwright.sync_api import TimeoutError as PlaywrightTimeout

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.protocol_session import ProtocolSession, Run  # noqa: E402
from engine.pipeline.catalog import checkpoint_label, direction_from_name, discover  # noqa: E402
from engine.pipeline.recipes import method_specs  # noqa: E402
from tests.browser_harness import (  # noqa: E402
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    RUN_ENDED,
    TIMEOUT_MS,
    ZOO_DATA,
    ZOO_MODELS,
    build_demo_zoo,
    choose,
    start_server,
    stop_server,
    wait_for_app,
    wait_for_recipe,
)

log = logging.getLogger("bench_dashboard")
PAGE_TIMEOUT_MS = 120_000
METHODS = ("TIES", "Task Arithmetic", "Linear DARE", "SCE")  # display names: one per concurrent session
METHOD_NAMES = {spec.display_name: name for name, spec in method_specs().items()}  # as a link names them
PAGES = {  # page title -> JavaScript condition that says its content is on screen
    "Scores": "[...document.querySelectorAll('[data-testid=\"stTable\"] tbody th')].some(t => t.innerText.trim() === 'merge')",
    "Layers": "document.querySelectorAll('.js-plotly-plot .heatmaplayer .hm image').length >= 3",
    "Samples": "[...document.querySelectorAll('[data-testid=\"stHtml\"] thead')].some(t => t.innerText.includes('merge · output'))",
    "Models & merge": "document.querySelector('[data-testid=\"stCode\"]') !== null",
}
PAGE_PATHS = {"Scores": "scores", "Layers": "layers", "Samples": "samples", "Models & merge": ""}
WARM_ORDER = ("Scores", "Layers", "Models & merge", "Samples")  # after Samples: never the page already shown


def remote_page_shown(run: Run, title: str) -> bool:
    """PAGES' conditions, read from the messages of a protocol session's run."""
    content = {
        "Scores": run.has("table"),
        "Layers": run.has("plotly_chart"),
        "Samples": any("merge · output" in t for t in run.texts("html")),
        "Models & merge": run.has("code"),
    }
    return title in run.texts("heading") and content.get(title, True) and not run.errors


FLOOR_APP = "bench/floor_app.py"

MERGE_SHOWN = (
    "[...document.querySelectorAll('[data-testid=\"stAlertContentSuccess\"]')]"
    ".some(e => e.textContent.includes('Merge ready'))"
    " || document.querySelector('[data-testid=\"stAlertContentError\"]') !== null"
)


def wait_until(page, condition: str, timeout_ms: int = PAGE_TIMEOUT_MS) -> None:
    """Until the JavaScript expression `condition` holds, tested after each change of the page.

    Playwright's own waits test on every animation frame, which keeps chromium producing frames
    (and here forcing a layout for innerText) the whole time a page computes: in a 4-session cold
    round that was about 5 of chromium's 23 CPU-seconds, taken from the 2 cores the server computes
    on. A user's browser does no such thing, so this benchmark waits by MutationObserver."""
    page.evaluate(
        f"""() => new Promise((resolve, reject) => {{
            const met = () => {{ try {{ return Boolean({condition}); }} catch (e) {{ return false; }} }};
            if (met()) return resolve();
            const stop = () => {{ observer.disconnect(); clearTimeout(timer); }};
            const observer = new MutationObserver(() => {{ if (met()) {{ stop(); resolve(); }} }});
            const timer = setTimeout(() => {{ stop(); reject(new Error('not met in {timeout_ms} ms: ' + {condition!r})); }},
                                     {timeout_ms});
            observer.observe(document, {{subtree: true, childList: true, characterData: true, attributes: true}});
        }})"""
    )


def open_page(page, title: str, content: str | None = None) -> float:
    """Click a page in the sidebar; seconds until its heading and content (a JavaScript condition,
    by default the dashboard page's own from PAGES) are shown and the run ended."""
    content = PAGES[title] if content is None else content
    shown = f"[...document.querySelectorAll('h1')].some(h => h.innerText.trim() === {title!r}) && ({content})"
    start = time.perf_counter()
    page.get_by_test_id("stSidebar").get_by_test_id("stPageLink").get_by_text(title, exact=True).click()
    wait_until(page, f"({shown}) && {RUN_ENDED}")
    return time.perf_counter() - start


def en_x_experts(roots) -> list[str]:
    found = discover(roots)
    labels = [checkpoint_label(c, roots) for c in found.checkpoints]
    return sorted(l for l in labels if (d := direction_from_name(l)) and d.startswith("en-"))[:2]


def chromium_cpu_by_process() -> dict[str, float]:
    """CPU seconds (user + system) of the chromium processes this benchmark started, by process
    type (renderer, gpu-process, ...; "browser" for the main one)."""
    totals: collections.Counter[str] = collections.Counter()
    for proc in psutil.Process().children(recursive=True):
        try:
            if "chrom" not in proc.name().lower():
                continue
            args, times = proc.cmdline(), proc.cpu_times()
        except psutil.Error:  # a renderer that just exited
            continue
        kind = next((a.split("=", 1)[1] for a in args if a.startswith("--type=")), "browser")
        totals[kind] += times.user + times.system
    return totals


class CpuMeter:
    """CPU seconds (user + system) of the server's process tree and of every chromium process
    this benchmark started, between `start()` and `stop()`."""

    def __init__(self, server_pid: int):
        self.server = psutil.Process(server_pid)
        self.start_s = self.stop_s = (0.0, 0.0)

    def read(self) -> tuple[float, float]:
        server = 0.0
        for p in [self.server, *self.server.children(recursive=True)]:
            try:
                t = p.cpu_times()
                server += t.user + t.system
            except psutil.Error:  # a worker that just exited
                pass
        return sum(chromium_cpu_by_process().values()), server

    def start(self) -> None:
        self.start_s = self.read()

    def stop(self) -> None:
        self.stop_s = self.read()

    def used(self) -> tuple[float, float]:
        """(chromium, server) CPU seconds between start and stop."""
        return self.stop_s[0] - self.start_s[0], self.stop_s[1] - self.start_s[1]


# What the page saw, timed in ms since it loaded: each click (the element's text and the first
# options of an open dropdown), each input, each change of the script's run state. Written next to
# a failed session's screenshot: a pick that drifted says what was under the click.
PAGE_EVENTS = """(() => {
    const events = window.__benchEvents = [];
    const at = () => Math.round(performance.now());
    const options = () => [...document.querySelectorAll('[role="option"]')].slice(0, 3).map(o => o.innerText.trim());
    document.addEventListener('click', e => events.push([at(), 'click', (e.target.innerText || '').trim().slice(0, 40),
                                                         options().join(' | ')]), true);
    document.addEventListener('input', e => events.push([at(), 'input', e.target.value]), true);
    new MutationObserver(changes => changes.forEach(c => events.push([at(), 'run', c.target.getAttribute(c.attributeName)])))
        .observe(document, {subtree: true, attributes: true, attributeFilter: ['data-test-script-state']});
})()"""


def in_browser(name: str, body: Callable, out: dict, barriers: dict):
    """`body(page)` in a browser of its own (Playwright's sync API is per thread)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.add_init_script(PAGE_EVENTS)
        start, links = time.perf_counter(), []  # every link the session showed, timed: when a view changed

        def record(frame):
            if frame == page.main_frame:
                links.append(f"{time.perf_counter() - start:7.2f} s  {urllib.parse.unquote(frame.url)}")

        page.on("framenavigated", record)
        try:
            body(page)
        except Exception as err:  # keep the other sessions' figures; say what this one saw
            out["error"] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
            stem = ARTIFACTS / f"bench_session_{name.replace(' ', '_')}_error"
            page.screenshot(path=f"{stem}.png")
            Path(f"{stem}_links.txt").write_text("\n".join(links) + "\n")
            events = page.evaluate("() => window.__benchEvents || []")
            Path(f"{stem}_events.txt").write_text("\n".join(" ".join(map(str, e)) for e in events) + "\n")
            log.error("session %s failed: %s (screenshot, links and page events: %s*)", name, out["error"], stem)
            for barrier in barriers.values():
                barrier.abort()  # the other sessions must not wait for this one
        browser.close()


def click_merge(page, attempts: int = 3) -> int:
    """Click Merge until the link names the merge (written before the merge is computed); the
    number of clicks it took. On a loaded machine a click that lands while Streamlit is still
    settling a rerun can be dropped; the retries keep the round alive and are counted in the
    cold time."""
    for clicks in range(1, attempts + 1):
        page.get_by_role("button", name="Merge", exact=True).click()
        try:
            page.wait_for_url(lambda u: "merged=" in u, timeout=15_000)
            return clicks
        except PlaywrightTimeout:
            log.warning("Merge click %d was not taken; clicking again", clicks)
    raise RuntimeError(f"the Merge button did not react to {attempts} clicks")


def check_view(page, experts: list[str], when: str) -> None:
    """The view in the link holds the picked experts, the joint model (the default "Also
    compare") and no chosen directions. Under load a pick once landed on the multiselect's
    "Select all" and the session scored every checkpoint on every direction: a drifted view fails
    the session instead of timing that work."""
    view = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
    drift = {
        key: view.get(key)
        for key, wanted in (("experts", [",".join(experts)]), ("extra_systems", ["joint"]), ("directions", None))
        if view.get(key) != wanted
    }
    if drift:
        raise RuntimeError(f"the view drifted {when}: {drift}")


def _session(page, url, experts, method, switches, think, out, barriers, done: threading.Event) -> None:
    """One user: pick, merge, Scores, Layers (cold), then switch pages (warm)."""
    page.goto(url)
    wait_for_app(page)
    for name in experts:
        time.sleep(think())
        choose(page, "Experts", name)
    time.sleep(think())
    choose(page, "Method", method)
    wait_for_recipe(page, method)
    check_view(page, experts, "while picking")
    time.sleep(think())  # reading the recipe
    barriers["merge"].wait()  # every session clicks Merge at the same moment, and the cold CPU meter starts
    start = time.perf_counter()
    out["merge_clicks"] = click_merge(page)
    # A failed merge shows its error on the page: report it rather than wait out the timeout.
    wait_until(page, f"({MERGE_SHOWN}) && {RUN_ENDED}", TIMEOUT_MS)
    if page.get_by_test_id("stAlertContentError").count():
        raise RuntimeError(
            f"the merge failed on the page: {page.get_by_test_id('stAlertContentError').first.inner_text()}"
        )
    merged = time.perf_counter() - start
    scores = open_page(page, "Scores")
    layers = open_page(page, "Layers")
    cold = time.perf_counter() - start
    check_view(page, experts, "in the cold part")
    barriers["cold end"].wait()  # the cold CPU meter stops when every session's heatmaps are shown
    open_page(page, "Samples")  # the first visit computes translations the table did not need
    out.update(method=method, merge_s=merged, scores_s=scores, layers_s=layers, cold_s=cold, warm_s=[])
    log.info("%s: cold %.1f s (merge %.1f s, Scores %.1f s, Layers %.1f s)", method, cold, merged, scores, layers)
    barriers["warm start"].wait()  # the warm switches of all sessions overlap, and the CPU meter starts
    for i in range(switches):
        time.sleep(think())
        out["warm_s"].append(open_page(page, WARM_ORDER[i % len(WARM_ORDER)]))
        log.info("%s: %s in %.2f s", method, WARM_ORDER[i % len(WARM_ORDER)], out["warm_s"][-1])
    done.set()
    barriers["warm end"].wait()


def _floor_session(page, url, switches, think, out, barriers, done: threading.Event) -> None:
    """Switch between the floor app's two heading-only pages, in the order its sidebar lists them."""
    page.goto(url)
    wait_for_app(page)
    links = page.get_by_test_id("stSidebar").get_by_test_id("stPageLink")
    links.nth(1).wait_for()  # the run may have drawn only the first link yet
    titles = [t.strip() for t in links.all_inner_texts()]
    out["warm_s"] = []
    barriers["warm start"].wait()
    for i in range(switches):
        time.sleep(think())
        out["warm_s"].append(open_page(page, titles[(i + 1) % 2], content="true"))  # the app opens on the first
    done.set()
    barriers["warm end"].wait()


def open_remote(session: ProtocolSession, title: str, path: str | None = None) -> float:
    """A protocol session's page switch: seconds from request to the run's end, once its content is checked."""
    run = session.open(PAGE_PATHS[title] if path is None else path)
    if not remote_page_shown(run, title):
        raise RuntimeError(f"{title} did not show its content: {run.errors or sorted({k for k, _ in run.elements})}")
    return run.seconds


def _remote_session(
    session: ProtocolSession, method, switches, think, out, barriers, until: threading.Event, cycle_s: float
) -> None:
    """_session for a user whose browser is elsewhere: the same runs in the same order. The picks
    come in the first run's query string."""
    open_remote(session, "Models & merge")
    barriers["merge"].wait()
    start = time.perf_counter()
    merge = session.click("Merge")
    if not any(t.startswith("Merge ready") for t in merge.texts("alert")):
        raise RuntimeError(f"the merge failed: {merge.errors or merge.texts('alert')}")
    merged = time.perf_counter() - start
    scores = open_remote(session, "Scores")
    layers = open_remote(session, "Layers")
    cold = time.perf_counter() - start
    barriers["cold end"].wait()
    open_remote(session, "Samples")
    out.update(
        method=method,
        merge_s=merged,
        scores_s=scores,
        layers_s=layers,
        cold_s=cold,
        warm_s=[],
        remote=True,
        merge_clicks=1,
    )
    remote_warm_switches(
        session, [(t, PAGE_PATHS[t]) for t in WARM_ORDER], switches, think, out, barriers, until, cycle_s
    )


def _remote_floor_session(
    session: ProtocolSession, switches, think, out, barriers, until: threading.Event, cycle_s: float
) -> None:
    """_floor_session over the protocol; the floor app's url paths are its titles in lower case."""
    titles = session.open("").texts("page_link")
    out.update(warm_s=[], remote=True)
    pages = [(t, t.lower()) for t in titles[1:] + titles[:1]]  # the app opens on the first
    remote_warm_switches(session, pages, switches, think, out, barriers, until, cycle_s)


def remote_warm_switches(
    session: ProtocolSession,
    pages: list[tuple[str, str]],
    switches,
    think,
    out,
    barriers,
    until: threading.Event,
    cycle_s: float,
) -> None:
    """Open `pages` (title, url path) in turn: at least `switches` times, and on until the browser
    has made its switches (or failed), so the load lasts as long as the switches measured there.
    The next click comes no sooner than `cycle_s` after the last: one browser's median switch on
    this machine alone, about what the page takes to draw in a browser of its own."""
    barriers["warm start"].wait()
    i = 0
    while i < switches or not (until.is_set() or barriers["warm end"].broken):
        time.sleep(think())
        title, path = pages[i % len(pages)]
        out["warm_s"].append(open_remote(session, title, path))
        time.sleep(max(0.0, cycle_s - out["warm_s"][-1]))
        i += 1
    barriers["warm end"].wait()


def in_protocol_session(name: str, url: str, view: str, body: Callable, out: dict, barriers: dict) -> None:
    """`body(session)` over a protocol session of its own; a failure is reported as in_browser's."""
    try:
        with ProtocolSession(url, view) as session:
            body(session)
    except Exception as err:
        out["error"] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        log.error("protocol session %s failed: %s", name, out["error"])
        for barrier in barriers.values():
            barrier.abort()


def run(
    url: str,
    experts: list[str],
    sessions: int,
    switches: int,
    think_s: float,
    cold: CpuMeter,
    warm: CpuMeter,
    floor: bool = False,
    remote_cycle_s: float | None = None,
) -> list[dict]:
    """`sessions` browsers at once: dashboard users (merge, then warm switches) or, with `floor`,
    switches between the floor app's pages. With `remote_cycle_s`, every session but the first is a
    protocol session whose warm switches come no faster than one per `remote_cycle_s`."""
    results = [{} for _ in range(sessions)]
    barriers = {
        "merge": threading.Barrier(sessions, action=cold.start),
        "cold end": threading.Barrier(sessions, action=cold.stop),
        "warm start": threading.Barrier(sessions, action=warm.start),
        "warm end": threading.Barrier(sessions, action=warm.stop),
    }
    pauses = [random.Random(i) for i in range(sessions)]
    browser_done = threading.Event()  # with protocol sessions: the one browser made its warm switches
    threads = []
    for i in range(sessions):
        think = functools.partial(lambda r: think_s * r.uniform(0.5, 1.5), pauses[i])
        if remote_cycle_s is not None and i > 0:
            method = METHODS[i % len(METHODS)]
            view = urllib.parse.urlencode({"experts": ",".join(experts), "method": METHOD_NAMES[method]})
            body = (
                functools.partial(
                    _remote_floor_session,
                    switches=switches,
                    think=think,
                    out=results[i],
                    barriers=barriers,
                    until=browser_done,
                    cycle_s=remote_cycle_s,
                )
                if floor
                else functools.partial(
                    _remote_session,
                    method=method,
                    switches=switches,
                    think=think,
                    out=results[i],
                    barriers=barriers,
                    until=browser_done,
                    cycle_s=remote_cycle_s,
                )
            )
            threads.append(
                threading.Thread(
                    target=in_protocol_session,
                    args=(f"remote {i}", url, "" if floor else view, body, results[i], barriers),
                )
            )
            continue
        if floor:
            name, body = (
                f"floor {i}",
                functools.partial(
                    _floor_session,
                    url=url,
                    switches=switches,
                    think=think,
                    out=results[i],
                    barriers=barriers,
                    done=browser_done,
                ),
            )
        else:
            name = METHODS[i % len(METHODS)]
            body = functools.partial(
                _session,
                url=url,
                experts=experts,
                method=name,
                switches=switches,
                think=think,
                out=results[i],
                barriers=barriers,
                done=browser_done,
            )
        threads.append(threading.Thread(target=in_browser, args=(name, body, results[i], barriers)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def p90(values: list[float]) -> float:
    """The 90th percentile, interpolated between the two nearest switches."""
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


def summarise(label: str, results: list[dict], cold: CpuMeter, warm: CpuMeter, load: tuple[float, float]) -> dict:
    """The browsers' figures; protocol sessions' (--remote-users) apart, as the server's round trips.
    Chromium's CPU is per browser switch, the server's per switch of any session."""
    failed = [r for r in results if "error" in r]
    results = [r for r in results if "cold_s" in r]
    browsers, remote = [r for r in results if not r.get("remote")], [r for r in results if r.get("remote")]
    switches = [w for r in browsers for w in r["warm_s"]]
    if not switches:  # no browser session got as far as its warm switches
        return {"label": label, "sessions": 0, "load_average": load, "failed": failed}
    chromium_s, server_s = warm.used()
    cold_chromium_s, cold_server_s = cold.used()
    summary = {
        "label": label,
        "sessions": len(results),
        "browsers": len(browsers),
        "load_average": load,
        "cpu_per_switch_chromium_s": chromium_s / len(switches),
        "cpu_per_switch_server_s": server_s / sum(len(r["warm_s"]) for r in results),
        "cpu_cold_chromium_s": cold_chromium_s,
        "cpu_cold_server_s": cold_server_s,
        "cold_s_median": statistics.median(r["cold_s"] for r in browsers),
        "cold_s_max": max(r["cold_s"] for r in browsers),
        "merge_s_max": max(r["merge_s"] for r in browsers),
        "merge_clicks": sum(r["merge_clicks"] for r in results),
        "scores_s_max": max(r["scores_s"] for r in browsers),
        "layers_s_max": max(r["layers_s"] for r in browsers),
        "warm_s_median": statistics.median(switches),
        "warm_s_p90": p90(switches),
        "runs": results,
        "failed": failed,
    }
    if remote_switches := [w for r in remote for w in r["warm_s"]]:
        summary.update(
            remote_cold_s_median=statistics.median(r["cold_s"] for r in remote),
            remote_cold_s_max=max(r["cold_s"] for r in remote),
            remote_warm_s_median=statistics.median(remote_switches),
            remote_warm_s_p90=p90(remote_switches),
            remote_switches=len(remote_switches),
        )
    return summary


def summarise_floor(results: list[dict], warm: CpuMeter) -> dict:
    done = [r for r in results if "error" not in r]
    switches = [w for r in done if not r.get("remote") for w in r["warm_s"]]
    if not switches:
        return {"sessions": 0, "failed": [r["error"] for r in results if "error" in r]}
    chromium_s, server_s = warm.used()
    return {
        "sessions": len(done),
        "browsers": sum(not r.get("remote") for r in done),
        "warm_s_median": statistics.median(switches),
        "warm_s_p90": p90(switches),
        "cpu_per_switch_chromium_s": chromium_s / len(switches),
        "cpu_per_switch_server_s": server_s / sum(len(r["warm_s"]) for r in done),
    }


def remote_cycle(args, earlier: list[dict]) -> float | None:
    """With --remote-users, after the 1-session round: its median warm switch, the pace of the
    protocol sessions (see _remote_session)."""
    if not args.remote_users or not earlier:
        return None
    if not earlier[0]["sessions"]:
        raise RuntimeError("the 1-session round failed, so there is no pace for the protocol sessions")
    return earlier[0]["warm_s_median"]


def sessions_cell(summary: dict) -> str:
    remote = summary["sessions"] - summary["browsers"]
    return (
        f"{summary['sessions']} ({summary['browsers']} browser, {remote} elsewhere)"
        if remote
        else str(summary["sessions"])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--switches", type=int, default=8)
    parser.add_argument(
        "--think-s",
        type=float,
        default=0.0,
        help="mean pause before each click, as a person reading the page (0: back to back)",
    )
    parser.add_argument(
        "--remote-users",
        action="store_true",
        help="in the multi-session rounds, one browser and the other users over the protocol alone, "
        "as if their browsers ran elsewhere",
    )
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random zoo instead of zoo/")
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="torch threads per job in the server (OMP_NUM_THREADS); default: the dashboard's own "
        "choice, a quarter of the cores (pass the core count to see torch's default)",
    )
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
    if args.torch_threads:
        extra_env["OMP_NUM_THREADS"] = str(args.torch_threads)
        label += f", {args.torch_threads} torch thread(s) per job"
    if args.think_s:
        label += f", a {0.5 * args.think_s:g}-{1.5 * args.think_s:g} s pause before each click"
    experts = en_x_experts([models])
    summaries = []
    for sessions in sorted({1, args.sessions}):
        # A fresh server and an empty cache per round: the cold figures are really cold.
        server = start_server(
            models, data, work / f"cache-{sessions}", ARTIFACTS / f"bench_dashboard_{sessions}.log", extra_env=extra_env
        )
        try:
            cold, warm = CpuMeter(server.process.pid), CpuMeter(server.process.pid)
            load_before = os.getloadavg()[0]
            results = run(
                server.url,
                experts,
                sessions,
                args.switches,
                args.think_s,
                cold,
                warm,
                remote_cycle_s=remote_cycle(args, summaries),
            )
            summaries.append(summarise(label, results, cold, warm, (load_before, os.getloadavg()[0])))
        finally:
            stop_server(server)
    floors = []
    for sessions in sorted({1, args.sessions}):
        server = start_server(
            models, data, work / "cache-floor", ARTIFACTS / f"bench_floor_{sessions}.log", script=FLOOR_APP
        )
        try:
            warm = CpuMeter(server.process.pid)
            results = run(
                server.url,
                [],
                sessions,
                args.switches,
                args.think_s,
                CpuMeter(server.process.pid),
                warm,
                floor=True,
                remote_cycle_s=remote_cycle(args, floors),
            )
            floors.append(summarise_floor(results, warm))
        finally:
            stop_server(server)
    out = Path(__file__).resolve().parent / "out" / "dashboard.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"experts": experts, "cpus": os.cpu_count(), "summaries": summaries, "floor": floors}, indent=1)
    )
    command = shlex.join([".venv/bin/python", "bench/bench_dashboard.py", *sys.argv[1:]])
    print(f"Rows for BENCHMARKS.md (`{command}`; experts {', '.join(experts)}; raw figures in {out}):\n")
    print(
        "| machine | zoo | sessions | Merge click → Scores row + Layers heatmaps (median / max) | merge alone (max) | "
        "page switch, warm (median / p90) | CPU per warm switch: chromium + server |"
    )
    print("|---|---|---|---|---|---|---|")
    for s in summaries:
        machine = f"CPU, {os.cpu_count()} cores, load average {s['load_average'][0]:.1f} → {s['load_average'][1]:.1f}"
        if not s["sessions"]:
            print(f"| {machine} | {s['label']} | every session failed: {s['failed']} |")
            continue
        print(
            f"| {machine} | {s['label']} | {sessions_cell(s)} | {s['cold_s_median']:.1f} s / {s['cold_s_max']:.1f} s | "
            f"≤ {s['merge_s_max']:.1f} s | {s['warm_s_median']:.2f} s / {s['warm_s_p90']:.2f} s | "
            f"{s['cpu_per_switch_chromium_s']:.2f} s + {s['cpu_per_switch_server_s']:.2f} s |"
            + (f" {len(s['failed'])} session(s) failed: {s['failed']}" if s["failed"] else "")
            + (
                f" ({s['merge_clicks']} Merge clicks for {s['sessions']} merges)"
                if s["merge_clicks"] > s["sessions"]
                else ""
            )
        )
    print(f"\nThe floor, {FLOOR_APP} (two heading-only pages), same browsers and switches:\n")
    print("| sessions | page switch, warm (median / p90) | CPU per switch: chromium + server |")
    print("|---|---|---|")
    for f in floors:
        if not f["sessions"]:
            print(f"| – | every session failed: {f['failed']} | |")
            continue
        print(
            f"| {sessions_cell(f)} | {f['warm_s_median']:.2f} s / {f['warm_s_p90']:.2f} s | "
            f"{f['cpu_per_switch_chromium_s']:.2f} s + {f['cpu_per_switch_server_s']:.2f} s |"
        )
    for s in summaries:
        if "remote_warm_s_median" in s:
            print(
                f"\nThe {s['sessions'] - s['browsers']} protocol sessions' round trips (request to the run's end): cold "
                f"{s['remote_cold_s_median']:.1f} s / {s['remote_cold_s_max']:.1f} s (median / max), "
                f"{s['remote_switches']} warm switches, one per {summaries[0]['warm_s_median']:.2f} s at most, "
                f"while the browser made its {args.switches}: "
                f"{s['remote_warm_s_median']:.2f} s / {s['remote_warm_s_p90']:.2f} s (median / p90)"
            )
    print(
        "\nCPU from the Merge clicks until every session showed its heatmaps (chromium + server): "
        + "; ".join(
            f"{s['sessions']} session(s) {s['cpu_cold_chromium_s']:.1f} s + {s['cpu_cold_server_s']:.1f} s"
            for s in summaries
            if s["sessions"]
        )
    )


if __name__ == "__main__":
    main()
