"""Training the zoo's tiny Qwen2 models: pretraining the base, fine-tuning experts and joint.

Translation examples are rendered by engine.prompts exactly as evaluation renders them, and
the loss covers only the reference and the <|im_end|> that closes it, so a model learns to
translate and to stop. Monolingual examples (a few phrases of one language, one a line)
carry loss on every token: they give the base each language before any translation.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import transformers
from tqdm.auto import tqdm

from engine.prompts import render_teacher_forced
from engine.zoo.corpus import Corpus

log = logging.getLogger(__name__)
IGNORE = -100  # label for tokens that carry no loss


@dataclass(frozen=True)
class ModelShape:
    """Size of every zoo model; parameters ≈ V·d + L·(2·d² + 2·d·d_kv + 3·d·m)."""

    hidden_size: int = 128
    intermediate_size: int = 320
    num_hidden_layers: int = 8
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256


@dataclass(frozen=True)
class Schedule:
    """One training run: steps, batch, peak learning rate, and what share is translation."""

    steps: int
    batch_size: int
    lr: float
    translation_share: float = 1.0
    weight_decay: float = 0.0
    warmup_share: float = 0.05
    micro_batches: int = 1  # length-sorted slices of a batch, run in turn (see accumulate_loss)


def make_model(tokenizer, shape: ModelShape, seed: int) -> transformers.Qwen2ForCausalLM:
    """A freshly initialised Qwen2 with tied embeddings, deterministic in `seed`."""
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def encode_translation(tokenizer, src_lang: str, tgt_lang: str, source: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat-rendered pair and labels that keep only reference + <|im_end|>."""
    pair = render_teacher_forced(tokenizer, src_lang, tgt_lang, source, target)
    enc = tokenizer(pair.text, return_offsets_mapping=True, add_special_tokens=False)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    start = pair.target_span[0]
    labels, stopped = [], False
    for token, (begin, _) in zip(ids, offsets):
        keep = begin >= start and not stopped
        labels.append(token if keep else IGNORE)
        stopped = stopped or (keep and token == tokenizer.eos_token_id)
    return ids, labels


def encode_monolingual(tokenizer, lines: Sequence[str]) -> tuple[list[int], list[int]]:
    ids = tokenizer("\n".join(lines) + tokenizer.pad_token, add_special_tokens=False)["input_ids"]
    return ids, list(ids)


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int, max_len: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example (training needs no left padding)."""
    examples = [(ids[:max_len], labels[:max_len]) for ids, labels in examples]
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id)  # (batch, width)
    labels = torch.full((len(examples), width), IGNORE)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def accumulate_loss(model, examples: list[tuple[list[int], list[int]]], pad_id: int, max_len: int,
                    micro_batches: int) -> float:
    """Forward and backward one batch in length-sorted slices; returns the batch's mean token loss.

    Padding every example to the batch's longest wastes over a third of a pretraining step's
    compute (short monolingual lines next to long translation prompts). Each slice is padded to
    its own longest, and every slice's summed loss is divided by the whole batch's count of
    labelled tokens, so the accumulated gradient is the one-batch gradient (up to float rounding).
    """
    ordered = sorted(examples, key=lambda example: len(example[0]))
    size = math.ceil(len(ordered) / micro_batches)
    slices = [collate(ordered[i: i + size], pad_id, max_len) for i in range(0, len(ordered), size)]
    # The loss is over labels shifted by one: position 0 is never predicted.
    labelled = sum(int((batch["labels"][:, 1:] != IGNORE).sum()) for batch in slices)
    loss = 0.0
    for batch in slices:
        part = model(**batch, num_items_in_batch=labelled).loss
        part.backward()
        loss += part.item()
    return loss


def example_sampler(
    tokenizer, corpus: Corpus, directions: Sequence[tuple[str, str]], translation_share: float, seed: int,
    lines_per_document: int = 4,
) -> Callable[[], tuple[list[int], list[int]]]:
    """A seeded stream of training examples from the train split."""
    rng = random.Random(seed)
    phrases = corpus.splits["train"]

    def draw():
        if rng.random() < translation_share:
            src, tgt = rng.choice(directions)
            phrase = rng.choice(phrases)
            return encode_translation(tokenizer, src, tgt, phrase.texts[src], phrase.texts[tgt])
        lang = rng.choice(corpus.languages)
        return encode_monolingual(tokenizer, [rng.choice(phrases).texts[lang] for _ in range(lines_per_document)])

    return draw


def train(
    model: transformers.PreTrainedModel, draw: Callable[[], tuple[list[int], list[int]]], schedule: Schedule,
    pad_id: int, desc: str,
) -> list[float]:
    """AdamW with linear warm-up and cosine decay to a tenth; returns the loss per step."""
    model.train()
    max_len = model.config.max_position_embeddings
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=schedule.lr, betas=(0.9, 0.98),
    )
    warmup = max(1, int(schedule.warmup_share * schedule.steps))

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, schedule.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    losses = []
    bar = tqdm(range(schedule.steps), desc=desc, leave=False, mininterval=2.0)
    for _ in bar:
        loss = accumulate_loss(model, [draw() for _ in range(schedule.batch_size)], pad_id, max_len,
                               schedule.micro_batches)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    log.info("%s: %d steps, final loss %.3f", desc, schedule.steps, sum(losses[-20:]) / len(losses[-20:]))
    return losses


def save_half(model: transformers.PreTrainedModel, tokenizer, path: Path) -> None:
    """Write a Hugging Face folder with fp16 safetensors; the training copy stays fp32."""
    path.mkdir(parents=True, exist_ok=True)
    half = transformers.Qwen2ForCausalLM(model.config).to(torch.float16)
    half.load_state_dict({k: v.to(torch.float16) for k, v in model.state_dict().items()})
    half.generation_config = model.generation_config
    half.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
