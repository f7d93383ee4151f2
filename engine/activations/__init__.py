"""Activation capture over teacher-forced parallel pairs: span masks, hooks, cached captures."""

from engine.activations.capture import (
    Capture,
    CaptureSettings,
    capture,
    capture_cached,
    capture_hooks,
    capture_key,
    model_blocks,
)
from engine.activations.conditions import CONDITIONS, condition_labels, condition_rates, dataset_condition
from engine.activations.spans import SPANS, EncodedPair, encode_pair, encode_pairs, span_mask

__all__ = [
    "CONDITIONS",
    "SPANS",
    "Capture",
    "CaptureSettings",
    "EncodedPair",
    "capture",
    "capture_cached",
    "capture_hooks",
    "capture_key",
    "condition_labels",
    "condition_rates",
    "dataset_condition",
    "encode_pair",
    "encode_pairs",
    "model_blocks",
    "span_mask",
]
