"""Generation (tiny random models) and the scoring path (stub translators), with caching."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.errors import DataError, SettingsError
from engine.parallel import ParallelSet
from engine.prompts import render_generation_prompt
from engine.translate.evaluate import (
    EvaluationResult,
    direction_cache_key,
    evaluate,
    evaluate_direction,
    validate_sets,
)
from engine.translate.generate import (
    DecodingSettings,
    ModelTranslator,
    first_line,
    generate_token_ids,
    generate_translations,
    stop_token_ids,
)
from engine.translate.report import long_rows
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
@pytest.mark.parametrize("postprocess", ["paper", "none"])
def test_batched_generation_equals_one_by_one(tokenizer, family, postprocess):
    model = make_model(family, seed=3, vocab_size=len(tokenizer))
    batched = DecodingSettings(max_new_tokens=12, batch_size=3, postprocess=postprocess)
    single = DecodingSettings(max_new_tokens=12, batch_size=1, postprocess=postprocess)
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
    ids = generate_token_ids(model, tokenizer, prompts, DecodingSettings(max_new_tokens=7, postprocess="none"))
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


@pytest.mark.parametrize(
    "bad", [dict(max_new_tokens=0), dict(batch_size=-1), dict(max_new_tokens=1.5), dict(postprocess="last-line")]
)
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


# ---- the paper's decoding, on planted generations -----------------------------------------------


def planted_model(tokenizer, continuation: list[int], then: int):
    """A tiny model whose greedy continuation of any one prompt is `continuation`, then `then` for
    ever: its logits are overwritten with a one-hot of the planted token at each step."""
    model = make_model("qwen2", vocab_size=len(tokenizer), max_position_embeddings=1024)
    step = {"n": 0}

    def on_forward(module, args, kwargs):
        if kwargs["input_ids"].shape[1] > 1:  # the prompt: generation starts over
            step["n"] = 0

    def plant(module, args, logits):
        token = continuation[step["n"]] if step["n"] < len(continuation) else then
        step["n"] += 1
        forced = torch.full_like(logits, -1e9)
        forced[..., token] = 0.0
        return forced

    model.register_forward_pre_hook(on_forward, with_kwargs=True)
    model.lm_head.register_forward_hook(plant)
    return model


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


LONE_LEAD_BYTE = "à"  # byte-level BPE's symbol for byte 0xE0, which opens a 3-byte UTF-8 sequence


@pytest.mark.parametrize(
    "pieces, paper, first",
    [
        (['"hola mundo"', "\n", "second line"], "hola mundo", '"hola mundo"'),
        (["  'el gato'  ", "\n"], "el gato", "'el gato'"),
        (['"""dos" tres', "'\n"], 'dos" tres', '"""dos" tres\''),
        (["hola ", LONE_LEAD_BYTE, "mundo", "\n"], "hola", "hola \ufffdmundo"),
        (["hola</s>mundo", "\n"], "hola", "hola</s>mundo"),
        (["\n\n", "hola", "\n"], "", "hola"),
    ],
)
def test_paper_postprocessing_on_planted_generations(tokenizer, pieces, paper, first):
    """Expected outputs follow merging/eval_en_indic.py by hand: stop string "</s>", cut at U+FFFD,
    first line, strip, strip quotes; "first-line" keeps the first non-blank line as it is."""
    continuation = [i for piece in pieces for i in _ids(tokenizer, piece) if piece != LONE_LEAD_BYTE]
    if LONE_LEAD_BYTE in pieces:
        at = len(_ids(tokenizer, "hola "))
        continuation.insert(at, tokenizer.convert_tokens_to_ids(LONE_LEAD_BYTE))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = planted_model(tokenizer, continuation + [im_end], then=im_end)
    for postprocess, expected in (("paper", paper), ("first-line", first)):
        settings = DecodingSettings(batch_size=1, postprocess=postprocess)
        assert generate_translations(model, tokenizer, ["uno"], "es", "en", settings) == [expected]


def test_paper_cap_is_512_new_tokens(tokenizer):
    """An output that never ends a line nor a turn stops at the paper's 512 new tokens."""
    endless = _ids(tokenizer, "a")
    assert len(endless) == 1
    model = planted_model(tokenizer, [], then=endless[0])
    prompt = render_generation_prompt(tokenizer, "en", "de", "one")
    [ids] = generate_token_ids(model, tokenizer, [prompt], DecodingSettings(batch_size=1))
    assert DecodingSettings().max_new_tokens == 512 and ids == endless * 512
    # A first line that ends early stops generation there, whatever follows.
    newline = _ids(tokenizer, "\n")
    model = planted_model(tokenizer, endless * 3 + newline, then=endless[0])
    [ids] = generate_token_ids(model, tokenizer, [prompt], DecodingSettings(batch_size=1))
    assert ids == endless * 3 + newline


def test_generation_stops_at_the_models_context(tokenizer):
    """Below the cap, a row stops where the model's positions end (as vLLM's max_model_len does)."""
    endless = _ids(tokenizer, "a")
    prompts = [render_generation_prompt(tokenizer, "en", "de", s) for s in ("one", SOURCES[0])]
    lengths = [len(_ids(tokenizer, p)) for p in prompts]
    model = planted_model(tokenizer, [], then=endless[0])
    model.config.max_position_embeddings = max(lengths) + 5
    for batch_size in (1, 2):
        ids = generate_token_ids(model, tokenizer, prompts, DecodingSettings(batch_size=batch_size))
        assert [len(row) for row in ids] == [max(lengths) + 5 - n for n in lengths]
    model.config.max_position_embeddings = max(lengths)
    with pytest.raises(DataError, match="prompt 2 renders to .* the model's whole context"):
        generate_token_ids(model, tokenizer, prompts, DecodingSettings())


def test_decoding_settings_are_in_every_scores_signature_and_cache_key(tokenizer):
    model = make_model("qwen2", seed=1, vocab_size=len(tokenizer))
    pairs = ParallelSet("en", "es", tuple(EN[:2]), tuple(ES[:2]), name="tiny")
    paper = ModelTranslator(model, tokenizer, "tiny-1", DecodingSettings(max_new_tokens=8, batch_size=2))
    result = evaluate_direction(paper, pairs, use_cache=False)
    assert result.decoding == "decoding:greedy|max_new_tokens:8|postprocess:paper"
    rows = long_rows([EvaluationResult("tiny", "tiny-1", (result,))])
    assert {r["decoding_signature"] for r in rows} == {result.decoding}
    other = ModelTranslator(model, tokenizer, "tiny-1", DecodingSettings(max_new_tokens=8, postprocess="first-line"))
    languages = ("en", "es")
    assert direction_cache_key(paper, pairs, languages) != direction_cache_key(other, pairs, languages)


@pytest.mark.parametrize(
    "env, cap",
    [
        ({}, 48),  # the demo zoo's data: its short cap, set for speed
        ({"MERGESCOPE_DATA_DIR": "/data/flores"}, 512),  # a researcher's own data: the paper's cap
        ({"MERGESCOPE_DATA_DIR": "/data/flores", "MERGESCOPE_MAX_NEW_TOKENS": "200"}, 200),
    ],
)
def test_dashboard_decoding_cap(env, cap, monkeypatch):
    from engine.pipeline.scores import decoding_settings
    from engine.settings import get_settings

    for name in ("MERGESCOPE_DATA_DIR", "MERGESCOPE_MAX_NEW_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    settings = decoding_settings()
    assert settings.max_new_tokens == cap and settings.postprocess == "paper"
    get_settings.cache_clear()
