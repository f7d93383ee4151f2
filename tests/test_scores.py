"""Our sacreBLEU wrapper against sacreBLEU's own command line on the same files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import DataError
from engine.translate.scores import bleu_tokenizer, corpus_scores, sentence_chrf

SACREBLEU = Path(sys.executable).parent / "sacrebleu"

CASES = {
    "de": (
        [
            "Die Katze sitzt auf der Matte.",
            "Heute ist der erste Januar.",
            "Wir haben einundzwanzig Euro.",
            "Das ist nicht richtig",
            "zweitausend",
        ],
        [
            "Die Katze saß auf der Matte.",
            "Heute ist der erste Januar.",
            "Wir haben zwanzig Euro.",
            "Das ist richtig.",
            "zweitausendeins",
        ],
    ),
    "ru": (
        ["двадцать одна тысяча триста четыре", "первое января", "сто рублей", "пять"],
        ["двадцать одна тысяча триста", "первое января тысяча девятьсот", "сто один рубль", "пять"],
    ),
    "zh": (["我们今天吃饭了", "二十一", "一月一日是新年"], ["我们今天吃过饭了", "二十一", "一月一日是元旦"]),
}


def cli_scores(tmp_path: Path, refs, hyps, *options: str) -> list[dict]:
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    out = subprocess.run(
        [str(SACREBLEU), str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"), "-f", "json", "-w", "4", *options],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    parsed = json.loads(out)
    return parsed if isinstance(parsed, list) else [parsed]


@pytest.mark.parametrize("lang", sorted(CASES))
def test_corpus_scores_equal_sacrebleu_cli(tmp_path, lang):
    hyps, refs = CASES[lang]
    ours = corpus_scores(hyps, refs, lang)
    bleu, chrf = cli_scores(tmp_path, refs, hyps, "-m", "bleu", "chrf", "-tok", bleu_tokenizer(lang))
    (chrfpp,) = cli_scores(tmp_path, refs, hyps, "-m", "chrf", "--chrf-word-order", "2")
    assert ours.bleu == pytest.approx(bleu["score"], abs=1e-4)
    assert ours.chrf == pytest.approx(chrf["score"], abs=1e-4)
    assert ours.chrfpp == pytest.approx(chrfpp["score"], abs=1e-4)
    assert ours.bleu_signature == bleu["signature"]
    assert ours.chrf_signature == chrf["signature"]
    assert ours.chrfpp_signature == chrfpp["signature"]


def test_sentence_chrf_equals_sacrebleu_cli(tmp_path):
    hyps, refs = CASES["de"]
    (tmp_path / "r.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    (tmp_path / "h.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    # Sentence-level mode prints "<signature> = <score>" per line.
    out = subprocess.run(
        [str(SACREBLEU), str(tmp_path / "r.txt"), "-i", str(tmp_path / "h.txt"), "-m", "chrf", "-sl", "-w", "4"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    expected = [float(line.rsplit("=", 1)[1]) for line in out.splitlines() if "=" in line]
    assert len(expected) == len(hyps)
    assert sentence_chrf(hyps, refs) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    "lang, tokenizer", [("en", "13a"), ("hi", "13a"), ("zh", "zh"), ("ja", "char"), ("th", "char")]
)
def test_tokenizer_choice_is_in_the_signature(lang, tokenizer):
    assert bleu_tokenizer(lang) == tokenizer
    assert f"tok:{tokenizer}" in corpus_scores(["a b"], ["a b"], lang).bleu_signature


def test_identical_outputs_score_100():
    refs = CASES["de"][1]
    scores = corpus_scores(refs, refs, "de")
    assert scores.bleu == pytest.approx(100) and scores.chrf == pytest.approx(100)


@pytest.mark.parametrize("hyps, refs", [(["a"], ["a", "b"]), ([], [])])
def test_misaligned_or_empty_is_an_error(hyps, refs):
    with pytest.raises(DataError):
        corpus_scores(hyps, refs, "de")
