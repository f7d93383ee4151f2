"""Tiny seeded Hugging Face checkpoints for tests and benchmarks: one builder, four families.

Every checkpoint is a real `save_pretrained` folder (config.json, safetensors, tokenizer with a
Qwen-style chat template), so tests exercise the same loading path as real models.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from engine.zoo.tokenizer import train_tokenizer

TRAINING_TEXT = [
    "Translate the following English sentence to German",
    "Translate the following German sentence to English",
    "twenty-one thousand three hundred and four",
    "einundzwanzigtausenddreihundertvier",
    "le vingt et un mars mille neuf cent quatre-vingt",
    "двадцать одна тысяча триста четыре",
    "একুশ হাজার তিনশো চার",
    "the first of January, nineteen ninety-nine",
    "veintiún mil trescientos cuatro euros",
]

FAMILIES = {
    "qwen2": transformers.Qwen2Config,
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "gemma": transformers.GemmaConfig,
}


def make_tokenizer(vocab_size: int = 400) -> transformers.PreTrainedTokenizerFast:
    """The zoo's tokenizer recipe (byte-level BPE, digits split, chat template) on a few lines."""
    return train_tokenizer(TRAINING_TEXT * 4, vocab_size)


def make_config(family: str = "qwen2", vocab_size: int = 400, **overrides) -> transformers.PretrainedConfig:
    """A tiny config of `family`; overrides take any config field (hidden_size, num_hidden_layers, ...)."""
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if family == "gemma":
        fields["head_dim"] = 8
    fields.update(overrides)
    return FAMILIES[family](**fields)


def make_model(
    family: str = "qwen2", seed: int = 0, vocab_size: int = 400, **overrides
) -> transformers.PreTrainedModel:
    """A randomly initialised tiny model, deterministic in `seed`."""
    config = make_config(family, vocab_size=vocab_size, **overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    return model.eval()


def save_checkpoint(
    path: Path,
    family: str = "qwen2",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    base: transformers.PreTrainedModel | None = None,
    delta_scale: float = 0.0,
    **overrides,
) -> Path:
    """Write a tiny checkpoint folder and return it.

    With `base`, the new weights are `base + delta_scale * noise(seed)`: a fine-tune-like
    expert whose task vector is known, for merge tests.
    """
    path = Path(path)
    tokenizer = make_tokenizer()
    if base is None:
        model = make_model(family, seed=seed, vocab_size=len(tokenizer), **overrides)
    else:
        model = make_model(family, seed=0, vocab_size=len(tokenizer), **overrides)
        model.load_state_dict(base.state_dict())
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(delta_scale * torch.randn(p.shape, generator=generator))
    model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    tokenizer.save_pretrained(path)
    return path
