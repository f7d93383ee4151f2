"""Shared pieces of the SVD-based methods (TSV-Merge, Iso-C, Iso-CTS).

These methods decompose each weight matrix's task vector; what is not a weight matrix of a
block gets the fallback their papers use for non-matrix parameters: the mean task vector.
Embeddings (token and position tables, an untied lm_head) are lookup tables, not maps
between hidden spaces, so they take the fallback too; so do 1-D tensors (norms, biases).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from engine.errors import CheckpointError
from engine.merge.spec import work_dtype

# Token / position tables and output heads across families (Llama/Qwen embed_tokens, GPT-2
# wte/wpe, GPT-NeoX embed_in/embed_out, BERT-style word_embeddings, untied lm_head).
_EMBEDDING = re.compile(r"(?:^|\.)(?:embed\w*|\w*_embeddings|wte|wpe|lm_head)(?:\.|$)")


def is_embedding(tensor_name: str) -> bool:
    """Whether a tensor is an embedding table or an output head, by its checkpoint name."""
    return bool(_EMBEDDING.search(tensor_name))


def decomposes(tensor: torch.Tensor, tensor_name: str) -> bool:
    """Whether an SVD method decomposes this tensor (a 2-D weight matrix that is no embedding)."""
    return tensor.dim() == 2 and not is_embedding(tensor_name)


def task_vectors(base: torch.Tensor, models: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stacked task vectors model_i − base in the work dtype: (n_models, *shape)."""
    wd = work_dtype(base, *models)
    b = base.to(wd)
    return torch.stack([m.to(wd) - b for m in models])


def svd(x: torch.Tensor, tensor_name: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (batched over leading dimensions), retried in float64 when float32 LAPACK does not
    converge, as it can on matrices with many near-zero singular values (a task vector with the
    common subspace projected out); CheckpointError naming the tensor when float64 fails too."""
    try:
        return torch.linalg.svd(x, full_matrices=False)
    except torch.linalg.LinAlgError as err:
        failure = err
    if x.dtype != torch.float64:
        try:
            u, s, vt = torch.linalg.svd(x.double(), full_matrices=False)
            return u.to(x.dtype), s.to(x.dtype), vt.to(x.dtype)
        except torch.linalg.LinAlgError as err:
            failure = err
    raise CheckpointError(f"tensor {tensor_name!r}: the SVD of its task vectors did not converge ({failure})")


def polar(x: torch.Tensor, tensor_name: str = "") -> torch.Tensor:
    """The nearest matrix with orthonormal columns (rows, for a wide matrix): P Qᵀ from x = P S Qᵀ."""
    p, _, qt = svd(x, tensor_name)
    return p @ qt


def finish(base: torch.Tensor, merged_delta: torch.Tensor, lambda_: float) -> torch.Tensor:
    """base + λ · merged task vector, in the base's dtype."""
    return (base.to(merged_delta.dtype) + lambda_ * merged_delta).to(base.dtype)
