"""TIES: trim to the largest |delta| (density), elect signs, disjoint mean. Yadav et al. 2023, arXiv 2306.01708."""

from engine.merge.generalized import variant
from engine.merge.sparsify import MAGNITUDE

SPEC = variant(
    "ties",
    "TIES",
    "https://arxiv.org/abs/2306.01708",
    sparsifier=MAGNITUDE,
    consensus=True,
    normalize=True,
    rescale=False,
)
