"""Checkpoints: discovery under the model roots, lazy safetensors reading, fingerprints, checks."""

from engine.checkpoints.checkpoint import Checkpoint, Summary, check_finite, config_size, open_checkpoint
from engine.checkpoints.compat import check_compatible, compatibility_problems
from engine.checkpoints.discover import Discovery, discover_checkpoints
from engine.checkpoints.loading import load_model, load_tokenizer
from engine.checkpoints.paths import resolve_model_path


def fingerprint(path) -> str:
    """Content fingerprint of the checkpoint at `path` (see Checkpoint.fingerprint)."""
    return open_checkpoint(path).fingerprint


__all__ = [
    "Checkpoint",
    "Summary",
    "Discovery",
    "check_compatible",
    "check_finite",
    "compatibility_problems",
    "config_size",
    "discover_checkpoints",
    "fingerprint",
    "load_model",
    "load_tokenizer",
    "open_checkpoint",
    "resolve_model_path",
]
