"""Fixtures for the dashboard tests: a small model zoo built from tests/tiny_models, a live
`streamlit run app.py` server on a free localhost port, and Debian chromium through Playwright.

Import the fixtures into a test module (`from tests.browser_harness import demo_zoo, ...`);
they are kept out of tests/conftest.py on purpose, which belongs to the whole suite.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.pipeline.memo import clear_memo
from engine.pipeline.recipes import method_specs
from engine.settings import REPO_ROOT, get_settings
from tests import tiny_models

log = logging.getLogger(__name__)

ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ZOO_MODELS = REPO_ROOT / "zoo" / "models"
ZOO_DATA = REPO_ROOT / "zoo" / "data"

# Short parallel phrases; py3langid tells these three languages apart on most of them.
PHRASES = {
    "en": [
        "the first of January",
        "twenty one thousand",
        "three hundred euros",
        "the second day of the week",
        "four kilometres per hour",
        "nineteen ninety nine",
        "the fifth of May",
        "eighty seven grams",
    ],
    "es": [
        "el primero de enero",
        "veintiún mil",
        "trescientos euros",
        "el segundo día de la semana",
        "cuatro kilómetros por hora",
        "mil novecientos noventa y nueve",
        "el cinco de mayo",
        "ochenta y siete gramos",
    ],
    "pt": [
        "o primeiro de janeiro",
        "vinte e um mil",
        "trezentos euros",
        "o segundo dia da semana",
        "quatro quilómetros por hora",
        "mil novecentos e noventa e nove",
        "o cinco de maio",
        "oitenta e sete gramas",
    ],
}
DIRECTIONS = ("en-es", "en-pt", "es-en")
EXPERTS = {"expert-en-es": 1, "expert-en-pt": 2, "expert-es-en": 3}  # name -> seed of its task vector


@dataclass(frozen=True)
class DemoZoo:
    models: Path
    data: Path


def build_demo_zoo(folder: Path) -> DemoZoo:
    """A base, three direction experts (base + small noise), a joint model, an incompatible model,
    a pickle-only folder (refused), and dev/devtest JSONL data for three directions."""
    models, data = folder / "models", folder / "data"
    base_dir = tiny_models.save_checkpoint(models / "base", seed=0)
    import transformers

    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    for name, seed in EXPERTS.items():
        tiny_models.save_checkpoint(models / name, base=base, seed=seed, delta_scale=0.02)
    tiny_models.save_checkpoint(models / "joint", base=base, seed=9, delta_scale=0.02)
    tiny_models.save_checkpoint(models / "wide-other", seed=5, hidden_size=48, intermediate_size=96)
    pickle_only = models / "pickle-only"
    pickle_only.mkdir(parents=True)
    (pickle_only / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (pickle_only / "pytorch_model.bin").write_bytes(b"not loaded")
    for split, rows in (("dev", slice(0, 8)), ("devtest", slice(0, 8))):
        for direction in DIRECTIONS:
            src, tgt = direction.split("-")
            folder_ = data / split
            folder_.mkdir(parents=True, exist_ok=True)
            with (folder_ / f"{direction}.jsonl").open("w", encoding="utf-8") as f:
                for s, t in zip(PHRASES[src][rows], PHRASES[tgt][rows]):
                    f.write(
                        json.dumps({"src_lang": src, "tgt_lang": tgt, "source": s, "target": t}, ensure_ascii=False)
                        + "\n"
                    )
    return DemoZoo(models, data)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> DemoZoo:
    """The tiny zoo, built once per test session."""
    return build_demo_zoo(tmp_path_factory.mktemp("tiny-zoo"))


@pytest.fixture
def demo_env(tiny_zoo, isolated_settings, monkeypatch) -> DemoZoo:
    """Settings pointing at the tiny zoo (models and data) and a per-test cache folder."""
    monkeypatch.setenv("MERGESCOPE_MODEL_ROOTS", str(tiny_zoo.models))
    monkeypatch.setenv("MERGESCOPE_DATA_DIR", str(tiny_zoo.data))
    get_settings.cache_clear()
    # Analyses memoised in process by an earlier test would hide this test's empty cache folder.
    clear_memo()
    yield tiny_zoo
    get_settings.cache_clear()


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_file: Path


def start_server(
    models: str | Path,
    data: Path,
    cache_dir: Path,
    log_file: Path,
    timeout_s: float = 90.0,
    extra_env: dict | None = None,
    script: str = "app.py",
) -> Server:
    """`streamlit run app.py` (or another `script` of the repository) on a free port; returns once
    /_stcore/health answers ok. `models` may list several roots separated by os.pathsep. The
    address is left to the repository's .streamlit/config.toml (127.0.0.1), as `make demo` does."""
    port = free_port()
    env = {
        **os.environ,
        "MERGESCOPE_MODEL_ROOTS": str(models),
        "MERGESCOPE_DATA_DIR": str(data),
        "MERGESCOPE_CACHE_DIR": str(cache_dir),
        "MERGESCOPE_DEVICE": "cpu",
        **(extra_env or {}),
    }
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out = log_file.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            script,
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}; see {log_file}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return Server(url, process, log_file)
        except OSError:
            time.sleep(0.3)
    stop_server(Server(url, process, log_file))
    raise RuntimeError(f"streamlit did not become healthy within {timeout_s:.0f}s; see {log_file}")


