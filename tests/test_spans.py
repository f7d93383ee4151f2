"""Span masks: masked tokens decode back to exactly the source and the reference."""

from __future__ import annotations

import pytest
import torch
import transformers

from engine.activations.spans import encode_pair, encode_pairs, span_mask
from engine.errors import DataError, UnsupportedModelError
from engine.parallel import ParallelSet
from engine.settings import ZOO_DIR
from tests.tiny_models import make_tokenizer

CASES = [
    ("en", "de", "twenty-one thousand three hundred and four", "einundzwanzigtausenddreihundertvier"),
    ("en", "ru", "the first of January, nineteen ninety-nine", "двадцать одна тысяча триста четыре"),
    ("bn", "en", "একুশ হাজার তিনশো চার", "twenty-one thousand three hundred and four"),
    ("en", "fr", "  leading and trailing spaces  ", "le vingt et un mars\nmille neuf cent"),
    ("en", "es", "x", "veintiún mil trescientos cuatro euros"),
]


def _decoded(tokenizer, encoded, span):
    ids = torch.tensor(encoded.input_ids)[torch.tensor(encoded.masks[span])]
    return tokenizer.decode(ids)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.mark.parametrize("src_lang,tgt_lang,source,target", CASES)
def test_spans_decode_to_source_and_target(tokenizer, src_lang, tgt_lang, source, target):
    encoded = encode_pair(tokenizer, src_lang, tgt_lang, source, target)
    assert _decoded(tokenizer, encoded, "source") == source
    assert _decoded(tokenizer, encoded, "target") == target
    # The instruction and the template never leak into either span.
    assert not any(s and t for s, t in zip(encoded.masks["source"], encoded.masks["target"]))
    assert "Translate" not in _decoded(tokenizer, encoded, "source")


def test_spans_on_the_zoo_tokenizer_code():
    """The zoo's tokenizer recipe (digits split before byte-level BPE), trained here in memory."""
    from engine.zoo.tokenizer import train_tokenizer

    digit_cases = [
        ("en", "de", "21,304 euros on 1 January 1999", "21.304 Euro am 1. Januar 1999"),
        ("ru", "en", "1999 год", "the year 1999"),
    ]
    texts = [t for case in CASES + digit_cases for t in case[2:]] * 4
    tokenizer = train_tokenizer(texts, vocab_size=400)
    for src_lang, tgt_lang, source, target in CASES + digit_cases:
        encoded = encode_pair(tokenizer, src_lang, tgt_lang, source, target)
        assert _decoded(tokenizer, encoded, "source") == source
        assert _decoded(tokenizer, encoded, "target") == target


def test_spans_on_the_zoo_tokenizer():
    folder = ZOO_DIR / "models" / "base"
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    for src_lang, tgt_lang, source, target in CASES[:3]:
        encoded = encode_pair(tokenizer, src_lang, tgt_lang, source, target)
        # Byte-level tokens at a span's edge may carry a boundary space; nothing else may differ.
        assert _decoded(tokenizer, encoded, "source").strip() == source.strip()
        assert _decoded(tokenizer, encoded, "target").strip() == target.strip()


def test_span_mask_overlap_rule():
    offsets = [(0, 0), (0, 3), (3, 5), (5, 9), (9, 9), (9, 12)]
    assert span_mask(offsets, (3, 9)) == [False, False, True, True, False, False]
    assert span_mask(offsets, (4, 6)) == [False, False, True, True, False, False]


class _NoOffsets:
    """A 'fast' tokenizer whose tokens all have zero width: every span tokenises to nothing."""

    is_fast = True
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize=False):
        return "".join(m["content"] + "\n" for m in messages)

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        return {"input_ids": [1, 2], "offset_mapping": [(0, 0), (0, 0)]}


def test_bad_input():
    pairs = ParallelSet("en", "de", ("one", "two"), ("eins", "zwei"), name="tiny.jsonl")
    with pytest.raises(DataError, match="tiny.jsonl: pair 1: the source span tokenises to nothing"):
        encode_pairs(_NoOffsets(), pairs)
    slow = _NoOffsets()
    slow.is_fast = False
    with pytest.raises(UnsupportedModelError, match="offset mapping"):
        encode_pairs(slow, pairs)
    with pytest.raises(DataError, match="misaligned"):
        ParallelSet("en", "de", ("one", "two"), ("eins",))
