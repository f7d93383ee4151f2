"""What the demo zoo shows: the interference profile of the En→X experts against the X→En experts',
beside the CKA between the experts of each group, layer by layer.

    .venv/bin/python bench/zoo_interference.py            # devtest, 64 sentences per direction

Per group (the five En→X experts, the five X→En experts): the interference profile against the zoo's
base with the experts' LAPE neuron overlap (paper preset, each expert's language on the span where it
is written), and the mean over expert pairs of their per-layer linear CKA on the source span of the
group's devtest sets. Prints Markdown tables: per layer, each group's score and measures, and its CKA.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.checkpoints import open_checkpoint  # noqa: E402
from engine.neurons import PRESETS  # noqa: E402
from engine.pipeline.analyses import cka_pair  # noqa: E402
from engine.pipeline.data import data_sets  # noqa: E402
from engine.pipeline.interference import interference_with_neurons  # noqa: E402
from engine.pipeline.models import ModelCache  # noqa: E402
from engine.pipeline.systems import checkpoint_system  # noqa: E402

LANGUAGES = ("bn", "de", "es", "pt", "ru")
GROUPS = {"En→X": [f"en-{x}" for x in LANGUAGES], "X→En": [f"{x}-en" for x in LANGUAGES]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="devtest")
    parser.add_argument("--n", type=int, default=64, help="sentences per direction")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = ModelCache()
    base = checkpoint_system(open_checkpoint(REPO / "zoo" / "models" / "base"))
    rows = {}
    for group, directions in GROUPS.items():
        experts = [checkpoint_system(open_checkpoint(REPO / "zoo" / "models" / f"expert-{d}")) for d in directions]
        sets = data_sets(args.split, directions, args.n)
        start = time.perf_counter()
        profile = interference_with_neurons(base, experts, sets, PRESETS["paper"], models)
        seconds = time.perf_counter() - start
        cka = np.mean(
            [cka_pair(a, b, sets, "source", models).diagonal() for a, b in itertools.combinations(experts, 2)], axis=0
        )
        rows[group] = (profile, cka, seconds)
        print(f"{group}: profile with neuron overlap in {seconds:.1f} s (captures included on a cold cache)")
    measures = ("score", "sign_conflict_mass", "subspace_overlap", "neuron_overlap", "cosine", "relative_norm")
    profile = rows["En→X"][0]
    print(
        "\n| layer | "
        + " | ".join(f"{g} {m}" for m in (*measures, "CKA") for g in GROUPS)
        + " |\n|"
        + "---|" * (1 + 2 * (len(measures) + 1))
    )
    for row, group in enumerate(profile.groups):
        cells = []
        for m in (*measures, "CKA"):
            for g in GROUPS:
                p, cka, _ = rows[g]
                value = cka[p.positions[row]] if m == "CKA" and p.positions[row] < len(cka) else None
                value = p.measures()[m][row] if m != "CKA" else value
                cells.append("" if value is None or np.isnan(value) else f"{value:.3f}")
        print(f"| {group} | " + " | ".join(cells) + " |")
    for g in GROUPS:
        p, cka, _ = rows[g]
        blocks = [i for i, grp in enumerate(p.groups) if grp not in ("embed", "head")]
        peak = p.groups[max(blocks, key=lambda i: p.score[i])]
        drops = np.diff(cka)  # CKA of layer l minus layer l-1
        print(
            f"{g}: score peaks at block {peak} ({p.score[blocks].max():.3f}), mean over blocks "
            f"{p.score[blocks].mean():.3f}; CKA lowest at layer {int(np.argmin(cka))} ({cka.min():.3f}), "
            f"steepest drop into layer {int(np.argmin(drops)) + 1} ({drops.min():+.3f})"
        )


if __name__ == "__main__":
    main()
