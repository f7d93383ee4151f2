"""Task arithmetic: base + Σ weight_i (model_i − base). Ilharco et al. 2022, arXiv 2212.04089."""

from engine.merge.generalized import variant

SPEC = variant(
    "task_arithmetic",
    "Task Arithmetic",
    "https://arxiv.org/abs/2212.04089",
    sparsifier=None,
    consensus=False,
    normalize=False,
    rescale=False,
)
