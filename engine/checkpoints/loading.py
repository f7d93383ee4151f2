"""Loading a checkpoint into a live `transformers` model: local files, safetensors, no remote code."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from engine.checkpoints.checkpoint import Checkpoint, open_checkpoint
from engine.device import resolve_device

# transformers builds a model under process-wide patches: while from_pretrained runs,
# PreTrainedModel.tie_weights and torch's init functions are no-ops for every thread, and
# no_init_weights swaps them the same way. Two threads building at once (two dashboard sessions,
# or a merge next to the prefetch worker) saw each other's patches: a merge's tie_weights() did
# nothing and its lm_head stayed untied. Every model construction in the engine holds this lock.
MODEL_CONSTRUCTION_LOCK = threading.Lock()


def default_dtype(device: torch.device) -> torch.dtype | str:
    """float32 on CPU (half-precision matmuls there are slow and lossy); the stored dtype on CUDA."""
    return torch.float32 if device.type == "cpu" else "auto"


def load_tokenizer(checkpoint: Checkpoint):
    import transformers  # here, not at module level: merges and listings never need it

    return transformers.AutoTokenizer.from_pretrained(checkpoint.path, local_files_only=True, trust_remote_code=False)


def load_model(path: str | Path | Checkpoint, device: str | torch.device | None = None, dtype=None):
    """(model in eval mode on `device`, tokenizer) for a checkpoint under the model roots."""
    import transformers

    checkpoint = path if isinstance(path, Checkpoint) else open_checkpoint(path)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    with MODEL_CONSTRUCTION_LOCK:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            checkpoint.path,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            dtype=dtype or default_dtype(device),
        )
    return model.to(device).eval(), load_tokenizer(checkpoint)
