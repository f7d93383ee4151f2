"""The zoo's parallel corpus: compositional phrases rendered from CLDR (Babel) and num2words.

A *value* is language-neutral (a number, a date, an amount in a currency, a quantity of a
unit, a time offset); each phrase kind renders it in every language. Because every language
renders the same values, one value gives a parallel pair for every direction, and splitting
by a hash of the value keeps a sentence and all its translations in the same split.

Per-language quirks handled here (num2words 0.5.14, Babel 2.19): Bengali `ordinal` returns
the cardinal, so Bengali ordinals use `ordinal_num` (words + -তম); num2words' `currency`
mixes English words into Telugu and ignores the currency in Bengali, so amounts are built
from Babel currency names instead; Russian `ordinal_num` returns an int and is never used.
Relative times (Babel format_timedelta) are left out: without rounding to the next unit they
offer only ~240 distinct values, too few for three disjoint splits.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Callable

from babel.dates import format_date
from babel.numbers import format_currency, get_currency_name
from babel.units import format_unit
from num2words import num2words

from engine.errors import DataError
from engine.parallel import ParallelSet

SPLITS = ("train", "dev", "devtest")
CURRENCIES = ("USD", "EUR", "GBP", "JPY", "INR", "RUB", "BRL", "CHF", "CNY")
UNITS = (
    "length-kilometer", "length-meter", "length-centimeter", "mass-kilogram", "mass-gram",
    "volume-liter", "duration-hour", "duration-minute", "duration-day", "duration-week",
    "speed-kilometer-per-hour", "temperature-celsius", "area-square-meter", "digital-megabyte",
)
FIRST_DATE, LAST_DATE = dt.date(1800, 1, 1), dt.date(2199, 12, 31)


def _magnitude_number(rng: random.Random, low: int, digits: int) -> int:
    """Pick the number of digits uniformly first, so small numbers are as common as large ones."""
    width = rng.randint(1, digits)
    return rng.randint(max(low, 10 ** (width - 1) if width > 1 else low), 10**width - 1)


def _random_date(rng: random.Random) -> str:
    day = rng.randint(0, (LAST_DATE - FIRST_DATE).days)
    return (FIRST_DATE + dt.timedelta(days=day)).isoformat()


def _cardinal(value, lang):
    return num2words(value, lang=lang)


def _ordinal(value, lang):
    return num2words(value, lang=lang, to="ordinal_num" if lang == "bn" else "ordinal")


def _date(length: str):
    def render(value, lang):
        return format_date(dt.date.fromisoformat(value), length, locale=lang)
    return render


def _amount_digits(value, lang):
    amount, code = value
    return format_currency(amount / 100, code, locale=lang, format_type="name")


def _amount_words(value, lang):
    amount, code = value
    return f"{num2words(amount, lang=lang)} {get_currency_name(code, count=amount, locale=lang)}"


def _quantity(value, lang):
    amount, unit = value
    return format_unit(amount, unit, length="long", locale=lang)


@dataclass(frozen=True)
class PhraseKind:
    """One family of phrases: how to draw a value and how to say it in a language."""

    name: str
    sample: Callable[[random.Random], object]
    render: Callable[[object, str], str]


KINDS = (
    PhraseKind("cardinal", lambda r: _magnitude_number(r, 0, 5), _cardinal),
    PhraseKind("ordinal", lambda r: _magnitude_number(r, 1, 4), _ordinal),
    PhraseKind("date_medium", _random_date, _date("medium")),
    PhraseKind("date_long", _random_date, _date("long")),
    PhraseKind("date_full", _random_date, _date("full")),  # weekday + date
    PhraseKind("amount_digits", lambda r: (_magnitude_number(r, 1, 7), r.choice(CURRENCIES)), _amount_digits),
    PhraseKind("amount_words", lambda r: (_magnitude_number(r, 1, 4), r.choice(CURRENCIES)), _amount_words),
    PhraseKind("quantity", lambda r: (_magnitude_number(r, 1, 4), r.choice(UNITS)), _quantity),
)


@dataclass(frozen=True)
class Phrase:
    """One value said in every language: texts[lang] is its rendering."""

    kind: str
    key: str  # canonical JSON of the value; what the split hash is taken over
    texts: dict[str, str] = field(hash=False)


def split_of(kind: str, key: str, dev_share: float, devtest_share: float) -> str:
    """Hash the value (never the text) into a split, so a value's translations share a split."""
    bucket = int(hashlib.sha256(f"{kind}:{key}".encode()).hexdigest()[:12], 16) / 16**12
    if bucket < dev_share:
        return "dev"
    if bucket < dev_share + devtest_share:
        return "devtest"
    return "train"


