"""Token masks for the source and target spans of teacher-forced pairs.

The chat text and the character spans come from engine.prompts.render_teacher_forced; a token
belongs to a span when its character range (from the fast tokenizer's offset mapping) overlaps
the span. Instruction and chat-template tokens never overlap either sentence, so they are
excluded without any per-template rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import DataError, UnsupportedModelError
from engine.parallel import ParallelSet
from engine.prompts import render_teacher_forced

SPANS = ("source", "target")


@dataclass(frozen=True)
class EncodedPair:
    """One rendered pair as token ids with a boolean mask per span (all lists of equal length)."""

    input_ids: list[int]
    masks: dict[str, list[bool]]  # span name -> per-token membership

    def __len__(self) -> int:
        return len(self.input_ids)


def span_mask(offsets: list[tuple[int, int]], span: tuple[int, int]) -> list[bool]:
    """Tokens whose [start, end) characters overlap `span`; zero-width tokens (added specials) never do."""
    lo, hi = span
    return [end > start and start < hi and end > lo for start, end in offsets]


def encode_pair(tokenizer, src_lang: str, tgt_lang: str, source: str, target: str, label: str = "pair") -> EncodedPair:
    """Render through the chat template, tokenise once, and mark the source and target tokens."""
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModelError(
            f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; span masks need its offset mapping"
        )
    rendered = render_teacher_forced(tokenizer, src_lang, tgt_lang, source, target)
    # The template already wrote every special token it wants; adding more would shift the text.
    encoded = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    masks = {
        "source": span_mask(offsets, rendered.source_span),
        "target": span_mask(offsets, rendered.target_span),
    }
    for name, mask in masks.items():
        if not any(mask):
            raise DataError(f"{label}: the {name} span tokenises to nothing")
    return EncodedPair(list(encoded["input_ids"]), masks)


def encode_pairs(tokenizer, pairs: ParallelSet) -> list[EncodedPair]:
    """encode_pair for every pair of a parallel set, errors naming the set and the pair number."""
    label = pairs.name or pairs.direction
    return [
        encode_pair(tokenizer, pairs.src_lang, pairs.tgt_lang, s, t, label=f"{label}: pair {i + 1}")
        for i, (s, t) in enumerate(zip(pairs.sources, pairs.targets))
    ]
