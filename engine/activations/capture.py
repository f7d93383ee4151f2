"""One forward pass per batch, collecting span-pooled hidden states and gate-activation counts.

For each span (source, target) and each sentence: the mean over the span's tokens of the
embedding output (layer 0) and of every block output (layers 1 … L), the inputs of layer-wise
CKA (Kornblith et al., 2019). For each block and neuron: how many span tokens had
act(gate_proj(x)) > 0, the counts behind LAPE (Tang et al., 2024). Layer L follows Hugging Face's
`hidden_states` convention by default (the final norm applied), so results line up with code
that uses `output_hidden_states`, as the MergeScope paper's does (Gain et al., arXiv 2604.02881).

Hooks read the tensors the model computes anyway and reduce them on the spot; no full
activation tensor outlives its hook, so memory is bounded by the batch, not by n.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

import cache
from engine.activations.families import LAYOUTS, attribute, layout_of, out_features
from engine.activations.spans import SPANS, EncodedPair, encode_pairs
from engine.errors import DataError, UnsupportedModelError
from engine.parallel import ParallelSet
from engine.prompts import render_teacher_forced
from engine.settings import cache_store

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (sentences done, sentences total)


@dataclass(frozen=True)
class CaptureSettings:
    """What a capture collects; part of the cache key."""

    batch_size: int = 16
    spans: tuple[str, ...] = SPANS
    final_norm: bool = True  # layer L is norm(last block output), as in HF hidden_states

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        unknown = [s for s in self.spans if s not in SPANS]
        if unknown or not self.spans:
            raise ValueError(f"spans must be a non-empty subset of {SPANS}, got {self.spans}")

    def key_parts(self) -> dict:
        # batch_size changes padding only, never results, so it is left out of the key.
        return {"spans": list(self.spans), "final_norm": self.final_norm}


@dataclass
class Capture:
    """Per span: pooled hidden states, gate-activation counts and token counts."""

    hidden: dict[str, torch.Tensor]  # span -> (layers + 1, n_sentences, d_model) float32
    active: dict[str, torch.Tensor]  # span -> (layers, d_mlp) int64: tokens with act(gate) > 0
    tokens: dict[str, torch.Tensor]  # span -> (n_sentences,) int64: masked tokens per sentence
    languages: dict[str, str]  # span -> language code of that span's text
    meta: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        """Blocks in the model (hidden has one more entry: the embedding output)."""
        return next(iter(self.active.values())).shape[0]

    def rates(self, span: str) -> torch.Tensor:
        """Activation probability p per block and neuron over all of the span's tokens: (layers, d_mlp)."""
        return self.active[span].double() / self.tokens[span].sum().double()

    def to_entry(self) -> cache.Entry:
        tensors = {}
        for span in self.hidden:
            tensors[f"hidden.{span}"] = self.hidden[span]
            tensors[f"active.{span}"] = self.active[span]
            tensors[f"tokens.{span}"] = self.tokens[span]
        return cache.Entry(tensors=tensors, meta={"languages": self.languages, **self.meta})

    @classmethod
    def from_entry(cls, entry: cache.Entry) -> Capture:
        meta = dict(entry.meta)
        languages = meta.pop("languages")
        hidden, active, tokens = (
            {s: entry.tensors[f"{prefix}.{s}"] for s in languages} for prefix in ("hidden", "active", "tokens")
        )
        return cls(hidden, active, tokens, languages, meta)


@dataclass
class _Blocks:
    decoder: nn.Module  # runs the blocks without the LM head
    layers: list[nn.Module]
    final: nn.Module  # the module whose output is layer L
    activations: list[tuple[nn.Module, Callable | None]]  # per block: (module to hook, act to apply or None)
    d_model: int
    d_mlp: int


