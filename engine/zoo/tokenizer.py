"""The zoo's tokenizer: byte-level BPE trained on the corpus, digits split before BPE.

Digits are always single tokens (the pilot's experts mostly erred on digits when BPE had
merged them into multi-digit pieces), and the chat template follows Qwen2.5's turn format.
"""

from __future__ import annotations

from typing import Iterable

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Qwen2.5's template reduced to what translation prompts use (no tools, no default system
# turn); the same turn markup as tests/tiny_models.CHAT_TEMPLATE, kept here because the
# engine never imports tests.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN, PAD_TOKEN = "<|im_end|>", "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> transformers.PreTrainedTokenizerFast:
    """Train byte-level BPE with `vocab_size` entries (specials and 256 bytes included)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",  # generation pads on the left; training pads by hand
    )
