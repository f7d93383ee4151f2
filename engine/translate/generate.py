"""Batched greedy translation with the paper's prompt, on a live model object.

The protocol follows Gain, Ekbal & Singh, "One Model to Translate Them All?" (arXiv 2604.02881)
and its evaluation scripts (merging/eval_en_indic.py, eval_indic_en.py): the instruction
"Translate the following <Src> sentence to <Tgt>" plus the sentence, rendered through the
model's chat template (engine.prompts), greedy decoding of up to 512 new tokens, stopped at the
end of turn; each output is cut at the first U+FFFD (a broken byte sequence), its first line
kept, stripped of whitespace and then of surrounding quote characters. Because the model is an
object, not a path, a merge built in memory is evaluated without ever touching disk.

Anything with `identity`, `cache_parts()` and `translate(sources, src_lang, tgt_lang)` is a
`Translator`; the scoring path (engine.translate.evaluate) only sees that interface, so tests
plug in stubs and sweeps plug in models that are merged only when a result is not cached.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import DynamicCache, GenerationConfig, StoppingCriteria, StoppingCriteriaList

from engine.device import default_device, resolve_device
from engine.errors import DataError, SettingsError
from engine.prompts import language_name, render_generation_prompt

log = logging.getLogger(__name__)

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>")


PAPER_MAX_NEW_TOKENS = 512  # MAX_TOKENS of the paper's merging/eval_*.py


def paper_output(text: str) -> str:
    """The paper's output (merging/eval_en_indic.py): generation stops at the stop string "</s>",
    then clean_translation cuts at the first U+FFFD, keeps the first line, strips whitespace and
    then quote characters (' and ") from both ends. Every cut keeps a prefix, so their order is free."""
    return text.split("</s>", 1)[0].split("\ufffd", 1)[0].split("\n", 1)[0].strip().strip("'\"")


def first_line(text: str) -> str:
    """The first line of an output, ignoring leading whitespace (a blank first line is not a translation)."""
    return text.lstrip().split("\n", 1)[0].strip()


# How a decoded continuation becomes the output that is scored.
POSTPROCESSING: dict[str, Callable[[str], str]] = {
    "paper": paper_output,
    "first-line": first_line,  # first non-blank line, no quote stripping or U+FFFD cut
    "none": str.strip,  # the whole continuation up to the end of turn
}


@dataclass(frozen=True)
class DecodingSettings:
    """Greedy decoding settings; `cache_parts()` is what identifies a result in the cache.

    The defaults are the paper's: up to 512 new tokens, its post-processing. The demo zoo sets a
    shorter cap (engine.settings.ZOO_MAX_NEW_TOKENS) where speed matters.
    """

    max_new_tokens: int = PAPER_MAX_NEW_TOKENS
    batch_size: int = 16
    postprocess: str = "paper"  # a key of POSTPROCESSING

    def __post_init__(self):
        for name in ("max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"decoding setting {name} must be a positive integer, got {value!r}")
        if self.postprocess not in POSTPROCESSING:
            raise SettingsError(
                f"decoding setting postprocess must be one of {', '.join(POSTPROCESSING)}, got {self.postprocess!r}"
            )

    @property
    def first_line_only(self) -> bool:
        """Whether only the first line is kept, so generation may stop once it is complete."""
        return self.postprocess != "none"

    def cache_parts(self) -> dict:
        # batch_size is left out on purpose: batched and one-by-one outputs are equal (tested),
        # so a result computed at one batch size serves every other.
        return {"decoding": "greedy", "max_new_tokens": self.max_new_tokens, "postprocess": self.postprocess}


def decoding_signature(parts: dict) -> str:
    """The decoding part of a translator's cache parts as a signature, e.g.
    'decoding:greedy|max_new_tokens:512|postprocess:paper' (empty for translators without one)."""
    return "|".join(f"{k}:{parts[k]}" for k in ("decoding", "max_new_tokens", "postprocess") if k in parts)


class Translator(Protocol):
    """What the scoring path needs from a system under test."""

    identity: str  # checkpoint fingerprint, recipe hash or stub name: the model part of cache keys

    def cache_parts(self) -> dict:
        """Everything that determines the outputs besides the data: identity and decoding settings."""
        ...

    def translate(self, sources: Sequence[str], src_lang: str, tgt_lang: str) -> list[str]:
        """One output string per source, in order."""
        ...


def prompt_signature(tokenizer) -> str:
    """Short hash of the rendered prompt (chat template + instruction): weights fingerprints do not
    cover the tokenizer files, so this keeps a changed chat template from hitting stale results."""
    rendered = render_generation_prompt(tokenizer, "en", "de", "\x00SOURCE\x00")
    return hashlib.sha256(rendered.encode()).hexdigest()[:16]


# Per-tokenizer tables of which token ids hold a newline / visible text (built once: decoding a
# 150k vocabulary one id at a time is too slow to repeat per batch).
_newline_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> 3 bool (vocab,) tensors


def _token_tables(tokenizer, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cached = _newline_tables.get(tokenizer)
    if cached is not None and cached[0].numel() >= vocab_size:
        return cached
    size = max(vocab_size, len(tokenizer))
    has_newline = torch.zeros(size, dtype=torch.bool)
    text_before_newline = torch.zeros(size, dtype=torch.bool)
    has_text = torch.ones(size, dtype=torch.bool)  # ids the tokenizer cannot decode count as text
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
    for i, piece in enumerate(pieces):
        head, newline, _ = piece.partition("\n")
        has_newline[i] = bool(newline)
        text_before_newline[i] = bool(head.strip())
        has_text[i] = bool(piece.strip())
    tables = (has_newline, text_before_newline, has_text)
    _newline_tables[tokenizer] = tables
    return tables


def _first_line_complete(
    generated: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Rows whose first non-blank line has ended: a newline token after visible text (or holding some)."""
    has_newline, text_before_newline, has_text = tables
    text = has_text[generated].long()
    text_earlier = (text.cumsum(dim=1) - text) > 0  # visible text strictly before each step
    return (has_newline[generated] & (text_earlier | text_before_newline[generated])).any(dim=1)


class _BatchProgress(StoppingCriteria):
    """Marks finished rows, and stops the whole call once half of them are finished.

    A row is finished at its end-of-turn (or pad) token, or, with `tables`, once its first line
    is complete: later lines are discarded anyway, so stopping there equals generating to the end
    and cutting. Hugging Face's generate keeps computing finished rows until the batch's longest
    output ends, and a step costs more the more rows it carries (the zoo's model on CPU: 12 ms for
    32 rows, 5 ms for one), so a few rambling outputs would make the whole batch pay for their
    length. When `split` is set the caller continues the unfinished rows in a batch of their own.
    """

    def __init__(self, generated_from: int, end_ids: torch.Tensor, tables, rows: int):
        self.generated_from = generated_from  # column of the first generated token in input_ids
        self.end_ids = end_ids
        self.tables = tables
        self.finished = torch.zeros(rows, dtype=torch.bool)
        self.split = False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        finished = self.finished | torch.isin(input_ids[:, -1].cpu(), self.end_ids)
        if self.tables is not None:  # the whole continuation: a line ends only after visible text
            finished = finished | _first_line_complete(input_ids[:, self.generated_from :].cpu(), self.tables)
        self.finished = finished
        running = int((~finished).sum())
        self.split = 0 < running <= len(finished) // 2
        return (torch.ones_like(finished) if self.split else finished).to(input_ids.device)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """End-of-turn ids: the tokenizer's eos, the chat end-of-turn markers it knows, the model's eos."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if model_eos is not None:
        ids += model_eos if isinstance(model_eos, list) else [model_eos]
    if not ids:
        raise DataError("the tokenizer has no eos token or end-of-turn marker; generation could not stop")
    return list(dict.fromkeys(ids))


def generate_token_ids(
    model,
    tokenizer,
    prompts: Sequence[str],
    settings: DecodingSettings = DecodingSettings(),
    device: torch.device | str | None = None,
) -> list[list[int]]:
    """Greedy continuations of chat-rendered prompts, each cut before its end-of-turn token and
    at most `settings.max_new_tokens` long, or as long as the model's context leaves room for.

    Prompts are sorted by length so each batch carries little padding, left-padded (decoder
    models continue from the right edge), decoded with the KV cache, and returned in input order.
    Once half of a batch's rows are finished the rest continue, with their cache, as a smaller
    batch (see _BatchProgress).
    """
    device = torch.device(device) if device is not None else default_device()
    if next(model.parameters()).device != device:
        model.to(device)
    model.eval()
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    ends = set(stops) | {pad_id}
    end_ids = torch.tensor(sorted(ends))
    # Later lines are discarded, so a row may stop once its first line is complete: with the
    # paper's post-processing (first line before any "\n") stopping after the first line that
    # holds text gives the same output as running on to the end of turn or a blank line.
    tables = _token_tables(tokenizer, model.config.vocab_size) if settings.first_line_only else None
    greedy = dict(
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=stops,
        pad_token_id=pad_id,
        temperature=None,
        top_p=None,
        top_k=None,
        return_dict_in_generate=True,
    )

    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    # As vLLM in the paper's evaluation, a row stops at the model's context even below the cap.
    context = getattr(model.config, "max_position_embeddings", None)
    budgets = [min(settings.max_new_tokens, context - len(e)) if context else settings.max_new_tokens for e in encoded]
    if budgets and min(budgets) < 1:
        i = budgets.index(min(budgets))
        raise DataError(
            f"prompt {i + 1} renders to {len(encoded[i])} tokens, the model's whole context ({context}); "
            "nothing can be generated"
        )
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    outputs: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), settings.batch_size):
        rows = order[start : start + settings.batch_size]
        batch = tokenizer.pad(
            {"input_ids": [encoded[i] for i in rows]}, padding=True, padding_side="left", return_tensors="pt"
        ).to(device)
        longest = max(budgets[i] for i in rows)
        generated = _generate_rows(model, batch["input_ids"], batch["attention_mask"], longest, greedy, end_ids, tables)
        for row, tokens in zip(rows, generated):
            tokens = tokens[: budgets[row]]
            outputs[row] = tokens[: next((k for k, t in enumerate(tokens) if t in ends), len(tokens))]
        log.debug("generated batch %d/%d", start // settings.batch_size + 1, -(-len(order) // settings.batch_size))
    return outputs


def _generate_rows(
    model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, greedy: dict, end_ids: torch.Tensor, tables
) -> list[list[int]]:
    """The generated ids of each row of a left-padded batch, end tokens and padding included.
    Each pass generates until half its rows are finished; the others go on in the next pass."""
    generated_from = ids.shape[1]
    rows = list(range(len(ids)))  # the batch rows still in play, by their place in `ids`
    generated: list[list[int]] = [[] for _ in rows]
    cache = None
    while True:
        progress = _BatchProgress(generated_from, end_ids, tables, len(rows))
        config = GenerationConfig(**greedy, max_new_tokens=max_new_tokens - (ids.shape[1] - generated_from))
        with torch.inference_mode():
            result = model.generate(
                input_ids=ids,
                attention_mask=mask,
                cache=cache,
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([progress]),
            )
        sequences = result.sequences
        for row, tokens in zip(rows, sequences[:, generated_from:].tolist()):
            generated[row] = tokens
        at_cap = sequences.shape[1] - generated_from >= max_new_tokens
        going_on = [k for k in range(len(rows)) if progress.split and not at_cap and not progress.finished[k]]
        if not going_on:
            return generated
        keep = torch.tensor(going_on, dtype=torch.long, device=ids.device)
        ids = sequences[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), sequences.shape[1] - mask.shape[1])], dim=1)[keep]
        # A dynamic cache drops the finished rows; any other kind is rebuilt from the tokens so far.
        cache = result.cache if isinstance(result.cache, DynamicCache) else None
        if cache is not None:
            cache.batch_select_indices(keep)
        rows = [rows[k] for k in going_on]


