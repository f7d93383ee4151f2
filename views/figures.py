"""Plotly figures and tables built from engine results. Arranging only: no analysis happens here.

Every figure carries the signature of the settings that produced it in its subtitle (the
sacreBLEU idea), so a downloaded PNG still says what it shows.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.interference.profile import MEASURES

CKA_SCALE = "Viridis"
DIFF_SCALE = "RdBu"
SCORE_COLUMNS = {
    "bleu": "BLEU",
    "chrf": "chrF",
    "chrfpp": "chrF++",
    "off_target": "off-target",
    "off_target_ref": "off-target vs ref. language",
}


def _title(text: str, signature: str = "") -> dict:
    sub = f"<br><sup>{signature}</sup>" if signature else ""
    return {"text": f"{text}{sub}", "x": 0.0, "xanchor": "left"}


# ----------------------------------------------------------------- scores


def scores_table(rows: Sequence[dict]) -> pd.DataFrame:
    """The paper-style table, long form: one row per system and direction (plus 'avg')."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    keep = ["system", "direction", "n", *SCORE_COLUMNS]
    frame = frame[keep].rename(columns=SCORE_COLUMNS)
    for col in ("off-target", "off-target vs ref. language"):
        frame[col] = 100 * frame[col]  # shares -> percent, as the paper prints them
    return frame.round(2)


def scores_wide(rows: Sequence[dict], metric: str) -> pd.DataFrame:
    """Systems × directions for one metric, systems in the order given."""
    frame = pd.DataFrame(rows)
    order = list(dict.fromkeys(frame["system"]))
    wide = frame.pivot(index="system", columns="direction", values=metric).reindex(order)
    wide = wide[
        [c for c in wide.columns if c != "avg"] + (["avg"] if "avg" in wide.columns else [])
    ]  # as the paper: avg last
    scale = 100 if metric.startswith("off_target") else 1
    return (wide * scale).round(2)


def scores_bars(rows: Sequence[dict], metric: str) -> go.Figure:
    """One bar per system in each direction (avg last)."""
    frame = pd.DataFrame(rows)
    scale = 100 if metric.startswith("off_target") else 1
    fig = go.Figure()
    for system, part in frame.groupby("system", sort=False):
        fig.add_bar(
            name=system,
            x=part["direction"],
            y=part[metric] * scale,
            hovertemplate=f"{system}<br>%{{x}}: %{{y:.2f}}<extra></extra>",
        )
    unit = " (%)" if scale == 100 else ""
    signatures = sorted({s for s in frame.get("bleu_signature", []) if isinstance(s, str) and s})
    fig.update_layout(
        barmode="group",
        title=_title(
            f"{SCORE_COLUMNS.get(metric, metric)}{unit} per direction",
            signatures[0] if signatures and metric == "bleu" else "",
        ),
        yaxis_title=SCORE_COLUMNS.get(metric, metric) + unit,
        legend_title="system",
        height=420,
    )
    return fig


def sweep_figure(rows: Sequence[dict], metric: str) -> go.Figure:
    """Score against one merge parameter, one line per direction and the average (thick)."""
    frame = pd.DataFrame(rows)
    scale = 100 if metric.startswith("off_target") else 1
    param, method = frame["param"].iloc[0], frame["method"].iloc[0]
    fig = go.Figure()
    for direction, part in frame.groupby("direction", sort=False):
        fig.add_scatter(
            x=part["value"],
            y=part[metric] * scale,
            mode="lines+markers",
            name=direction,
            line={"width": 4 if direction == "avg" else 1.5},
            hovertemplate=f"{direction}<br>{param}=%{{x}}: %{{y:.2f}}<extra></extra>",
        )
    unit = " (%)" if scale == 100 else ""
    fig.update_layout(
        title=_title(f"{method}: {SCORE_COLUMNS.get(metric, metric)}{unit} against {param}"),
        xaxis_title=param,
        yaxis_title=SCORE_COLUMNS.get(metric, metric) + unit,
        height=400,
    )
    return fig


# ----------------------------------------------------------------- layers


