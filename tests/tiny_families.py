"""Tiny random checkpoints of ten decoder families, as a researcher brings them: base + two
fine-tunes each, bf16, safetensors, with a tokenizer and chat template.

Each family is built by transformers' own classes from a small config, so the tensor names,
tied heads, fused projections and norm conventions are those of the real models. A fine-tune is
the base plus seeded noise (a known task vector), rounded to bf16 like the base.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from tests.tiny_models import make_tokenizer

HIDDEN, MLP, LAYERS, HEADS = 32, 64, 3, 4
TASK_VECTOR_SCALE = 0.002


def _decoder(config_class, **extra):
    """Fields shared by the Llama-style configs (hidden_size, intermediate_size, ...)."""

    def build(vocab_size: int) -> transformers.PretrainedConfig:
        fields = dict(
            vocab_size=vocab_size,
            hidden_size=HIDDEN,
            intermediate_size=MLP,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
        fields.update(extra)
        return config_class(**fields)

    return build


def _gpt2(vocab_size: int) -> transformers.PretrainedConfig:
    return transformers.GPT2Config(
        vocab_size=vocab_size,
        n_embd=HIDDEN,
        n_inner=MLP,
        n_layer=LAYERS,
        n_head=HEADS,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def _gpt_neox(vocab_size: int) -> transformers.PretrainedConfig:
    return transformers.GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=MLP,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


# family -> config builder; the head is tied where the real models tie it (Gemma, GPT-2, Qwen3 small sizes).
FAMILY_CONFIGS = {
    "llama": _decoder(transformers.LlamaConfig, tie_word_embeddings=False),
    "mistral": _decoder(transformers.MistralConfig, tie_word_embeddings=False),
    "qwen2": _decoder(transformers.Qwen2Config, tie_word_embeddings=False),
    "qwen3": _decoder(transformers.Qwen3Config, head_dim=8, tie_word_embeddings=True),
    "gemma2": _decoder(transformers.Gemma2Config, head_dim=8, query_pre_attn_scalar=8, sliding_window=64),
    "gemma3": _decoder(transformers.Gemma3TextConfig, head_dim=8, query_pre_attn_scalar=8, sliding_window=64),
    "phi3": _decoder(transformers.Phi3Config, tie_word_embeddings=False),
    "olmo2": _decoder(transformers.Olmo2Config, tie_word_embeddings=False),
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
}
FAMILIES = tuple(FAMILY_CONFIGS)
EXPERTS = ("ft1", "ft2")


def save_family(root: Path, family: str) -> Path:
    """Write `root/family/{base, ft1, ft2}` (bf16 safetensors + tokenizer) and return `root/family`."""
    folder = Path(root) / family
    tokenizer = make_tokenizer()
    config = FAMILY_CONFIGS[family](len(tokenizer))
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16).eval()
    base.generation_config.max_new_tokens = 8
    base.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    base_state = {key: value.clone() for key, value in base.state_dict().items()}
    for seed, name in enumerate(EXPERTS, start=1):
        base.load_state_dict(base_state)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for value in base.parameters():
                noise = torch.randn(value.shape, generator=generator)
                value.copy_((value.float() + TASK_VECTOR_SCALE * noise).to(torch.bfloat16))
        base.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
    return folder
