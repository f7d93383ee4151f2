"""Model Breadcrumbs with TIES sign consensus. Davari & Belilovsky 2023, arXiv 2312.06795."""

from engine.merge.generalized import variant
from engine.merge.sparsify import MAGNITUDE_OUTLIERS

SPEC = variant(
    "breadcrumbs_ties",
    "Model Breadcrumbs with TIES",
    "https://arxiv.org/abs/2312.06795",
    sparsifier=MAGNITUDE_OUTLIERS,
    consensus=True,
    normalize=False,
    rescale=False,
)
