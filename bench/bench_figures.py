"""Browser time to draw the dashboard's Plotly figures, against the same figures with Plotly's
automatic margins (the baseline, measured in the same run).

    .venv/bin/python bench/bench_figures.py [--layers 9 37] [--repeats 15]

Each figure is built by views/figures.py from synthetic results of the shapes the dashboard
shows (CKA matrices of L layers, a five-system score table, an L-block count matrix), then drawn
with `Plotly.newPlot` in Debian chromium (plotly.js from the plotly package, the same major
version Streamlit bundles) at the dashboard's width, alternately with its baseline. The figure
counts as drawn once Plotly's promise resolves and a layout has run. Prints the median draw time
and writes bench/out/figures.json.

Why the baseline: with automatic margins Plotly draws a figure, measures its colour bars, legend
and tick labels, and, when they need more room than the margins give, draws it again. A
figure with several subplots and colour bars can be drawn two or three times per page view.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import plotly

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing
from engine.cka import CKAMatrix  # noqa: E402
from tests.browser_harness import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from views import figures  # noqa: E402

WIDTH = 1100  # px: the main column of the wide layout at the benchmarks' 1400 px viewport

DRAW = """async ([data, layout, width]) => {
    const box = document.getElementById('figure');
    Plotly.purge(box);
    await new Promise(done => requestAnimationFrame(() => setTimeout(done, 0)));
    const start = performance.now();
    await Plotly.newPlot(box, data, {...layout, width}, {displaylogo: false});
    box.getBoundingClientRect();
    return performance.now() - start;
}"""


def with_auto_margins(spec: dict) -> dict:
    """The figure as Plotly lays it out by default: margins grow to fit what sits in them."""
    spec = copy.deepcopy(spec)
    layout = spec["layout"]
    layout.setdefault("margin", {})["autoexpand"] = True
    for key, axis in layout.items():
        if key.startswith(("xaxis", "yaxis")) and isinstance(axis, dict):
            axis["automargin"] = True
    return spec


def dashboard_figures(layers: int, rng: np.random.Generator) -> dict:
    def cka(labels):
        values = np.clip(0.8 + 0.2 * rng.random((layers, layers)), 0, 1)
        return CKAMatrix(values, False, 64, "cka:linear|n:64|span:source", labels)

    rows = [
        {"system": s, "direction": d, "chrf": 60 * rng.random(), "bleu": 30 * rng.random(), "bleu_signature": "nrefs:1"}
        for s in ("base", "expert-en-bn", "expert-en-de", "joint", "merge")
        for d in ("en-bn", "en-de", "avg")
    ]
    counts = rng.integers(0, 300, (layers - 1, 4))
    return {
        f"Layers: CKA comparison, {layers} layers": figures.cka_comparison(
            cka(("expert-en-bn", "expert-en-de")), cka(("merge", "expert-en-bn"))
        ),
        "Scores: bars": figures.scores_bars(rows, "chrf"),
        f"Neurons: counts, {layers - 1} blocks": figures.count_heatmap(
            counts, ["en", "de", "ru", "bn"], "LAPE neurons"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[9, 37],
        help="CKA matrix sizes: 9 for the demo zoo (8 blocks), 37 for Qwen2.5-3B",
    )
    parser.add_argument("--repeats", type=int, default=15, help="draws per figure and variant (the first two warm up)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rng = np.random.default_rng(0)
    specs = {
        name: json.loads(fig.to_json())
        for layers in args.layers
        for name, fig in dashboard_figures(layers, rng).items()
    }
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    times: dict[str, dict[str, list[float]]] = {name: {"as built": [], "auto margins": []} for name in specs}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.set_content("<html><body><div id='figure'></div></body></html>")
        page.add_script_tag(path=str(plotly_js))
        for _ in range(args.repeats):
            for name, spec in specs.items():  # variants alternate, so a busy moment hits both
                for variant, s in (("as built", spec), ("auto margins", with_auto_margins(spec))):
                    times[name][variant].append(page.evaluate(DRAW, [s["data"], s["layout"], WIDTH]))
        browser.close()

    results = {name: {variant: statistics.median(ms[2:]) for variant, ms in by.items()} for name, by in times.items()}
    out = Path(__file__).resolve().parent / "out" / "figures.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"width_px": WIDTH, "plotly_js": plotly.__version__, "median_ms": results, "raw_ms": times}, indent=1
        )
    )
    print(
        f"| figure | drawn as built | with Plotly's automatic margins | ratio |  (median ms of {args.repeats - 2} draws; {out})"
    )
    print("|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['as built']:.0f} ms | {r['auto margins']:.0f} ms | {r['auto margins'] / r['as built']:.2f}× |"
        )


if __name__ == "__main__":
    main()
