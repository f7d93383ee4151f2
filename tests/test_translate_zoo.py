"""The demo zoo through the translation path: experts beat the base on their own direction, and
batched generation equals one-by-one generation. Skipped until zoo/models is built."""

from __future__ import annotations

import pytest

from engine.checkpoints import load_model, open_checkpoint
from engine.parallel import load_jsonl
from engine.settings import ZOO_DIR
from engine.translate.evaluate import evaluate
from engine.translate.generate import DecodingSettings, ModelTranslator, generate_translations

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODELS = ZOO_DIR / "models"
DEVTEST = ZOO_DIR / "data" / "devtest"
N = 40  # devtest items per direction: enough to separate a fine-tune from the base


def load(name: str):
    # The zoo is its own model root here; the test settings point the default roots elsewhere.
    return load_model(open_checkpoint(MODELS / name, roots=(MODELS.resolve(),)), device="cpu")


def directions() -> list[str]:
    return sorted(p.stem for p in DEVTEST.glob("*.jsonl") if (MODELS / f"expert-{p.stem}").is_dir())


@pytest.fixture(scope="module")
def base():
    return load("base")


def test_each_expert_beats_the_base_on_its_own_direction(base):
    sets = [load_jsonl(DEVTEST / f"{d}.jsonl").head(N) for d in directions()]
    languages = sorted({lang for s in sets for lang in (s.src_lang, s.tgt_lang)})
    settings = DecodingSettings(max_new_tokens=48, batch_size=N)
    base_result = evaluate(ModelTranslator(*base, "zoo-base", settings), sets, languages=languages, use_cache=False)
    for pairs, base_direction in zip(sets, base_result.directions):
        model, tokenizer = load(f"expert-{pairs.direction}")
        expert = evaluate(
            ModelTranslator(model, tokenizer, pairs.direction, settings), [pairs], languages=languages, use_cache=False
        ).directions[0]
        assert expert.scores.chrf > base_direction.scores.chrf, pairs.direction
        assert expert.scores.bleu >= base_direction.scores.bleu, pairs.direction


def test_batched_equals_one_by_one_on_the_zoo(base):
    model, tokenizer = base
    d = directions()[0]
    pairs = load_jsonl(DEVTEST / f"{d}.jsonl").head(12)
    together = generate_translations(
        model,
        tokenizer,
        pairs.sources,
        pairs.src_lang,
        pairs.tgt_lang,
        DecodingSettings(max_new_tokens=48, batch_size=12),
    )
    alone = [
        generate_translations(
            model, tokenizer, [s], pairs.src_lang, pairs.tgt_lang, DecodingSettings(max_new_tokens=48, batch_size=1)
        )[0]
        for s in pairs.sources
    ]
    assert together == alone
