"""`python -m engine analyze`: capture span activations of checkpoints, then CKA, LAPE, NUA, the
source/target neuron overlap and the principal-angle geometry into a JSON report.

Every checkpoint and data file is checked before any model is loaded; captures go through the
cache keyed by each checkpoint's content fingerprint, so re-running with another model added
only computes the new one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from itertools import combinations
from pathlib import Path

import numpy as np

from engine import cka, geometry, neurons, nua
from engine.activations import CONDITIONS, SPANS, CaptureSettings, capture_cached, condition_labels, condition_rates
from engine.checkpoints import load_model, open_checkpoint
from engine.errors import DataError
from engine.parallel import load_jsonl

log = logging.getLogger(__name__)
SPAN_NAMES = {"src": "source", "tgt": "target"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", nargs="+", required=True, help="checkpoint folders; the first is the base for comparisons"
    )
    parser.add_argument("--data", nargs="+", required=True, help="parallel JSONL files, one direction each")
    parser.add_argument("--span", choices=sorted(SPAN_NAMES), default="src", help="pool over source or target tokens")
    parser.add_argument("--out", required=True, help="report JSON path")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N pairs of each data file")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--preset", choices=sorted(neurons.PRESETS), default="paper", help="LAPE parameters")
    parser.add_argument(
        "--conditions",
        choices=sorted(CONDITIONS),
        default="dataset",
        help="LAPE conditions: one per data set's non-English language (the paper's, default) or per span language",
    )
    parser.add_argument(
        "--nua",
        choices=sorted(nua.NUA_MODES),
        default="rate",
        help="NUA usage vectors: rates averaged over conditions (the paper's, default) or concatenated",
    )
    parser.add_argument(
        "--rank", type=int, default=geometry.DEFAULT_RANK, help="PCA subspace rank k for the principal angles"
    )
    parser.add_argument("--debiased", action="store_true", help="debiased CKA (for small n) instead of linear CKA")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (default: MERGESCOPE_DEVICE)")


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()] if value.dtype.kind == "f" else value.tolist()
    if isinstance(value, float):
        return value if np.isfinite(value) else None  # JSON has no NaN
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.integer, np.floating)):
        return _jsonable(value.item())
    return value


def _write_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(_jsonable(payload), f, ensure_ascii=False, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> int:
    span = SPAN_NAMES[args.span]
    if args.limit is not None and args.limit < 2:
        raise DataError("--limit must be at least 2: CKA needs two sentences")
    # Check everything before loading any model, so bad input costs nothing.
    datasets = [load_jsonl(p) for p in args.data]
    if args.limit:
        datasets = [d.head(args.limit) for d in datasets]
    for d in datasets:
        if len(d) < 2:
            raise DataError(f"{d.name}: {len(d)} sentence pair; CKA needs at least 2")
    checkpoints = [open_checkpoint(p) for p in args.models]
    if args.rank < 1:
        raise DataError(f"--rank must be at least 1, got {args.rank}")
    # Both spans in one forward pass: the source/target neuron overlap needs them.
    settings = CaptureSettings(batch_size=args.batch_size, spans=SPANS)

    captures = []  # per model: per data set Capture
    for ckpt in checkpoints:
        model, tokenizer = load_model(ckpt, device=args.device)
        per_data = []
        for d in datasets:
            log.info("capturing %s on %s (%d pairs, %s span)", ckpt.name, d.name, len(d), span)
            per_data.append(
                capture_cached(
                    model,
                    tokenizer,
                    d,
                    ckpt.fingerprint,
                    settings,
                    device=args.device,
                    progress=_progress(f"{ckpt.name} {d.direction}"),
                )
            )
        captures.append(per_data)
        del model
    names = [c.name for c in checkpoints]

    report = {
        "span": span,
        "models": [
            {"name": c.name, "path": str(c.path), "fingerprint": c.fingerprint, "layers": caps[0].num_layers}
            for c, caps in zip(checkpoints, captures)
        ],
        "data": [{"path": d.name, "direction": d.direction, "n": len(d), "hash": d.content_hash()} for d in datasets],
        "cka": _cka_section(names, datasets, captures, span, args.debiased, args.device),
        "neurons": _neuron_section(names, datasets, captures, span, args.preset, args.conditions, args.nua),
        "geometry": _geometry_section(names, datasets, captures, span, args.rank),
    }
    _write_atomic(Path(args.out), report)
    print(f"wrote {args.out}: {len(names)} models × {len(datasets)} data sets, {span} span")
    return 0


def _progress(label: str):
    """A capture progress callback that logs about every tenth of the way."""
    last = [-1]

    def report(done: int, total: int) -> None:
        step = 10 * done // total
        if step != last[0]:
            last[0] = step
            log.info("%s: %d / %d pairs", label, done, total)

    return report


def _cka_section(names, datasets, captures, span, debiased, device) -> list[dict]:
    rows = []
    for k, d in enumerate(datasets):
        for i, j in combinations(range(len(names)), 2):
            a, b = captures[i][k].hidden[span], captures[j][k].hidden[span]  # (layers + 1, n, d_model)
            matrix = cka.cka_matrix(a, b, debiased=debiased, span=span, labels=(names[i], names[j]), device=device)
            row = {
                "direction": d.direction,
                "a": names[i],
                "b": names[j],
                "signature": matrix.signature,
                "matrix": matrix.values,
            }
            # Layer-by-layer curves only make sense at equal depth; the L × L matrix is always there.
            row["curve"] = matrix.diagonal() if a.shape[0] == b.shape[0] else None
            rows.append(row)
    return rows


def _rates(datasets, per_data, span, conditions) -> tuple[tuple[str, ...], np.ndarray]:
    labels = condition_labels([(d.src_lang, d.tgt_lang) for d in datasets], span, conditions)
    languages, rates = condition_rates(per_data, labels, span)  # (layers, d_mlp, conditions)
    return languages, rates.numpy()


def _nua_json(result) -> dict:
    return {
        "signature": result.signature,
        "per_layer": result.per_layer,
        "lower": result.lower,
        "middle": result.middle,
        "upper": result.upper,
        "mean": result.mean,
        "thirds": result.thirds,
    }


def _neuron_section(names, datasets, captures, span, preset, conditions, nua_mode) -> dict:
    languages, _ = _rates(datasets, captures[0], span, conditions)
    if len(languages) < 2:
        return {
            "note": f"LAPE compares conditions, but grouped by {conditions} the data give only {', '.join(languages)}"
        }
    section = {"settings": preset, "conditions": conditions, "languages": list(languages), "models": {}}
    results, rates = [], {}
    for name, per_data in zip(names, captures):
        _, r = _rates(datasets, per_data, span, conditions)
        result = neurons.select_language_neurons(r, languages, preset, span=span, conditions=conditions)
        hist = neurons.neuron_histograms(r)
        section["models"][name] = {
            "signature": result.signature,
            "counts": result.counts,  # (layers, conditions)
            "neurons": [{lang: idx.tolist() for lang, idx in layer.items()} for layer in result.neurons],
            "histograms": {
                "entropy_edges": hist.entropy_edges,
                "entropy": hist.entropy_counts,
                "selectivity_edges": hist.selectivity_edges,
                "selectivity": hist.selectivity_counts,
                "dead": hist.dead,
            },
            "source_target_overlap": _span_overlap(datasets, per_data, preset),
        }
        results.append(result)
        rates[name] = r
    section["comparisons"] = []
    for j in range(1, len(names)):
        entry = {"base": names[0], "finetune": names[j]}
        if rates[names[0]].shape == rates[names[j]].shape:
            cmp = neurons.compare_selections(results[0], results[j])
            entry.update(
                signature=cmp.signature,
                per_layer={f: getattr(cmp, f) for f in ("base", "finetune", "gained", "lost", "overlap", "jaccard")},
                nua=_nua_json(
                    nua.neuron_usage_alignment(
                        rates[names[0]], rates[names[j]], span=span, mode=nua_mode, conditions=conditions
                    )
                ),
            )
        else:
            entry["note"] = (
                f"shapes differ ({rates[names[0]].shape} vs {rates[names[j]].shape}); no neuron-by-neuron comparison"
            )
        section["comparisons"].append(entry)
    if len(names) > 1 and len({r.shape for r in rates.values()}) == 1:
        groups = nua.nua_groups(rates, names[0], span=span, mode=nua_mode, conditions=conditions)
        section["nua_pairs"] = {
            "signature": groups.signature,
            "base": groups.base,
            "pairs": [{"a": a, "b": b, **_nua_json(r)} for (a, b), r in groups.pairs.items()],
            "base_finetune": groups.base_finetune,
            "finetune_finetune": groups.finetune_finetune,
            "base_finetune_thirds": groups.base_finetune_thirds,
            "finetune_finetune_thirds": groups.finetune_finetune_thirds,
            "thirds": groups.thirds,
        }
    return section


def _span_overlap(datasets, per_data, preset) -> dict:
    """Source-span vs target-span neurons of one model; the conditions are the data sets' (the
    paper's), the only grouping under which both spans have the same conditions."""
    selections = {}
    for span in SPANS:
        languages, rates = _rates(datasets, per_data, span, "dataset")
        if len(languages) < 2:
            return {"note": f"the data sets form one condition ({', '.join(languages)}); nothing to compare"}
        selections[span] = neurons.select_language_neurons(rates, languages, preset, span=span, conditions="dataset")
    overlap = neurons.compare_spans(selections["source"], selections["target"])
    return {
        "signature": overlap.signature,
        "jaccard": overlap.jaccard,  # (layers, conditions)
        "per_language": dict(zip(overlap.languages, overlap.per_language)),
        "mean": overlap.mean,
    }


def _geometry_section(names, datasets, captures, span, rank) -> dict:
    if len(names) < 2:
        return {"note": "the geometry compares models; give at least two"}
    hidden = {
        name: np.concatenate([c.hidden[span].numpy() for c in per_data], axis=1)
        for name, per_data in zip(names, captures)
    }
    shapes = {name: h.shape for name, h in hidden.items()}
    if len(set(shapes.values())) > 1:
        return {"note": f"representations differ in shape {shapes}; no subspace comparison"}
    result = geometry.subspace_geometry(hidden, k=rank, span=span)
    return {
        "signature": result.signature,
        "rank": result.rank,
        "pairs": [
            {"a": a, "b": b, "median_angle_deg": result.median_angle[:, p], "distance": result.distance[:, p]}
            for p, (a, b) in enumerate(result.pairs)
        ],
        "mds": [
            {name: xy for name, xy in zip(result.names, result.mds_coordinates(layer))}
            for layer in range(len(result.distances))
        ],
    }
