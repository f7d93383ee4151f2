"""Layer sets for patching: the last k blocks, the first k, an explicit list, and seeded random
controls, with the embedding, the final norm and the LM head as optional parts.

Text form (CLI, URL): `last:3`, `first:2`, `all`, `0,4,7` (or `0 4 7`), `2-5`, each optionally followed by
`+embed`, `+norm`, `+head` (e.g. `last:5+norm`, the paper's upper patch; `all+embed+norm+head`,
the whole model).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from engine.errors import RecipeError

PARTS = ("embed", "norm", "head")  # the tensors outside the blocks, in the order of the stack
CONTROLS_FROM = ("rest", "stack")  # random blocks drawn outside the routed set (the paper's) or from every block


@dataclass(frozen=True)
class LayerSet:
    """Blocks (0-based) and parts outside the blocks that a patch takes from another checkpoint."""

    blocks: tuple[int, ...]
    parts: tuple[str, ...] = ()
    label: str = ""

    def __post_init__(self):
        if list(self.blocks) != sorted(set(self.blocks)):
            raise RecipeError(f"layer set {self.label or self.blocks}: blocks must be sorted and distinct")
        if unknown := [p for p in self.parts if p not in PARTS]:
            raise RecipeError(f"layer set {self.label!r}: unknown part(s) {unknown}; known: {', '.join(PARTS)}")

    @property
    def text(self) -> str:
        """Canonical text: the label when it came from one, else the explicit block list."""
        # Spaces, not commas: system names carry this text, and the URL's lists are comma-separated.
        core = self.label or " ".join(map(str, self.blocks)) or "none"
        return "+".join([core, *self.parts])


def parse_layer_set(text: str, num_layers: int) -> LayerSet:
    """A LayerSet from its text form; RecipeError naming the problem (bad syntax, block out of range)."""
    pieces = [p.strip() for p in str(text).strip().lower().split("+")]
    core, parts = pieces[0], tuple(dict.fromkeys(p for p in pieces[1:] if p))
    where = f"layer set {text!r}"
    if unknown := [p for p in parts if p not in PARTS]:
        raise RecipeError(f"{where}: unknown part(s) {unknown}; known: {', '.join(PARTS)}")
    parts = tuple(p for p in PARTS if p in parts)
    try:
        if core in ("all", ""):
            blocks = list(range(num_layers)) if core == "all" else []
        elif core == "none":
            blocks = []
        elif core.startswith(("last:", "first:")):
            side, k = core.split(":", 1)
            k = int(k)
            if not 0 <= k <= num_layers:
                raise RecipeError(f"{where}: k must be between 0 and {num_layers} (the model's blocks), got {k}")
            blocks = list(range(num_layers - k, num_layers)) if side == "last" else list(range(k))
        else:
            blocks = []
            for item in re.split(r"[,\s]+", core.strip()):
                lo, _, hi = item.partition("-")
                blocks += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise RecipeError(
            f"{where}: expected last:K, first:K, all, or block numbers like 0,4,7 or 2-5 (optionally +embed+norm+head)"
        ) from None
    if bad := [b for b in blocks if not 0 <= b < num_layers]:
        raise RecipeError(f"{where}: block(s) {bad} outside the model's blocks 0-{num_layers - 1}")
    label = core if core.startswith(("last:", "first:")) or core == "all" else ""
    return LayerSet(tuple(sorted(set(blocks))), parts, label)


def random_blocks(k: int, num_layers: int, seed: int, exclude: tuple[int, ...] = ()) -> LayerSet:
    """k distinct blocks drawn uniformly (seeded) from the blocks not in `exclude`."""
    candidates = [b for b in range(num_layers) if b not in set(exclude)]
    if not 0 <= k <= len(candidates):
        raise RecipeError(
            f"random control: cannot draw {k} block(s) from {len(candidates)} eligible block(s) "
            f"({num_layers} in the model, {len(set(exclude))} excluded)"
        )
    drawn = sorted(random.Random(seed).sample(candidates, k))
    return LayerSet(tuple(drawn), (), f"random:{k}@{seed}")


def control_sets(routed: LayerSet, num_layers: int, count: int, seed: int, draw_from: str = "rest") -> list[LayerSet]:
    """`count` random controls of the routed set's size, seeds seed … seed + count − 1.

    draw_from 'rest' (the paper's `eval_en_indic_layer_patch.py`): blocks outside the routed set,
    and no parts (its random controls never take the final norm); 'stack': any block. None when
    fewer blocks than the routed set's lie outside it (a k-curve's upper half under 'rest').
    """
    if draw_from not in CONTROLS_FROM:
        raise RecipeError(f"controls must be drawn from one of {', '.join(CONTROLS_FROM)}, got {draw_from!r}")
    exclude = routed.blocks if draw_from == "rest" else ()
    if num_layers - len(exclude) < len(routed.blocks):
        return []
    return [random_blocks(len(routed.blocks), num_layers, seed + i, exclude) for i in range(count)]