def stop_server(server: Server) -> None:
    """Stop the server's own process group (it was started in a new session), nothing else."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=5)


def use_real_zoo() -> bool:
    """The browser tests run on the committed demo zoo when it is there, else on the tiny zoo."""
    return (
        ZOO_MODELS.is_dir()
        and any(ZOO_MODELS.rglob("config.json"))
        and ZOO_DATA.is_dir()
        and os.environ.get("MERGESCOPE_TEST_TINY_ZOO") != "1"
    )


@dataclass(frozen=True)
class Dashboard:
    server: Server
    zoo: DemoZoo
    roots: tuple[Path, ...]  # the model roots the server sees: the zoo's, and one with an odd model
    odd_model: str  # label of a checkpoint that cannot be merged with the zoo's (other shapes)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, request):
    """A running dashboard on the zoo (or the tiny zoo) with its own empty cache. A second model
    root holds one checkpoint of other shapes, so an incompatible pick can always be tried."""
    extra_env = {}
    if use_real_zoo():
        zoo = DemoZoo(ZOO_MODELS, ZOO_DATA)
    else:
        zoo = build_demo_zoo(tmp_path_factory.mktemp("browser-zoo"))
        extra_env["MERGESCOPE_MAX_NEW_TOKENS"] = "6"  # random tiny models never end their turn
    odd_root = tmp_path_factory.mktemp("odd-models")
    tiny_models.save_checkpoint(odd_root / "odd-shape", seed=7, hidden_size=48, intermediate_size=96)
    roots = (zoo.models, odd_root)
    cache_dir = tmp_path_factory.mktemp("browser-cache")
    server = start_server(
        os.pathsep.join(map(str, roots)),
        zoo.data,
        cache_dir,
        ARTIFACTS / f"{request.module.__name__}.server.log",
        extra_env=extra_env,
    )
    try:
        yield Dashboard(server, zoo, roots, "odd-shape")
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def browser():
    """Debian chromium, headless, through Playwright's sync API (never `playwright install`)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# ----------------------------------------------------------------- driving the app (tests and bench)

TIMEOUT_MS = 240_000


# JavaScript: true once no script run is asked for or running. The app's root element carries the
# run state from the moment a widget asks for a rerun. Streamlit's status widget, read here before,
# shows "Running" only after a delay: under load a pick then began while the previous pick's run was
# still redrawing the widget, and the click on an Experts option took "Select all" instead (seen in
# 2 of 7 loaded benchmark rounds; the session then merged and scored every checkpoint).
RUN_ENDED = "document.querySelector('[data-testid=\"stApp\"]')?.dataset.testScriptState === 'notRunning'"


# JavaScript: true once a run has drawn something. A page that has just loaded can say "not running"
# before its first run has started.
DRAWN = "document.querySelector('[data-testid=\"stElementContainer\"]') !== null"


def wait_for_app(page, settle_ms: int = 300) -> None:
    """Until the script run finished. `settle_ms` first gives the browser time to send the rerun
    that a just-made change asks for."""
    page.wait_for_timeout(settle_ms)
    page.wait_for_function(f"() => {DRAWN} && {RUN_ENDED}", timeout=TIMEOUT_MS)


PICK_RUN_TIMEOUT_MS = 10_000  # a pick's run starts within a second or two, even under load

