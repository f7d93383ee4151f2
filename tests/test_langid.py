"""Language ID restricted to the languages in play, and the three off-target rates."""

from __future__ import annotations

import threading
import time

import pytest

from engine.errors import DataError
from engine.translate import langid
from engine.translate.langid import UNDETERMINED, check_languages, detect, off_target_rates

PLAY = ["en", "es", "pt", "ru"]


@pytest.mark.parametrize(
    "text, lang",
    [
        ("the first of January, nineteen ninety-nine", "en"),
        ("el gato duerme en el sofá caliente", "es"),
        ("двадцать одна тысяча триста четыре евро", "ru"),
        ("", UNDETERMINED),
        ("12 345", UNDETERMINED),
    ],
)
def test_detect_among_languages_in_play(text, lang):
    assert detect([text], PLAY) == [lang]


def test_restriction_changes_the_answer_space():
    # Spanish text with only English and Russian in play must be called one of those two.
    assert detect(["el gato duerme en el sofá caliente"], ["en", "ru"])[0] in {"en", "ru"}
    # ... and the restriction does not leak into the next call.
    assert detect(["el gato duerme en el sofá caliente"], PLAY) == ["es"]


def test_unknown_language_is_an_error_naming_it():
    with pytest.raises(DataError, match="xx"):
        check_languages(["en", "xx"])


@pytest.mark.parametrize(
    "detected, ref_detected, tgt, expected",
    [
        (["es", "es", "en", "und"], ["es", "es", "es", "es"], "es", (0.5, 0.5, 0.0)),
        (["pt", "es"], ["pt", "es"], "es", (0.5, 0.0, 0.5)),  # identifier calls a reference pt: no blame on output
        (["en", "en"], ["ru", "ru"], "ru", (1.0, 1.0, 0.0)),
    ],
)
def test_off_target_rates(detected, ref_detected, tgt, expected):
    rates = off_target_rates(detected, ref_detected, tgt)
    assert (rates.off_target, rates.off_target_ref, rates.reference_miss) == pytest.approx(expected)


def test_concurrent_detection_with_different_language_sets():
    # One thread's restriction must never leak into another's check or answer.
    from concurrent.futures import ThreadPoolExecutor

    jobs = [
        (["el gato duerme en el sofá caliente"], ["es", "pt"], "es"),
        (["двадцать одна тысяча триста четыре евро"], ["en", "ru"], "ru"),
        (["the first of January, nineteen ninety-nine"], ["de", "en"], "en"),
    ] * 30
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda job: detect(job[0], job[1])[0], jobs))
    assert answers == [expected for _, _, expected in jobs]


def test_the_model_is_read_once_when_sessions_ask_at_the_same_moment(monkeypatch):
    from py3langid.langid import LanguageIdentifier

    reads, read = [], LanguageIdentifier.from_model_file

    def slow_read(*args, **kwargs):
        reads.append(threading.current_thread().name)
        time.sleep(0.2)  # the window in which the other threads ask too
        return read(*args, **kwargs)

    monkeypatch.setattr(LanguageIdentifier, "from_model_file", slow_read)
    langid._read_identifier.cache_clear()
    threads = [threading.Thread(target=langid.supported_languages) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reads) == 1
    assert detect(["el gato duerme en el sofá caliente"], ["en", "es"]) == ["es"]
