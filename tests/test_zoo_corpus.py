"""The zoo corpus: deterministic, disjoint splits, every language, every prompt renders."""

from __future__ import annotations

import pytest

from engine.prompts import render_generation_prompt, render_teacher_forced
from engine.zoo.build import TARGETS, BuildConfig
from engine.zoo.corpus import KINDS, build_corpus
from engine.zoo.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(TARGETS, seed=0, train_per_kind=60, dev_size=16, devtest_size=24)


def test_same_seed_same_hash(corpus):
    again = build_corpus(TARGETS, seed=0, train_per_kind=60, dev_size=16, devtest_size=24)
    other = build_corpus(TARGETS, seed=1, train_per_kind=60, dev_size=16, devtest_size=24)
    assert again.content_hash() == corpus.content_hash()
    assert other.content_hash() != corpus.content_hash()


def test_splits_share_no_source_string(corpus):
    for lang in corpus.languages:
        seen = {split: set(corpus.monolingual(split, lang)) for split in corpus.splits}
        assert not seen["train"] & seen["dev"], lang
        assert not seen["train"] & seen["devtest"], lang
        assert not seen["dev"] & seen["devtest"], lang
        # one string, one value: no source has two references
        assert sum(len(corpus.splits[s]) for s in corpus.splits) == len(set().union(*seen.values())), lang


def test_every_language_and_kind_present(corpus):
    assert corpus.languages == ("en", *TARGETS)
    assert {"es", "pt"} <= set(TARGETS) and len(TARGETS) >= 5
    for split, phrases in corpus.splits.items():
        assert {p.kind for p in phrases} == {k.name for k in KINDS}, split
        for phrase in phrases:
            assert set(phrase.texts) == set(corpus.languages)
            assert all(text.strip() for text in phrase.texts.values())


def test_scripts_are_the_expected_ones(corpus):
    texts = {lang: " ".join(corpus.monolingual("train", lang)) for lang in corpus.languages}
    assert any("\u0400" <= ch <= "\u04ff" for ch in texts["ru"])
    assert any("\u0980" <= ch <= "\u09ff" for ch in texts["bn"])
    assert not any("\u0400" <= ch <= "\u04ff" for ch in texts["en"] + texts["es"] + texts["de"])


def test_every_direction_renders_through_the_chat_template(corpus):
    texts = [t for p in corpus.splits["train"] for t in p.texts.values()]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    for src, tgt in BuildConfig().directions():
        pairs = corpus.pairs("devtest", src, tgt)
        prompt = render_generation_prompt(tokenizer, src, tgt, pairs.sources[0])
        assert prompt.startswith("<|im_start|>user\nTranslate the following ")
        assert prompt.endswith(f"{pairs.sources[0]}<|im_end|>\n<|im_start|>assistant\n")
        rendered = render_teacher_forced(tokenizer, src, tgt, pairs.sources[0], pairs.targets[0])
        start, end = rendered.target_span
        assert rendered.text[start:end] == pairs.targets[0]
        assert tokenizer.decode(tokenizer(rendered.text)["input_ids"]) == rendered.text  # byte-level: lossless


def test_digits_are_single_tokens():
    tokenizer = train_tokenizer(["12345 67890 2024 1999"] * 50, vocab_size=300)
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("on 20240315")["input_ids"])
    assert pieces[-8:] == list("20240315")
