"""Weight-space interference of experts' task vectors, per layer, before any merge (no data needed)."""

from engine.interference.checkpoints import (
    InterferenceSettings,
    analyse_checkpoints,
    interference_profile,
)
from engine.interference.measures import TensorStats, tensor_stats
from engine.interference.profile import (
    MEASURES,
    InterferenceProfile,
    build_profile,
    neuron_set_overlap,
    with_neuron_overlap,
)

__all__ = [
    "MEASURES",
    "InterferenceProfile",
    "InterferenceSettings",
    "TensorStats",
    "analyse_checkpoints",
    "build_profile",
    "interference_profile",
    "neuron_set_overlap",
    "tensor_stats",
    "with_neuron_overlap",
]