def generate_translations(
    model,
    tokenizer,
    sources: Sequence[str],
    src_lang: str,
    tgt_lang: str,
    settings: DecodingSettings = DecodingSettings(),
    device: torch.device | str | None = None,
) -> list[str]:
    """Translate `sources` from src_lang to tgt_lang with the paper's prompt; one string each."""
    language_name(src_lang), language_name(tgt_lang)  # DataError before any work
    prompts = [render_generation_prompt(tokenizer, src_lang, tgt_lang, s) for s in sources]
    ids = generate_token_ids(model, tokenizer, prompts, settings, device)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return [POSTPROCESSING[settings.postprocess](t) for t in texts]


def _device_kind(device) -> str:
    # CPU float32 and CUDA half-precision greedy outputs can differ by a token; keep them apart.
    return (resolve_device(str(device)) if device is not None else default_device()).type


class ModelTranslator:
    """A Hugging Face causal LM (loaded or merged in memory) behind the Translator interface."""

    def __init__(
        self,
        model,
        tokenizer,
        identity: str,
        settings: DecodingSettings = DecodingSettings(),
        device: torch.device | str | None = None,
    ):
        if not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "") or identity
            raise DataError(f"tokenizer of {name!r} has no chat template; the paper's prompt needs one")
        if not identity:
            raise SettingsError(
                "a ModelTranslator needs an identity (checkpoint fingerprint or recipe hash) for caching"
            )
        self.model, self.tokenizer, self.identity = model, tokenizer, identity
        self.settings, self.device = settings, device
        self.prompt = prompt_signature(tokenizer)

    def cache_parts(self) -> dict:
        return {
            "model": self.identity,
            "prompt": self.prompt,
            "device": _device_kind(self.device),
            **self.settings.cache_parts(),
        }

    def translate(self, sources: Sequence[str], src_lang: str, tgt_lang: str) -> list[str]:
        return generate_translations(
            self.model, self.tokenizer, sources, src_lang, tgt_lang, self.settings, self.device
        )


