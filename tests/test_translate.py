"""Generation (tiny random models) and the scoring path (stub translators), with caching."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.errors import DataError, SettingsError
from engine.parallel import ParallelSet
from engine.prompts import render_generation_prompt
from engine.translate.evaluate import evaluate, evaluate_direction, validate_sets
from engine.translate.generate import (
    DecodingSettings,
    ModelTranslator,
    first_line,
    generate_token_ids,
    generate_translations,
    stop_token_ids,
)
from tests.tiny_models import make_model, make_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SOURCES = [
    "twenty-one thousand three hundred and four",
    "one",
    "the first of January, nineteen ninety-nine",
    "veintiún mil trescientos cuatro euros",
    "двадцать одна тысяча",
]
EN = [
    "the first of January, nineteen ninety-nine",
    "twenty-one thousand three hundred and four euros",
    "the cat is sleeping on the warm sofa",
    "we will arrive at the station tomorrow morning",
]
ES = [
    "el primero de enero de mil novecientos noventa y nueve",
    "veintiún mil trescientos cuatro euros",
    "el gato duerme en el sofá caliente",
    "llegaremos a la estación mañana por la mañana",
]
RU = [
    "первое января тысяча девятьсот девяносто девятого года",
    "двадцать одна тысяча триста четыре евро",
    "кошка спит на тёплом диване",
    "мы приедем на вокзал завтра утром",
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


# ---- generation -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("keep_first_line", [True, False])
def test_batched_generation_equals_one_by_one(tokenizer, family, keep_first_line):
    model = make_model(family, seed=3, vocab_size=len(tokenizer))
    batched = DecodingSettings(max_new_tokens=12, batch_size=3, first_line=keep_first_line)
    single = DecodingSettings(max_new_tokens=12, batch_size=1, first_line=keep_first_line)
    together = generate_translations(model, tokenizer, SOURCES, "en", "de", batched)
    alone = [generate_translations(model, tokenizer, [s], "en", "de", single)[0] for s in SOURCES]
    assert together == alone


def _early_and_late_rows(tokenizer, **overrides):
    """A random model (found by trying seeds) whose first lines end after 6 to 24 tokens: 6 of these
    8 prompts finish early, 2 run to the 24-token cap."""
    model = make_model("qwen2", seed=1, vocab_size=len(tokenizer), **overrides)
    prompts = [
        render_generation_prompt(tokenizer, "en", "de", s)
        for s in SOURCES + EN[2:] + ["seven hundred euros and fifty cents"]
    ]
    return model, prompts


def test_finished_rows_leave_the_batch_and_the_rest_keep_their_cache(tokenizer):
    model, prompts = _early_and_late_rows(tokenizer)
    together = DecodingSettings(max_new_tokens=24, batch_size=8)
    rows, tokens_read = [], []
    generate = model.generate
    model.generate = lambda **kw: rows.append(len(kw["input_ids"])) or generate(**kw)
    hook = model.register_forward_pre_hook(
        lambda m, args, kw: tokens_read.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    batched = generate_token_ids(model, tokenizer, prompts, together)
    hook.remove()
    model.generate = generate
    alone = [generate_token_ids(model, tokenizer, [p], replace(together, batch_size=1))[0] for p in prompts]
    assert batched == alone
    assert min(map(len, alone)) <= 8 and max(map(len, alone)) == 24  # the planted spread
    assert rows[0] == 8 and len(rows) > 1 and all(b <= a // 2 for a, b in zip(rows, rows[1:]))
    assert sum(n > 1 for n in tokens_read) == 1  # the prompts are read once; later passes go on from the cache


def test_a_cache_that_cannot_drop_rows_is_rebuilt(tokenizer):
    model, prompts = _early_and_late_rows(tokenizer)
    model.generation_config.cache_implementation = "static"  # fixed-size cache: rows are re-read, not dropped
    together = DecodingSettings(max_new_tokens=24, batch_size=8)
    batched = generate_token_ids(model, tokenizer, prompts, together)
    alone = [generate_token_ids(model, tokenizer, [p], replace(together, batch_size=1))[0] for p in prompts]
    assert batched == alone


def test_token_ids_stop_before_end_of_turn_and_respect_the_cap(tokenizer):
    model = make_model("qwen2", seed=1, vocab_size=len(tokenizer))
    stops = set(stop_token_ids(tokenizer, model))
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stops
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": s}], tokenize=False, add_generation_prompt=True)
        for s in SOURCES
    ]
    ids = generate_token_ids(model, tokenizer, prompts, DecodingSettings(max_new_tokens=7, first_line=False))
    assert len(ids) == len(SOURCES)
    assert all(len(row) <= 7 and not stops & set(row) for row in ids)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("hola\nmundo", "hola"),
        ("\n\n  hola mundo  \nx", "hola mundo"),
        ("", ""),
        ("solo", "solo"),
    ],
)
def test_first_line(text, expected):
    assert first_line(text) == expected


def test_model_translator_needs_a_chat_template(tokenizer):
    bare = make_tokenizer()
    bare.chat_template = None
    with pytest.raises(DataError, match="chat template"):
        ModelTranslator(make_model(vocab_size=len(bare)), bare, identity="x")


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(batch_size=-1), dict(max_new_tokens=1.5)])
def test_bad_decoding_settings(bad):
    with pytest.raises(SettingsError):
        DecodingSettings(**bad)


def test_unknown_language_code_fails_before_generation(tokenizer):
    with pytest.raises(DataError, match="xx"):
        generate_translations(object(), tokenizer, ["a"], "en", "xx")


# ---- the scoring path, through stubs --------------------------------------------------------------


class CopyStub:
    """Echoes each source: the worst possible 'translator', always in the source language."""

    identity = "stub:copy"

    def __init__(self):
        self.calls = 0

    def cache_parts(self):
        return {"model": self.identity}

    def translate(self, sources, src_lang, tgt_lang):
        self.calls += 1
        return list(sources)


class ReferenceStub(CopyStub):
    """Answers with the reference: a perfect translator for known data."""

    identity = "stub:reference"

    def __init__(self, sets):
        super().__init__()
        self.table = {(s.direction, src): tgt for s in sets for src, tgt in zip(s.sources, s.targets)}

    def translate(self, sources, src_lang, tgt_lang):
        self.calls += 1
        return [self.table[(f"{src_lang}-{tgt_lang}", s)] for s in sources]


SETS = [
    ParallelSet("en", "ru", tuple(EN), tuple(RU), "en-ru"),
    ParallelSet("en", "es", tuple(EN), tuple(ES), "en-es"),
    ParallelSet("ru", "en", tuple(RU), tuple(EN), "ru-en"),
]


def test_copying_model_scores_near_zero_and_is_always_off_target():
    result = evaluate_direction(CopyStub(), SETS[0], languages=["en", "es", "ru"], use_cache=False)
    assert result.scores.chrf < 5 and result.scores.bleu < 1
    assert result.rates.off_target == 1.0 and result.rates.off_target_ref == 1.0
    assert all(s.detected == "en" and s.reference_detected == "ru" for s in result.samples)


def test_reference_echo_scores_100():
    result = evaluate(ReferenceStub(SETS), SETS, system="oracle", use_cache=False)
    assert result.metric("bleu") == pytest.approx(100) and result.metric("chrf") == pytest.approx(100)
    assert result.metric("off_target_ref") == 0.0
    assert all(s.chrf == pytest.approx(100) for d in result.directions for s in d.samples)
    assert [d.direction for d in result.directions] == ["en-ru", "en-es", "ru-en"]


def test_results_are_cached_by_model_and_data():
    stub = ReferenceStub(SETS)
    first = evaluate(stub, SETS, use_cache=True)
    assert stub.calls == 3
    again = evaluate(stub, SETS, use_cache=True)
    assert stub.calls == 3 and again == first
    evaluate(stub, [SETS[0].head(2)], languages=["en", "es", "ru"], use_cache=True)  # new data: computed
    assert stub.calls == 4
    other = CopyStub()
    evaluate(other, SETS[:1], languages=["en", "es", "ru"], use_cache=True)  # new model: computed
    assert other.calls == 1


def test_validation_happens_before_any_work():
    with pytest.raises(DataError, match="en-ru"):
        validate_sets([SETS[0], SETS[0]])
    with pytest.raises(DataError, match="missing"):
        validate_sets(SETS, languages=["en", "ru"])
    stub = CopyStub()
    with pytest.raises(DataError):
        evaluate(stub, [])
    assert stub.calls == 0


def test_in_memory_model_end_to_end(tokenizer):
    model = make_model("qwen2", seed=2, vocab_size=len(tokenizer))
    translator = ModelTranslator(
        model, tokenizer, identity="tiny-random-2", settings=DecodingSettings(max_new_tokens=8, batch_size=4)
    )
    result = evaluate(translator, SETS[:2], languages=["en", "es", "ru"], use_cache=True)
    assert len(result.directions) == 2 and all(len(d.samples) == 4 for d in result.directions)
    assert 0 <= result.metric("chrf") <= 100


def test_a_changed_chat_template_changes_the_cache_key(tokenizer):
    model = make_model(vocab_size=len(tokenizer))
    other = make_tokenizer()
    other.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    a = ModelTranslator(model, tokenizer, identity="same-weights").cache_parts()
    b = ModelTranslator(model, other, identity="same-weights").cache_parts()
    assert a["model"] == b["model"] and a != b
