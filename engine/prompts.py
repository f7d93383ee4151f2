"""The paper's translation prompt, rendered through a model's own chat template.

One module for it so training (demo zoo), generation (evaluation) and teacher-forced capture
(CKA, neuron selectivity) all see exactly the same text.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import DataError

LANGUAGE_NAMES = {
    "en": "English",
    "es": "Spanish",
    "pt": "Portuguese",
    "fr": "French",
    "it": "Italian",
    "ca": "Catalan",
    "ro": "Romanian",
    "de": "German",
    "nl": "Dutch",
    "da": "Danish",
    "sv": "Swedish",
    "no": "Norwegian",
    "pl": "Polish",
    "cs": "Czech",
    "ru": "Russian",
    "uk": "Ukrainian",
    "hi": "Hindi",
    "bn": "Bengali",
    "ta": "Tamil",
    "te": "Telugu",
    "mr": "Marathi",
    "gu": "Gujarati",
    "kn": "Kannada",
    "ml": "Malayalam",
    "ar": "Arabic",
    "he": "Hebrew",
    "fa": "Persian",
    "tr": "Turkish",
    "fi": "Finnish",
    "hu": "Hungarian",
    "el": "Greek",
    "id": "Indonesian",
    "vi": "Vietnamese",
    "th": "Thai",
    "ja": "Japanese",
    "ko": "Korean",
    "zh": "Chinese",
}


def language_name(code: str) -> str:
    """English name of an ISO 639-1 code; DataError for codes the prompt cannot name."""
    try:
        return LANGUAGE_NAMES[code]
    except KeyError:
        known = ", ".join(sorted(LANGUAGE_NAMES))
        raise DataError(f"unknown language code {code!r}; known codes: {known}") from None


def instruction(src_lang: str, tgt_lang: str) -> str:
    """The paper's instruction line, e.g. 'Translate the following English sentence to Hindi'."""
    return f"Translate the following {language_name(src_lang)} sentence to {language_name(tgt_lang)}"


def user_message(src_lang: str, tgt_lang: str, source: str) -> str:
    """The user turn: the instruction, a newline, then the sentence."""
    return f"{instruction(src_lang, tgt_lang)}\n{source}"


def _require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(f"tokenizer {name!r} has no chat template; the paper's prompt needs one")


def render_generation_prompt(tokenizer, src_lang: str, tgt_lang: str, source: str) -> str:
    """Chat-rendered text up to the assistant turn's start, ready for greedy decoding."""
    _require_chat_template(tokenizer)
    messages = [{"role": "user", "content": user_message(src_lang, tgt_lang, source)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass(frozen=True)
class RenderedPair:
    """A teacher-forced chat and the character spans of the source and the reference in it."""

    text: str
    source_span: tuple[int, int]  # [start, end) character offsets of the source sentence
    target_span: tuple[int, int]  # [start, end) character offsets of the reference translation


def render_teacher_forced(tokenizer, src_lang: str, tgt_lang: str, source: str, target: str) -> RenderedPair:
    """Render user prompt + assistant reference; locate both sentences by character offset."""
    _require_chat_template(tokenizer)
    if not source.strip() or not target.strip():
        raise DataError("empty source or target sentence in a teacher-forced pair")
    prompt = user_message(src_lang, tgt_lang, source)
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": target}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_at = text.find(prompt)
    if prompt_at < 0:
        raise DataError("the chat template altered the user message; cannot locate the source span")
    source_start = prompt_at + len(prompt) - len(source)
    target_start = text.find(target, prompt_at + len(prompt))
    if target_start < 0:
        raise DataError("the chat template altered the assistant message; cannot locate the target span")
    return RenderedPair(
        text=text,
        source_span=(source_start, source_start + len(source)),
        target_span=(target_start, target_start + len(target)),
    )
