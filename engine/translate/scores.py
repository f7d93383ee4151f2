"""Corpus BLEU, chrF and chrF++ through sacreBLEU, with the signatures that make them comparable.

sacreBLEU: Post, "A Call for Clarity in Reporting BLEU Scores" (WMT 2018). The paper we reproduce
(arXiv 2604.02881) reports sacreBLEU BLEU and chrF at default settings; we add chrF++ (word
order 2). Only tokenizers that need nothing downloaded are used: 13a by default, sacreBLEU's
'zh' for Chinese and 'char' for Japanese and Thai (no word spaces; the mecab tokenizers would
need extra packages). The tokenizer is part of every BLEU signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sacrebleu.metrics import BLEU, CHRF

from engine.errors import DataError

# Targets written without spaces between words: 13a would score them as one token per sentence.
BLEU_TOKENIZERS = {"zh": "zh", "ja": "char", "th": "char"}


def bleu_tokenizer(tgt_lang: str) -> str:
    """sacreBLEU tokenizer for a target language: 13a unless the script needs 'zh' or 'char'."""
    return BLEU_TOKENIZERS.get(tgt_lang, "13a")


@dataclass(frozen=True)
class CorpusScores:
    """One direction's corpus-level scores and the sacreBLEU signatures that produced them."""

    bleu: float
    chrf: float
    chrfpp: float
    bleu_signature: str
    chrf_signature: str
    chrfpp_signature: str

    def to_dict(self) -> dict:
        return asdict(self)


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} outputs for {len(references)} references (misaligned)")
    if not references:
        raise DataError("no references to score against")


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str], tgt_lang: str) -> CorpusScores:
    """sacreBLEU corpus BLEU / chrF / chrF++ of one direction (single reference)."""
    _check(hypotheses, references)
    refs = [list(references)]
    bleu, chrf, chrfpp = BLEU(tokenize=bleu_tokenizer(tgt_lang)), CHRF(), CHRF(word_order=2)
    scores = [m.corpus_score(list(hypotheses), refs).score for m in (bleu, chrf, chrfpp)]
    return CorpusScores(
        *scores,
        bleu_signature=bleu.get_signature().format(),
        chrf_signature=chrf.get_signature().format(),
        chrfpp_signature=chrfpp.get_signature().format(),
    )


def sentence_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    """Sentence-level chrF per pair, for ranking and showing samples (not for averaging)."""
    _check(hypotheses, references)
    metric = CHRF()
    return [metric.sentence_score(h, [r]).score for h, r in zip(hypotheses, references)]
