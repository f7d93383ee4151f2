"""Model Breadcrumbs: drop the largest (gamma) and smallest entries. Davari & Belilovsky 2023, arXiv 2312.06795."""

from engine.merge.generalized import variant
from engine.merge.sparsify import MAGNITUDE_OUTLIERS

SPEC = variant(
    "breadcrumbs",
    "Model Breadcrumbs",
    "https://arxiv.org/abs/2312.06795",
    sparsifier=MAGNITUDE_OUTLIERS,
    consensus=False,
    normalize=False,
    rescale=False,
)
