"""DELLA without sign consensus. Deep et al. 2024, arXiv 2406.11617."""

from engine.merge.generalized import variant
from engine.merge.sparsify import DELLA

SPEC = variant(
    "della_linear",
    "Linear DELLA",
    "https://arxiv.org/abs/2406.11617",
    sparsifier=DELLA,
    consensus=False,
    normalize=False,
    rescale=True,
)