def model_blocks(model: nn.Module, final_norm: bool = True) -> _Blocks:
    """Locate blocks, MLP activations and the final norm through the family's layout
    (engine.activations.families); UnsupportedModelError names what is missing."""
    name = type(model).__name__
    layout = layout_of(model)
    decoder = getattr(model, layout.decoder, model)  # a bare decoder (no LM head) is its own decoder
    layers = attribute(decoder, layout.blocks)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UnsupportedModelError(
            f"{name}: no decoder block list at .{layout.decoder}.{layout.blocks}; capture reads "
            f"Llama-style models and {', '.join(sorted(LAYOUTS))}"
        )
    found = []  # per block: (first projection, activation, neurons)
    for i, layer in enumerate(layers):
        projection, act = attribute(layer, layout.projection), attribute(layer, layout.activation)
        missing = [path for path, v in ((layout.projection, projection), (layout.activation, act)) if v is None]
        if missing:
            raise UnsupportedModelError(
                f"{name}: block {i} has no {missing[0]}; neuron counts need the MLP's first projection "
                f"and its activation ({layout.activation}({layout.projection}(x)))"
            )
        found.append((projection, act, out_features(projection, layout, f"{name} block {i} {layout.projection}")))
    act_users = Counter(id(act) for _, act, _ in found)
    activations, widths = [], {width for _, _, width in found}
    for projection, act, width in found:
        if isinstance(act, nn.Module) and act_users[id(act)] == 1:
            # The activation module's own output is the neurons' activation: hooking it costs nothing extra.
            activations.append((act, None))
        elif layout.fused_gate:
            # A plain function or one module shared across blocks cannot tell blocks apart: hook the
            # projection and apply the activation ourselves, to the gate half of the fused output.
            activations.append((projection, lambda out, act=act, width=width: act(out[..., :width])))
        else:
            activations.append((projection, act))
    if len(widths) > 1:
        raise UnsupportedModelError(f"{name}: blocks have MLPs of different widths {sorted(widths)}")
    norm = attribute(decoder, layout.norm)
    if final_norm and not isinstance(norm, nn.Module):
        raise UnsupportedModelError(
            f"{name}: no final norm at .{layout.decoder}.{layout.norm}; capture with final_norm=False instead"
        )
    final = norm if final_norm else layers[-1]
    d_model = getattr(model.config, "hidden_size", None)
    if d_model is None:
        raise UnsupportedModelError(f"{name}: config lacks hidden_size")
    return _Blocks(decoder, list(layers), final, activations, int(d_model), widths.pop())


class _Recorder:
    """Reduces hooked tensors of the current batch into per-span sums; reset per batch."""

    def __init__(self, n_spans: int, n_layers: int, d_mlp: int, device: torch.device):
        self.masks: torch.Tensor | None = None  # (spans, batch, seq) float32
        self.flat_masks: torch.Tensor | None = None  # (spans, batch*seq) float32
        self.pooled: list[torch.Tensor | None] = [None] * (n_layers + 1)  # per layer (batch, spans, d_model) sums
        self.active = torch.zeros(n_spans, n_layers, d_mlp, dtype=torch.float64, device=device)

    def set_batch(self, masks: torch.Tensor) -> None:
        self.masks = masks
        self.flat_masks = masks.reshape(masks.shape[0], -1)
        self.pooled = [None] * len(self.pooled)

    def hidden(self, layer: int, h: torch.Tensor) -> None:
        # (batch, spans, seq) @ (batch, seq, d_model): span sums for every sentence in one bmm.
        self.pooled[layer] = torch.bmm(self.masks.transpose(0, 1), h.float())  # (batch, spans, d_model)

    def gate(self, layer: int, a: torch.Tensor) -> None:
        fired = (a > 0).reshape(-1, a.shape[-1]).float()  # (batch*seq, d_mlp)
        # Counts per batch are at most batch*seq, exact in float32; the running total is float64.
        self.active[:, layer] += self.flat_masks @ fired  # (spans, d_mlp)