@dataclass(frozen=True)
class Corpus:
    """Phrases per split, in English and the target languages."""

    languages: tuple[str, ...]  # English first
    splits: dict[str, tuple[Phrase, ...]]

    def pairs(self, split: str, src_lang: str, tgt_lang: str) -> ParallelSet:
        """One direction of one split as a ParallelSet."""
        phrases = self.splits[split]
        return ParallelSet(src_lang, tgt_lang, tuple(p.texts[src_lang] for p in phrases),
                           tuple(p.texts[tgt_lang] for p in phrases), name=f"zoo {split} {src_lang}-{tgt_lang}")

    def monolingual(self, split: str, lang: str) -> list[str]:
        return [p.texts[lang] for p in self.splits[split]]

    def split_hash(self, split: str) -> str:
        """sha256 over the split's kinds, keys and texts in order."""
        rows = [[p.kind, p.key, [p.texts[lang] for lang in self.languages]] for p in self.splits[split]]
        return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()

    def content_hash(self) -> str:
        return hashlib.sha256("".join(self.split_hash(s) for s in SPLITS).encode()).hexdigest()


def build_corpus(
    targets: tuple[str, ...],
    seed: int,
    train_per_kind: int,
    dev_size: int,
    devtest_size: int,
    dev_share: float = 0.05,
    devtest_share: float = 0.05,
) -> Corpus:
    """Draw values per kind until the train split has `train_per_kind` of each; render them.

    dev and devtest keep `dev_size` / `devtest_size` phrases in all, spread evenly over kinds.
    A value whose rendering in any language equals another value's is dropped, so no source
    string has two references and no source string occurs in two splits.
    """
    languages = ("en", *targets)
    if len(set(languages)) != len(languages):
        raise DataError(f"zoo languages repeat: {languages}")
    rng = random.Random(seed)
    held_out_per_kind = {s: -(-n // len(KINDS)) for s, n in (("dev", dev_size), ("devtest", devtest_size))}
    by_split: dict[str, list[Phrase]] = {s: [] for s in SPLITS}
    seen_text: dict[tuple[str, str], str] = {}  # (lang, text) -> key of the value that owns it
    collided: set[str] = set()
    for kind in KINDS:
        wanted = {"train": train_per_kind, **held_out_per_kind}
        have = {s: 0 for s in SPLITS}
        seen_keys: set[str] = set()
        misses = 0
        while any(have[s] < wanted[s] for s in SPLITS):
            value = kind.sample(rng)
            key = json.dumps(value)
            if key in seen_keys:
                misses += 1
                if misses > 50 * (sum(wanted.values()) + 100):
                    raise DataError(f"phrase kind {kind.name}: value space too small for {wanted}")
                continue
            seen_keys.add(key)
            split = split_of(kind.name, key, dev_share, devtest_share)
            if have[split] >= wanted[split]:
                continue
            texts = {lang: " ".join(str(kind.render(value, lang)).split()) for lang in languages}
            owner = f"{kind.name}:{key}"
            clashes = {seen_text.get((lang, text)) for lang, text in texts.items()} - {None}
            if clashes:
                collided |= clashes | {owner}
                continue
            for lang, text in texts.items():
                seen_text[(lang, text)] = owner
            by_split[split].append(Phrase(kind.name, key, texts))
            have[split] += 1
    splits = {}
    for split, phrases in by_split.items():
        kept = [p for p in phrases if f"{p.kind}:{p.key}" not in collided]
        random.Random(f"{seed}:{split}").shuffle(kept)
        if split != "train":
            kept = _spread_over_kinds(kept, dev_size if split == "dev" else devtest_size)
        splits[split] = tuple(kept)
    return Corpus(languages, splits)


def _spread_over_kinds(phrases: list[Phrase], size: int) -> list[Phrase]:
    """Take phrases round-robin over kinds so every kind is in a small held-out set."""
    queues = {kind.name: [p for p in phrases if p.kind == kind.name] for kind in KINDS}
    out: list[Phrase] = []
    while len(out) < size and any(queues.values()):
        for name in queues:
            if queues[name] and len(out) < size:
                out.append(queues[name].pop(0))
    return out
