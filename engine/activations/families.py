"""Where each decoder family keeps what capture reads: the block list, the MLP neurons, the final norm.

The neurons of a block are the channels of its MLP's hidden activation: act(gate_proj(x)) in
gated MLPs (Llama, Mistral, Qwen2/3, Gemma2/3, OLMo2), the gate half of a fused gate_up_proj
(Phi3), and act(first projection) in non-gated MLPs (GPT-2's c_fc, GPT-NeoX's dense_h_to_4h).
LAPE (Tang et al., 2024) counts positive gate activations; in a non-gated MLP the hidden
activation is the only per-neuron activation, so it takes that role.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from engine.errors import UnsupportedModelError


@dataclass(frozen=True)
class Layout:
    """Attribute paths of one family; `decoder` from the causal LM, `blocks` and `norm` from the
    decoder, `projection` and `activation` from a block."""

    decoder: str
    blocks: str
    projection: str  # the MLP's first projection, whose output the activation reads
    activation: str
    norm: str
    fused_gate: bool = False  # projection output is [gate | up]; the neurons are its first half


LLAMA_STYLE = Layout("model", "layers", "mlp.gate_proj", "mlp.act_fn", "norm")
LAYOUTS = {  # by config.model_type; any other family is read as LLAMA_STYLE
    "phi3": Layout("model", "layers", "mlp.gate_up_proj", "mlp.activation_fn", "norm", fused_gate=True),
    "gpt2": Layout("transformer", "h", "mlp.c_fc", "mlp.act", "ln_f"),
    "gpt_neox": Layout("gpt_neox", "layers", "mlp.dense_h_to_4h", "mlp.act", "final_layer_norm"),
}


def layout_of(model: nn.Module) -> Layout:
    """The layout of `model`'s family (LLAMA_STYLE when its model_type has no entry)."""
    return LAYOUTS.get(getattr(getattr(model, "config", None), "model_type", None), LLAMA_STYLE)


def attribute(root, path: str):
    """root.a.b.c for path "a.b.c", or None where a step is missing."""
    for step in path.split("."):
        root = getattr(root, step, None)
        if root is None:
            return None
    return root


def out_features(projection: nn.Module, layout: Layout, where: str) -> int:
    """Neurons per block: the projection's output width (nn.Linear, or GPT-2's Conv1D), halved when fused."""
    width = getattr(projection, "out_features", None) or getattr(projection, "nf", None)
    if not isinstance(width, int):
        raise UnsupportedModelError(f"{where}: cannot tell the output width of {type(projection).__name__}")
    if layout.fused_gate and width % 2:
        raise UnsupportedModelError(f"{where}: fused gate/up projection has an odd width {width}")
    return width // 2 if layout.fused_gate else width