def _output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@contextmanager
def capture_hooks(model: nn.Module, recorder: _Recorder, blocks: _Blocks) -> Iterator[None]:
    """Register the capture hooks for the duration of the block; always removes them."""
    handles = []
    try:

        def embed_hook(module, args, kwargs):
            recorder.hidden(0, args[0] if args else kwargs["hidden_states"])

        handles.append(blocks.layers[0].register_forward_pre_hook(embed_hook, with_kwargs=True))
        n_layers = len(blocks.layers)
        for i, layer in enumerate(blocks.layers[:-1]):
            handles.append(layer.register_forward_hook(lambda m, a, out, i=i: recorder.hidden(i + 1, _output(out))))
        handles.append(blocks.final.register_forward_hook(lambda m, a, out: recorder.hidden(n_layers, _output(out))))
        for i, (module, act) in enumerate(blocks.activations):
            if act is None:
                hook = lambda m, a, out, i=i: recorder.gate(i, out)  # noqa: E731
            else:
                hook = lambda m, a, out, i=i, act=act: recorder.gate(i, act(out))  # noqa: E731
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _batches(encoded: list[EncodedPair], batch_size: int) -> Iterator[list[int]]:
    # Similar lengths together keep padding (wasted compute) small; order is restored on output.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _resolve_device(model: nn.Module, device) -> torch.device:
    from engine.device import default_device, resolve_device

    device = (
        default_device() if device is None else (device if isinstance(device, torch.device) else resolve_device(device))
    )
    current = next(model.parameters()).device
    if current != device:
        log.info("moving %s from %s to %s for capture", type(model).__name__, current, device)
        model.to(device)
    return device


