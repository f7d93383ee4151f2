"""Translation evaluation per arXiv 2604.02881's protocol: generation, sacreBLEU scores (Post 2018),
language ID and off-target rates, cached per (model, prompt, data, decoding)."""

from engine.translate.evaluate import (
    DirectionResult,
    EvaluationResult,
    Sample,
    evaluate,
    evaluate_direction,
    languages_in_play,
    score_outputs,
    validate_sets,
)
from engine.translate.generate import (
    DecodingSettings,
    LazyModelTranslator,
    ModelTranslator,
    Translator,
    generate_token_ids,
    generate_translations,
    prompt_signature,
)
from engine.translate.langid import OffTargetRates, detect, off_target_rates
from engine.translate.report import long_rows, to_csv, to_json, to_markdown, write_results
from engine.translate.scores import CorpusScores, bleu_tokenizer, corpus_scores, sentence_chrf

__all__ = [
    "CorpusScores",
    "DecodingSettings",
    "DirectionResult",
    "EvaluationResult",
    "LazyModelTranslator",
    "ModelTranslator",
    "OffTargetRates",
    "Sample",
    "Translator",
    "bleu_tokenizer",
    "corpus_scores",
    "detect",
    "evaluate",
    "evaluate_direction",
    "generate_token_ids",
    "generate_translations",
    "languages_in_play",
    "long_rows",
    "off_target_rates",
    "prompt_signature",
    "score_outputs",
    "sentence_chrf",
    "to_csv",
    "to_json",
    "to_markdown",
    "validate_sets",
    "write_results",
]
