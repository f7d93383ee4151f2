"""Systems: what the dashboard can score or compare (a checkpoint or a recipe's merge), and
the identity its cached results are keyed by."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from engine.checkpoints import Checkpoint, load_tokenizer, open_checkpoint
from engine.pipeline.catalog import checkpoint_direction, checkpoint_label
from engine.pipeline.recipes import recipe_hash

MERGE = "merge"  # the system name of the current recipe's merge


@dataclass(frozen=True)
class System:
    """A model the dashboard can score or compare: a checkpoint or a recipe's merge."""

    name: str
    identity: str
    checkpoint: Checkpoint | None = None
    recipe: object | None = field(default=None, compare=False)
    direction: str | None = None  # the direction an expert was trained for
    patch: object | None = field(default=None, compare=False)  # engine.patch.Patch of a patched merge

    @property
    def is_merge(self) -> bool:
        return self.recipe is not None


def checkpoint_system(checkpoint: Checkpoint) -> System:
    return System(
        checkpoint_label(checkpoint),
        checkpoint.fingerprint,
        checkpoint=checkpoint,
        direction=checkpoint_direction(checkpoint),
    )


def merge_system(recipe, name: str = MERGE) -> System:
    return System(name, recipe_hash(recipe), recipe=recipe)


@functools.lru_cache(maxsize=64)
def _tokenizer_for(identity: str, folder: str):

    return load_tokenizer(open_checkpoint(folder))


def system_tokenizer(system: System):
    """The tokenizer a system uses, without loading its weights (a merge uses its base's, or the
    recipe's tokenizer_source)."""
    if not system.is_merge:
        return _tokenizer_for(system.identity, str(system.checkpoint.path))
    recipe = system.recipe
    source = recipe.tokenizer_source if recipe.tokenizer_source not in (None, "base") else recipe.base_model
    source = source or recipe.referenced_models()[0]
    return _tokenizer_for(system.identity, source)