# JavaScript: from now on, count the script runs that start (the app root leaves "not running").
COUNT_RUNS = """() => {
    const root = document.querySelector('[data-testid="stApp"]');
    window.__runsObserver?.disconnect();
    window.__runsStarted = 0;
    window.__runsObserver = new MutationObserver(() => {
        if (root.dataset.testScriptState !== 'notRunning') window.__runsStarted++;
    });
    window.__runsObserver.observe(root, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the selectbox or multiselect labelled `label`; after a multiselect pick,
    until the run it starts has ended."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    widget = (
        page.locator('[data-testid="stSelectbox"], [data-testid="stMultiSelect"]')
        .filter(has=page.get_by_text(label, exact=True))
        .first
    )
    multiselect = widget.get_attribute("data-testid") == "stMultiSelect"
    box = widget.locator("input")
    box.click()
    box.fill(option)  # type to filter, as a person would: the dropdown renders only the first options
    # A multiselect's list is headed by "Select all" until the typed text filters it: on a loaded
    # machine a click aimed at an option of the unfiltered list can land on what the filtered one
    # puts there, "Select all" or "Select N matches". (A selectbox has no such entry, and shows
    # every option when the text typed is its current value.)
    page.wait_for_function(
        """wanted => {
            const shown = [...document.querySelectorAll('[role="option"]')].map(o => o.innerText.trim());
            const bulk = t => /^Select (all|\\d+ matches)$/.test(t);
            return shown.includes(wanted) && (!shown.some(bulk) || shown.every(t => t.includes(wanted) || bulk(t)));
        }""",
        arg=option,
        timeout=TIMEOUT_MS,
    )
    if multiselect:
        page.evaluate(COUNT_RUNS)
    page.get_by_role("option", name=option, exact=True).click()
    page.keyboard.press("Escape")
    if multiselect:
        # On a loaded machine the pick's run can start a second after the click, later than
        # wait_for_app's settling pause. The end of that run redraws the widget: a next pick typed
        # before it loses its filter, and its click lands on "Select all" (seen in the benchmark's
        # page log). A selectbox set to its current value starts no run; the callers wait for
        # what a method pick draws (wait_for_recipe). Once under the full suite no start was seen
        # (a run already going may take the change without the state leaving "running"), so a
        # missing start only ends the wait: the callers check what the pick draws.
        try:
            page.wait_for_function("() => window.__runsStarted > 0", timeout=PICK_RUN_TIMEOUT_MS)
        except PlaywrightTimeout:
            log.warning(
                "picking %r in %r: no run was seen to start within %d s", option, label, PICK_RUN_TIMEOUT_MS // 1000
            )
    wait_for_app(page)


def wait_for_recipe(page, method: str) -> None:
    """Until the YAML on screen is the chosen method's (its display name) and the run that drew
    it has ended: a user clicks Merge once the recipe is shown, and a click that lands while
    the method's sliders are still being drawn can be lost."""
    name = next(n for n, spec in method_specs().items() if spec.display_name == method)
    page.wait_for_function(
        "name => [...document.querySelectorAll('[data-testid=\"stCode\"]')]"
        ".some(c => c.innerText.includes('merge_method: ' + name))",
        arg=name,
        timeout=TIMEOUT_MS,
    )
    wait_for_app(page)


def go_to(page, title: str) -> None:
    page.get_by_test_id("stSidebar").get_by_test_id("stPageLink").get_by_text(title, exact=True).click()
    wait_for_app(page)


HEATMAP_IMAGES = ".js-plotly-plot .heatmaplayer .hm image"


def wait_for_plots(page, count: int, selector: str = ".js-plotly-plot") -> None:
    page.wait_for_function(f"() => document.querySelectorAll({selector!r}).length >= {count}", timeout=TIMEOUT_MS)
    page.wait_for_timeout(500)  # let Plotly finish drawing before a screenshot


def heatmap_boxes(page, count: int = 3) -> list[dict]:
    """On-screen boxes of the drawn heatmaps (Plotly draws each heatmap trace as one image), in
    the figure's panel order."""
    wait_for_plots(page, count, HEATMAP_IMAGES)
    images = page.locator(HEATMAP_IMAGES)
    return [images.nth(i).bounding_box() for i in range(images.count())]


def clipped_figure_parts(page) -> list[str]:
    """What of the heatmap figure's labels and colour bars falls outside the figure (the browser
    hides it), onto a heatmap or onto tick labels: a figure drawn with fixed margins must still
    fit them."""
    return page.evaluate(r"""() => {
        const figure = [...document.querySelectorAll('.js-plotly-plot')].find(p => p.querySelector('.hm image'));
        const frame = figure.querySelector('.main-svg').getBoundingClientRect();
        const maps = [...figure.querySelectorAll('.hm image')].map(i => i.getBoundingClientRect());
        const overlaps = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
        const bad = [];
        // Every panel's axis titles (g-xtitle, g-x2title, …) and tick labels; a colour bar's
        // background box is padded and invisible, so its bar, ticks and title count.
        const titles = [...figure.querySelectorAll('g')].filter(g => /^g-[xy]\d*title$/.test(g.getAttribute('class')));
        for (const part of [...titles, ...figure.querySelectorAll('.xtick text, .ytick text, .colorbar > :not(.cbbg)')]) {
            const box = part.getBoundingClientRect();
            if (!box.width) continue;
            const name = `${part.getAttribute('class')} '${part.textContent.slice(0, 40)}'`;
            if (box.left < frame.left || box.right > frame.right || box.top < frame.top || box.bottom > frame.bottom)
                bad.push(`${name} outside the figure`);
            if (part.closest('.colorbar') && maps.some(m => overlaps(box, m))) bad.push(`${name} on a heatmap`);
        }
        // Plotly keeps an axis title inside the figure by moving it, onto the tick labels if need be.
        const ticks = [...figure.querySelectorAll('.xtick text, .ytick text')].map(t => t.getBoundingClientRect());
        for (const title of titles)
            if (ticks.some(t => t.width && overlaps(title.getBoundingClientRect(), t)))
                bad.push(`${title.getAttribute('class')} '${title.textContent}' on its tick labels`);
        return bad;
    }""")
