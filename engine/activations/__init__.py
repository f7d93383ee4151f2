"""Activation capture over teacher-forced parallel pairs: span masks, hooks, cached captures."""

from engine.activations.capture import (
    Capture,
    CaptureSettings,
    capture,
    capture_cached,
    capture_hooks,
    capture_key,
    language_rates,
    model_blocks,
)
from engine.activations.spans import SPANS, EncodedPair, encode_pair, encode_pairs, span_mask

__all__ = [
    "SPANS",
    "Capture",
    "CaptureSettings",
    "EncodedPair",
    "capture",
    "capture_cached",
    "capture_hooks",
    "capture_key",
    "encode_pair",
    "language_rates",
    "encode_pairs",
    "model_blocks",
    "span_mask",
]
