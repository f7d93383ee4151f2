"""Output language identification and off-target rates (our addition to arXiv 2604.02881's protocol).

py3langid (a NumPy port of Lui & Baldwin's langid.py) ships its model inside the package, so it
runs offline. It is restricted to the languages in play, which turns "which of 97 languages" into
"which of these few", the question an off-target rate asks.

On short phrases language ID is noisy (the SPEC's pilot: py3langid missed 7-28 % of the
*references*), so two rates are reported:
  - `off_target`:     output's detected language != requested target;
  - `off_target_ref`: output's detected language != the language detected on its reference,
    which cancels the identifier's own bias on that kind of text;
and `reference_miss`, the share of references not detected as the target, the noise floor.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from engine.errors import DataError

log = logging.getLogger(__name__)

UNDETERMINED = "und"  # no letters to judge by (empty output, digits only)


# set_languages mutates the shared identifier: restrict, classify and reset under one lock. The
# label set below never reads the identifier again, so checks need no lock.
_lock = threading.Lock()
_loading = threading.Lock()


def _identifier():
    """(the shared identifier, every label it knows), read once before any restriction. Reading
    the model costs ~0.8 CPU-s (an LZMA-packed NumPy archive); the lock keeps sessions that score
    at the same moment from each reading it."""
    with _loading:
        return _read_identifier()


@functools.cache
def _read_identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return identifier, frozenset(identifier.labels)


def supported_languages() -> frozenset[str]:
    """Codes py3langid can detect."""
    return _identifier()[1]


def check_languages(languages: Iterable[str]) -> tuple[str, ...]:
    """Sorted, de-duplicated codes; DataError naming any code the identifier does not know."""
    codes = tuple(sorted(set(languages)))
    unknown = [c for c in codes if c not in supported_languages()]
    if unknown:
        raise DataError(
            f"language ID cannot detect {', '.join(unknown)}; py3langid supports: "
            f"{', '.join(sorted(supported_languages()))}"
        )
    if not codes:
        raise DataError("no languages given for language ID")
    return codes


def detect(texts: Sequence[str], languages: Iterable[str]) -> list[str]:
    """Detected language of each text among `languages`; 'und' where a text has no letters."""
    codes = check_languages(languages)
    identifier = _identifier()[0]
    with _lock:
        identifier.set_languages(list(codes))
        try:
            return [identifier.classify(t)[0] if any(ch.isalpha() for ch in t) else UNDETERMINED for t in texts]
        finally:
            identifier.set_languages(None)


@dataclass(frozen=True)
class OffTargetRates:
    """Shares in [0, 1] over one direction's outputs; see the module docstring for the bases."""

    off_target: float  # vs the requested target language
    off_target_ref: float  # vs the language detected on each reference
    reference_miss: float  # references themselves not detected as the target (identifier noise)

    def to_dict(self) -> dict:
        return asdict(self)


def off_target_rates(detected: Sequence[str], reference_detected: Sequence[str], tgt_lang: str) -> OffTargetRates:
    """Off-target rates from per-sentence detections of outputs and references."""
    if len(detected) != len(reference_detected) or not detected:
        raise DataError(f"{len(detected)} detections for {len(reference_detected)} references")
    n = len(detected)
    return OffTargetRates(
        off_target=sum(d != tgt_lang for d in detected) / n,
        off_target_ref=sum(d != r for d, r in zip(detected, reference_detected)) / n,
        reference_miss=sum(r != tgt_lang for r in reference_detected) / n,
    )
