"""DARE + TIES sign consensus: drop at random, rescale, elect signs. Yu et al. 2023, arXiv 2311.03099."""

from engine.merge.generalized import variant
from engine.merge.sparsify import RANDOM

SPEC = variant(
    "dare_ties",
    "DARE TIES",
    "https://arxiv.org/abs/2311.03099",
    sparsifier=RANDOM,
    consensus=True,
    normalize=False,
    rescale=True,
)