class LazyModelTranslator:
    """A Translator that loads (or merges) its model only when a translation is not cached.

    `load()` returns (model, tokenizer); `prompt` is prompt_signature() of that tokenizer (cheap to
    get from the checkpoint's tokenizer alone). Cached results need only these, so re-opening a
    finished evaluation or resuming a sweep never touches weights.
    """

    def __init__(
        self,
        identity: str,
        load: Callable[[], tuple],
        prompt: str,
        settings: DecodingSettings = DecodingSettings(),
        device: torch.device | str | None = None,
    ):
        self.identity, self._load, self.prompt = identity, load, prompt
        self.settings, self.device = settings, device
        self._inner: ModelTranslator | None = None
        self.loads = 0  # how many times the model was built: what resuming saves

    def cache_parts(self) -> dict:
        return {
            "model": self.identity,
            "prompt": self.prompt,
            "device": _device_kind(self.device),
            **self.settings.cache_parts(),
        }

    def translate(self, sources: Sequence[str], src_lang: str, tgt_lang: str) -> list[str]:
        if self._inner is None:
            model, tokenizer = self._load()
            self.loads += 1
            self._inner = ModelTranslator(model, tokenizer, self.identity, self.settings, self.device)
            if self._inner.prompt != self.prompt:
                raise DataError(f"{self.identity[:16]}: the loaded tokenizer renders a different prompt than announced")
        return self._inner.translate(sources, src_lang, tgt_lang)

    def release(self) -> None:
        """Drop the model (it is rebuilt on the next uncached translation)."""
        self._inner = None