def make_batch(
    encoded: list[EncodedPair], spans: tuple[str, ...], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, span masks (spans, batch, seq)) for a list of pairs."""
    longest = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), longest), pad_id, dtype=torch.long)
    attention = torch.zeros(len(encoded), longest, dtype=torch.long)
    masks = torch.zeros(len(spans), len(encoded), longest, dtype=torch.float32)
    for b, e in enumerate(encoded):
        ids[b, : len(e)] = torch.tensor(e.input_ids)
        attention[b, : len(e)] = 1
        for s, span in enumerate(spans):
            masks[s, b, : len(e)] = torch.tensor(e.masks[span], dtype=torch.float32)
    return ids.to(device), attention.to(device), masks.to(device)


def capture(
    model: nn.Module,
    tokenizer,
    pairs: ParallelSet,
    settings: CaptureSettings = CaptureSettings(),
    device=None,
    progress: Progress | None = None,
) -> Capture:
    """Capture span statistics of `model` (any in-memory model, merged ones included) on `pairs`.

    The model is moved to `device` (default: engine.device's choice) and run in eval mode,
    its training flag restored afterwards. Raises DataError for spans that tokenise to nothing
    or pairs longer than the model's context, UnsupportedModelError for other architectures.
    """
    blocks = model_blocks(model, settings.final_norm)
    encoded = encode_pairs(tokenizer, pairs)
    limit = getattr(model.config, "max_position_embeddings", None)
    too_long = [i for i, e in enumerate(encoded) if limit and len(e) > limit]
    if too_long:
        raise DataError(
            f"{pairs.name or pairs.direction}: pair {too_long[0] + 1} renders to {len(encoded[too_long[0]])} tokens, "
            f"more than the model's {limit} positions"
        )
    device = _resolve_device(model, device)
    spans = settings.spans
    n, n_layers = len(encoded), len(blocks.layers)
    hidden = torch.zeros(len(spans), n_layers + 1, n, blocks.d_model)  # (spans, layers + 1, n, d_model)
    tokens = torch.tensor([[sum(e.masks[s]) for e in encoded] for s in spans], dtype=torch.long)  # (spans, n)
    recorder = _Recorder(len(spans), n_layers, blocks.d_mlp, device)
    was_training = model.training
    model.eval()
    done = 0
    try:
        with capture_hooks(model, recorder, blocks), torch.inference_mode():
            for index in _batches(encoded, settings.batch_size):
                ids, attention, masks = make_batch([encoded[i] for i in index], spans, _pad_id(tokenizer), device)
                recorder.set_batch(masks)
                # The decoder alone: the LM head's logits are never needed here.
                blocks.decoder(input_ids=ids, attention_mask=attention, use_cache=False)
                pooled = torch.stack(recorder.pooled, dim=0).cpu()  # (layers + 1, batch, spans, d_model)
                counts = tokens[:, index].T.float()  # (batch, spans)
                hidden[:, :, index] = (pooled / counts[None, :, :, None]).permute(2, 0, 1, 3)
                done += len(index)
                if progress is not None:
                    progress(done, n)
    finally:
        model.train(was_training)
    active = recorder.active.round().long().cpu()  # (spans, layers, d_mlp)
    languages = {"source": pairs.src_lang, "target": pairs.tgt_lang}
    return Capture(
        hidden={s: hidden[i] for i, s in enumerate(spans)},
        active={s: active[i] for i, s in enumerate(spans)},
        tokens={s: tokens[i] for i, s in enumerate(spans)},
        languages={s: languages[s] for s in spans},
        meta={
            "n": n,
            "layers": n_layers,
            "d_model": blocks.d_model,
            "d_mlp": blocks.d_mlp,
            "direction": pairs.direction,
            "settings": asdict(settings),
        },
    )


def tokenizer_digest(tokenizer) -> str:
    """Identifies what the tokenizer contributes to a capture: its vocabulary and chat template."""
    vocab = sorted(tokenizer.get_vocab().items())
    payload = cache.canonical_json([type(tokenizer).__name__, getattr(tokenizer, "chat_template", None) or "", vocab])
    return hashlib.sha256(payload.encode()).hexdigest()


def _device_kind(device) -> str:
    from engine.device import default_device, resolve_device

    if device is None:
        return default_device().type
    return device.type if isinstance(device, torch.device) else resolve_device(str(device)).type


def capture_key(model_id: str, tokenizer, pairs: ParallelSet, settings: CaptureSettings, device=None) -> cache.Key:
    """Cache key of a capture: model identity, tokenizer, prompt, data hash, settings, device kind.

    `device` is the one capture will run on (None: the configured default). CPU runs in float32
    and CUDA in the checkpoint's half precision, so gate signs near zero can differ: their
    captures are kept apart.
    """
    if not model_id:
        raise ValueError("capture_cached needs a model identity: a checkpoint fingerprint or a recipe hash")
    # The rendered prompt covers what neither the weights nor the data hash do: the
    # instruction wording (engine.prompts) and the chat template as this tokenizer applies it.
    sample = render_teacher_forced(tokenizer, pairs.src_lang, pairs.tgt_lang, "<source>", "<target>").text
    return cache.make_key(
        "capture",
        model=model_id,
        tokenizer=tokenizer_digest(tokenizer),
        data=pairs.content_hash(),
        prompt=hashlib.sha256(sample.encode()).hexdigest(),
        settings=settings.key_parts(),
        device=_device_kind(device),
    )


def capture_cached(
    model: nn.Module,
    tokenizer,
    pairs: ParallelSet,
    model_id: str,
    settings: CaptureSettings = CaptureSettings(),
    device=None,
    progress: Progress | None = None,
    store: cache.Store | None = None,
) -> Capture:
    """capture() through the cache, keyed by `model_id` (checkpoint fingerprint or recipe hash)."""
    store = store or cache_store()
    key = capture_key(model_id, tokenizer, pairs, settings, device)
    description = f"capture {model_id[:12]} {pairs.direction} n={len(pairs)}"
    entry = store.get_or_compute(
        key, lambda: capture(model, tokenizer, pairs, settings, device, progress).to_entry(), description
    )
    return Capture.from_entry(entry)