def _add_cka_map(
    fig: go.Figure, values: np.ndarray, row_label: str, col_label: str, coloraxis: str, row: int, col: int, x_axis: str
) -> None:
    """An L × L CKA matrix into one panel, square cells, layer 0 (the embedding output) at the top
    left; layer l is the output of block l. `x_axis` names the panel's x axis for the aspect lock."""
    rows, cols = values.shape
    fig.add_trace(
        go.Heatmap(
            z=values,
            x=list(range(cols)),
            y=list(range(rows)),
            coloraxis=coloraxis,
            hovertemplate=f"{row_label} layer %{{y}}<br>{col_label} layer %{{x}}<br>value %{{z:.4f}}<extra></extra>",
        ),
        row=row,
        col=col,
    )
    fig.update_xaxes(title=f"{col_label} layer", dtick=max(1, cols // 12), constrain="domain", row=row, col=col)
    fig.update_yaxes(
        title=f"{row_label} layer", dtick=max(1, rows // 12), autorange="reversed", scaleanchor=x_axis, row=row, col=col
    )


def cka_comparison(left, right) -> go.Figure:
    """Two CKAMatrix results side by side on one colour scale, left − right below them when their
    shapes agree, and the per-layer curves (the diagonals of square matrices).

    One figure with four panels rather than four figures: the browser lays out and draws each
    Plotly figure separately, and four cost a page switch about twice the chromium CPU of one.
    """
    pairs = [f"{m.labels[0]} vs {m.labels[1]}" for m in (left, right)]
    same_shape = left.values.shape == right.values.shape
    fig = make_subplots(
        rows=2,
        cols=2,
        horizontal_spacing=0.16,
        vertical_spacing=0.14,
        subplot_titles=[
            *pairs,
            "Difference (left − right)" if same_shape else "No difference map: the pairs differ in depth",
            "CKA per layer (0 = embeddings)",
        ],
    )
    finite = np.concatenate([left.values[np.isfinite(left.values)], right.values[np.isfinite(right.values)]])
    # One scale for both maps, from the lower of their minima (to 0.05) up to 1: trained models sit
    # mostly above 0.8, and a 0..1 scale would hide the differences the comparison is about.
    zmin = float(np.floor(min(finite.min(), 1.0) * 20) / 20) if finite.size else 0.0
    for col, m in ((1, left), (2, right)):
        _add_cka_map(fig, m.values, *m.labels, "coloraxis", row=1, col=col, x_axis=f"x{col}")
    colorbar = {"len": 0.42, "y": 0.79, "thickness": 14}
    fig.update_layout(
        coloraxis={
            "colorscale": CKA_SCALE,
            "cmin": zmin,
            "cmax": 1.0,
            "colorbar": {**colorbar, "title": "CKA", "x": 1.0},
        }
    )
    if same_shape:
        diff = left.values - right.values
        bound = float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1.0
        bound = bound or 1e-6
        _add_cka_map(fig, diff, "row", "column", "coloraxis2", row=2, col=1, x_axis="x3")
        fig.update_layout(
            coloraxis2={
                "colorscale": DIFF_SCALE,
                "cmin": -bound,
                "cmax": bound,
                "colorbar": {**colorbar, "title": "Δ", "x": 0.43, "y": 0.21},
            }
        )
    for m, name in zip((left, right), pairs):
        add_cka_curve(fig, m, name, row=2, col=2)
    fig.update_xaxes(title="layer", row=2, col=2)
    fig.update_yaxes(title="CKA", range=[0, 1.02], row=2, col=2)
    # Fixed margins that hold the colour bars and axis titles: with automatic ones Plotly draws the
    # figure, finds its margins too small, and draws it again (1.7-2.2x the browser time to show
    # this figure, bench/bench_figures.py).
    fig.update_xaxes(automargin=False)
    fig.update_yaxes(automargin=False)
    fig.update_layout(
        title=_title("CKA", left.signature),
        height=920,
        margin={"l": 60, "r": 80, "t": 90, "b": 50, "autoexpand": False},
        legend={"x": 0.6, "y": 0.0, "yanchor": "bottom", "bgcolor": "rgba(255,255,255,0.7)"},
    )
    return fig


# ----------------------------------------------------------------- neurons


def count_heatmap(counts: np.ndarray, languages: Sequence[str], title: str, signature: str = "") -> go.Figure:
    """Layers × languages count matrix, each cell annotated with its count."""
    counts = np.asarray(counts)
    fig = go.Figure(
        go.Heatmap(
            z=counts,
            x=list(languages),
            y=[f"{l + 1}" for l in range(counts.shape[0])],
            colorscale="Blues",
            text=counts,
            texttemplate="%{text}",
            colorbar={"title": "neurons"},
            hovertemplate="block %{y}, %{x}: %{z} neurons<extra></extra>",
        )
    )
    fig.update_layout(title=_title(title, signature), height=max(320, 28 * counts.shape[0] + 160), margin={"t": 110})
    fig.update_xaxes(side="top")  # language codes label themselves; an axis title would hit the figure title
    fig.update_yaxes(title="block", autorange="reversed", dtick=1)
    return fig


def layer_histograms(
    edges: np.ndarray, counts: Sequence[np.ndarray], names: Sequence[str], title: str, x_title: str
) -> go.Figure:
    """Overlaid histograms (one per model) of one layer from precomputed bin counts."""
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    for name, c in zip(names, counts):
        fig.add_bar(
            x=centres,
            y=c,
            name=name,
            width=float(edges[1] - edges[0]),
            opacity=0.6,
            hovertemplate=f"{name}<br>{x_title} %{{x:.3f}}: %{{y}} neurons<extra></extra>",
        )
    fig.update_layout(barmode="overlay", title=_title(title), xaxis_title=x_title, yaxis_title="neurons", height=340)
    return fig


def selection_comparison(comparison, title: str) -> go.Figure:
    """Per block: neurons gained and lost by the fine-tune (bars) and Jaccard overlap (line)."""
    blocks = list(range(1, len(comparison.base) + 1))
    fig = go.Figure()
    fig.add_bar(x=blocks, y=comparison.gained, name="gained", marker_color="#2ca02c")
    fig.add_bar(
        x=blocks,
        y=-np.asarray(comparison.lost),
        name="lost",
        marker_color="#d62728",
        customdata=comparison.lost,
        hovertemplate="block %{x}: lost %{customdata}<extra></extra>",
    )
    fig.add_scatter(x=blocks, y=comparison.jaccard, name="Jaccard", yaxis="y2", mode="lines+markers")
    fig.update_layout(
        barmode="relative",
        title=_title(title, comparison.signature),
        xaxis_title="block",
        yaxis_title="neurons (lost below 0)",
        height=380,
        yaxis2={"title": "Jaccard", "overlaying": "y", "side": "right", "range": [0, 1]},
    )
    return fig


def nua_figure(nua, title: str) -> go.Figure:
    """NUA per block, with the lower / middle / upper third averages as steps."""
    blocks = list(range(1, len(nua.per_layer) + 1))
    fig = go.Figure()
    fig.add_bar(x=blocks, y=nua.per_layer, name="per block", hovertemplate="block %{x}: NUA %{y:.4f}<extra></extra>")
    for (start, end), value, name in zip(nua.thirds, (nua.lower, nua.middle, nua.upper), ("lower", "middle", "upper")):
        fig.add_scatter(
            x=[start + 0.5, end + 0.5],
            y=[value, value],
            mode="lines",
            name=f"{name} third {value:.3f}",
            line={"width": 3},
        )
    low = float(np.nanmin(nua.per_layer)) if np.isfinite(nua.per_layer).any() else 0.0
    fig.update_layout(
        title=_title(title, nua.signature),
        xaxis_title="block",
        yaxis_title="NUA (cosine)",
        yaxis_range=[min(0.9, low - 0.02), 1.0],
        height=360,
    )
    return fig


def nua_groups_figure(groups, title: str) -> go.Figure:
    """Mean NUA per block over base–fine-tune pairs and over fine-tune–fine-tune pairs, with third averages."""
    blocks = list(range(1, len(groups.base_finetune) + 1))
    fig = go.Figure()
    series = (
        ("base–fine-tune", groups.base_finetune, groups.base_finetune_thirds, "#1f77b4"),
        ("fine-tune–fine-tune", groups.finetune_finetune, groups.finetune_finetune_thirds, "#ff7f0e"),
    )
    for name, values, thirds, colour in series:
        fig.add_scatter(
            x=blocks,
            y=values,
            name=name,
            mode="lines+markers",
            line={"color": colour},
            hovertemplate=f"{name}<br>block %{{x}}: NUA %{{y:.4f}}<extra></extra>",
        )
        for (start, end), value in zip(groups.thirds, thirds):
            fig.add_scatter(
                x=[start + 0.5, end + 0.5],
                y=[value, value],
                mode="lines",
                line={"color": colour, "dash": "dot", "width": 3},
                name=f"{name} third mean",
                showlegend=start == 0,
                hovertemplate=f"{name}, blocks {start + 1}–{end}: %{{y:.4f}}<extra></extra>",
            )
    fig.update_layout(
        title=_title(title, groups.signature), xaxis_title="block", yaxis_title="mean NUA (cosine)", height=380
    )
    return fig


def span_overlap_heatmap(overlap, title: str) -> go.Figure:
    """Blocks × conditions Jaccard of source-span and target-span neurons, each cell annotated."""
    jaccard = np.asarray(overlap.jaccard)
    fig = go.Figure(
        go.Heatmap(
            z=jaccard,
            x=list(overlap.languages),
            y=[f"{l + 1}" for l in range(jaccard.shape[0])],
            zmin=0.0,
            zmax=1.0,
            colorscale="Greens",
            text=np.round(jaccard, 2),
            texttemplate="%{text}",
            colorbar={"title": "Jaccard"},
            hovertemplate="block %{y}, %{x}: Jaccard %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=_title(title, overlap.signature), height=max(320, 28 * jaccard.shape[0] + 160), margin={"t": 110}
    )
    fig.update_xaxes(side="top")
    fig.update_yaxes(title="block", autorange="reversed", dtick=1)
    return fig


def principal_angle_curves(geometry, title: str) -> go.Figure:
    """Median principal angle per layer, one line per pair of systems (layer 0: embeddings)."""
    layers = list(range(geometry.median_angle.shape[0]))
    fig = go.Figure()
    for p, (a, b) in enumerate(geometry.pairs):
        fig.add_scatter(
            x=layers,
            y=geometry.median_angle[:, p],
            name=f"{a} vs {b}",
            mode="lines+markers",
            customdata=geometry.distance[:, p],
            hovertemplate=f"{a} vs {b}<br>layer %{{x}}: %{{y:.2f}}°, distance %{{customdata:.3f}}<extra></extra>",
        )
    fig.update_layout(
        title=_title(title, geometry.signature),
        xaxis_title="layer",
        yaxis_title="median principal angle (°)",
        height=400,
    )
    return fig


def subspace_map(coords: np.ndarray, names: Sequence[str], title: str, signature: str = "") -> go.Figure:
    """Systems placed in 2-D by MDS of their subspace distances, each point labelled."""
    coords = np.asarray(coords)
    fig = go.Figure(
        go.Scatter(
            x=coords[:, 0],
            y=coords[:, 1],
            mode="markers+text",
            text=list(names),
            textposition="top center",
            marker={"size": 12},
            hovertemplate="%{text}: (%{x:.3f}, %{y:.3f})<extra></extra>",
        )
    )
    fig.update_layout(title=_title(title, signature), xaxis_title="MDS 1", yaxis_title="MDS 2", height=400)
    fig.update_yaxes(scaleanchor="x", scaleratio=1)  # distances read the same in both directions
    return fig


# ----------------------------------------------------------------- samples


def samples_table(rows: Sequence[dict]) -> pd.DataFrame:
    """One row per sentence, one output (and its chrF / language) column group per system."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    wide = frame.pivot_table(
        index=["direction", "item", "source", "reference", "target"],
        columns="system",
        values=["output", "chrF", "detected"],
        aggfunc="first",
        sort=False,
    )
    systems = list(dict.fromkeys(frame["system"]))
    wide.columns = [f"{system} · {field}" for field, system in wide.columns]
    ordered = [f"{s} · {f}" for s in systems for f in ("output", "chrF", "detected") if f"{s} · {f}" in wide.columns]
    return wide[ordered].reset_index()


OFF_TARGET_COLOUR = "#f8d7da"
# One HTML block instead of st.table: st.table renders every cell as Markdown (hundreds of React
# components for 32 sentences × 5 systems), which made Samples the slowest page to draw.
_TABLE_CSS = """<style>
.samples-scroll { overflow-x: auto; }
.samples-table { border-collapse: collapse; font-size: 0.875rem; width: 100%; }
.samples-table th, .samples-table td { border: 1px solid rgba(49, 51, 63, 0.1); padding: 0.25rem 0.375rem;
  vertical-align: top; text-align: left; }
.samples-table thead th { font-weight: 600; color: rgba(49, 51, 63, 0.6); }
.samples-table td.number { text-align: right; }
.samples-table td.off-target { background-color: OFF_TARGET; }
</style>""".replace("OFF_TARGET", OFF_TARGET_COLOUR)


def off_target_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """True where an output or its detected language is off target (detected language is not the row's target)."""
    flags = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    for col in frame.columns:
        if col.endswith(" · detected"):
            off = frame[col] != frame["target"]
            flags[col] = off
            output = f"{col[: -len(' · detected')]} · output"
            if output in flags:
                flags[output] = off
    return flags


def samples_html(frame: pd.DataFrame) -> str:
    """The samples as one HTML table, off-target outputs highlighted, chrF to one decimal."""
    flags = off_target_cells(frame)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for (_, row), (_, off) in zip(frame.iterrows(), flags.iterrows()):
        cells = []
        for col, value in row.items():
            classes = []
            if col.endswith("chrF") and isinstance(value, (int, float)) and not pd.isna(value):
                value, classes = f"{value:.1f}", ["number"]
            if off[col]:
                classes.append("off-target")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{html.escape('' if pd.isna(value) else str(value))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'{_TABLE_CSS}<div class="samples-scroll"><table class="samples-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


# ----------------------------------------------------------------- layer patching

PATCH_SYSTEMS = {
    "base": "base",
    "merge": "merge",
    "patched": "patched (routed)",
    "control": "random",
    "expert": "expert",
}


def patch_frame(table: Sequence[dict], metric: str) -> pd.DataFrame:
    """The patching table for one metric: one row per routed set and direction, one column per system
    (random: mean and spread over seeds), in percent for off-target."""
    frame = pd.DataFrame(table)
    scale = 100 if metric.startswith("off_target") else 1
    out = frame[["layers", "direction", "controls"]].copy()
    for role, label in PATCH_SYSTEMS.items():
        if role == "control":
            out[f"{label} mean"] = frame[f"control_mean_{metric}"].astype(float) * scale
            out[f"{label} sd"] = frame[f"control_spread_{metric}"].astype(float) * scale
        else:
            out[label] = frame[f"{role}_{metric}"] * scale
    return out.round(2)


def patch_bars(table: Sequence[dict], layers: str, metric: str) -> go.Figure:
    """Per direction: base, merge, patched, random (mean, error bar ± one sd over seeds), expert."""
    frame = patch_frame([r for r in table if r["layers"] == layers], metric)
    unit = " (%)" if metric.startswith("off_target") else ""
    fig = go.Figure()
    for role, label in PATCH_SYSTEMS.items():
        column = f"{label} mean" if role == "control" else label
        error = {"type": "data", "array": frame[f"{label} sd"]} if role == "control" else None
        fig.add_bar(
            name=label,
            x=frame["direction"],
            y=frame[column],
            error_y=error,
            hovertemplate=f"{label}<br>%{{x}}: %{{y:.2f}}<extra></extra>",
        )
    controls = int(frame["controls"].iloc[0]) if len(frame) else 0
    fig.update_layout(
        barmode="group",
        title=_title(
            f"{SCORE_COLUMNS.get(metric, metric)}{unit}: merge patched with {layers} from each direction's expert",
            f"random: {controls} seed(s) of as many blocks, mean ± sd",
        ),
        yaxis_title=SCORE_COLUMNS.get(metric, metric) + unit,
        legend_title="system",
        height=420,
    )
    return fig


def patch_k_curve(table: Sequence[dict], metric: str, side: str = "last") -> go.Figure:
    """Average score against k (blocks patched from the `side` of the stack): patched and random
    (band ± one sd), with merge and expert as reference lines."""
    frame = patch_frame([r for r in table if r["direction"] == "avg"], metric)
    frame["k"] = [int(text.split(":")[1].split("+")[0]) for text in frame["layers"]]
    frame = frame.sort_values("k")
    unit = " (%)" if metric.startswith("off_target") else ""
    fig = go.Figure()
    random_ = frame.dropna(subset=["random mean"])
    upper, lower = random_["random mean"] + random_["random sd"], random_["random mean"] - random_["random sd"]
    fig.add_scatter(
        x=[*random_["k"], *random_["k"][::-1]],
        y=[*upper, *lower[::-1]],
        fill="toself",
        line={"width": 0},
        opacity=0.2,
        name="random ± sd",
        hoverinfo="skip",
    )
    fig.add_scatter(x=random_["k"], y=random_["random mean"], mode="lines+markers", name="random (mean)")
    fig.add_scatter(x=frame["k"], y=frame["patched (routed)"], mode="lines+markers", name=f"patched ({side} k)")
    for label, dash in (("merge", "dot"), ("expert", "dash"), ("base", "dashdot")):
        fig.add_scatter(x=frame["k"], y=frame[label], mode="lines", name=label, line={"dash": dash, "width": 1})
    fig.update_layout(
        title=_title(f"{SCORE_COLUMNS.get(metric, metric)}{unit} (average over directions) against k", ""),
        xaxis_title=f"k: blocks patched from the {side} of the stack",
        yaxis_title=SCORE_COLUMNS.get(metric, metric) + unit,
        height=400,
    )
    return fig


# ----------------------------------------------------------------- interference


def layer_label(group: str) -> str:
    return group if group in ("embed", "head") else f"block {group}"


def interference_table(profile) -> pd.DataFrame:
    """Long form, one row per layer and measure (the heatmap's cells)."""
    rows = [
        {"layer": layer_label(g), "position": int(p), "measure": MEASURES[key], "value": float(values[row])}
        for key, values in profile.measures().items()
        for row, (g, p) in enumerate(zip(profile.groups, profile.positions))
    ]
    return pd.DataFrame(rows).assign(signature=profile.signature)


def interference_pairs_table(profile) -> pd.DataFrame:
    """One row per layer and expert pair: cosine, subspace overlap and (when computed) neuron overlap."""
    rows = []
    for row, group in enumerate(profile.groups):
        for i, a in enumerate(profile.experts):
            for j, b in enumerate(profile.experts):
                entry = {
                    "layer": layer_label(group),
                    "expert_a": a,
                    "expert_b": b,
                    "cosine": profile.cosine[row, i, j],
                    "subspace_overlap": profile.subspace_overlap[row, i, j],
                }
                if profile.neuron_overlap is not None:
                    entry["neuron_overlap"] = profile.neuron_overlap[row, i, j]
                rows.append(entry)
    return pd.DataFrame(rows).assign(signature=profile.signature)


def interference_heatmap(profile) -> go.Figure:
    """Layers × measures. Each column is coloured relative to its own largest magnitude (the measures
    have different ranges); the cells' text and hover give the values themselves."""
    measures = profile.measures()
    values = np.column_stack(list(measures.values()))  # (layers, measures)
    scale = np.where(np.isfinite(values), np.abs(values), 0).max(axis=0)
    colour = values / np.where(scale > 0, scale, 1.0)
    fig = go.Figure(
        go.Heatmap(
            z=colour,
            x=[MEASURES[k] for k in measures],
            y=[layer_label(g) for g in profile.groups],
            customdata=values,
            text=np.vectorize(lambda v: "" if np.isnan(v) else f"{v:.3f}")(values),
            texttemplate="%{text}",
            colorscale="Reds",
            zmin=-1 if (colour < 0).any() else 0,
            zmax=1,
            colorbar={"title": "share of the<br>column's max"},
            hovertemplate="%{y}<br>%{x}: %{customdata:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=_title(f"Interference per layer · {len(profile.experts)} experts", profile.signature),
        height=max(340, 26 * len(profile.groups) + 200),
        margin={"t": 80, "b": 120},  # the measures' names, tilted, under the heatmap: above it they ran into the title
    )
    fig.update_yaxes(autorange="reversed", title="layer")
    return fig


def interference_cosine(profile, row: int) -> go.Figure:
    """The experts' pairwise task-vector cosine in one layer, each cell with its subspace overlap on hover."""
    names = list(profile.experts)
    fig = go.Figure(
        go.Heatmap(
            z=profile.cosine[row],
            x=names,
            y=names,
            customdata=profile.subspace_overlap[row],
            text=np.round(profile.cosine[row], 3),
            texttemplate="%{text}",
            colorscale=DIFF_SCALE,
            zmin=-1,
            zmax=1,
            colorbar={"title": "cosine"},
            hovertemplate="%{y} · %{x}<br>cosine %{z:.4f}<br>subspace overlap %{customdata:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=_title(f"Task-vector cosine · {layer_label(profile.groups[row])}", profile.signature),
        height=max(320, 60 * len(names) + 160),
    )
    fig.update_yaxes(autorange="reversed")
    return fig


def add_cka_curve(fig: go.Figure, matrix, name: str, row: int, col: int) -> None:
    """The per-layer CKA (the diagonal) of a square CKAMatrix as a line in subplot (row, col)."""
    if matrix.values.shape[0] != matrix.values.shape[1]:
        return
    diagonal = np.diag(matrix.values)
    fig.add_scatter(
        x=list(range(len(diagonal))),
        y=diagonal,
        mode="lines+markers",
        name=name,
        row=row,
        col=col,
        hovertemplate=f"{name}<br>layer %{{x}}: CKA %{{y:.4f}}<extra></extra>",
    )


def cka_and_interference(pairs: Sequence, profile) -> go.Figure:
    """CKA per layer of square CKAMatrix results above the interference profile, one shared layer axis
    (0 = embedding, l = block l, L + 1 = head)."""
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=["CKA per layer", "Interference per layer"],
    )
    for m in pairs:
        add_cka_curve(fig, m, f"{m.labels[0]} vs {m.labels[1]}", row=1, col=1)
    measures = profile.measures()
    shown = ["score", "sign_conflict_mass", "subspace_overlap", "neuron_overlap"]
    for key in (k for k in shown if k in measures):
        fig.add_scatter(
            x=profile.positions,
            y=measures[key],
            mode="lines+markers",
            name=MEASURES[key],
            line={"width": 4 if key == "score" else 1.5},
            row=2,
            col=1,
            hovertemplate=f"{MEASURES[key]}<br>layer %{{x}}: %{{y:.4f}}<extra></extra>",
        )
    last = int(profile.positions.max())
    fig.update_xaxes(
        tickvals=list(profile.positions),
        ticktext=[
            "emb" if p == 0 else "head" if g == "head" else str(p) for g, p in zip(profile.groups, profile.positions)
        ],
        range=[-0.5, last + 0.5],
    )
    fig.update_xaxes(title="layer", row=2, col=1)
    fig.update_yaxes(title="CKA", range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(title="share", range=[0, 1.02], row=2, col=1)
    fig.update_layout(title=_title("CKA and interference on one layer axis", profile.signature), height=620)
    return fig
