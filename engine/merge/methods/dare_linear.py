"""DARE (linear): drop task-vector entries at random and rescale, then add. Yu et al. 2023, arXiv 2311.03099."""

from engine.merge.generalized import variant
from engine.merge.sparsify import RANDOM

SPEC = variant(
    "dare_linear",
    "Linear DARE",
    "https://arxiv.org/abs/2311.03099",
    sparsifier=RANDOM,
    consensus=False,
    normalize=False,
    rescale=True,
)
