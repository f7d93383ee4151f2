"""A Hugging Face checkpoint folder read lazily: config and shard headers now, tensors on demand.

Only safetensors are read (pickle-based *.bin / *.pt run code on load); tensors come from
memory-mapped shards, one shard handle open at a time, so streaming merges touch one tensor
of each input at once.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from engine.checkpoints.paths import resolve_model_path
from engine.checkpoints.safetensors_header import TensorEntry, read_header
from engine.errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_NAME = "model.safetensors.index.json"


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return data


def shard_files(folder: Path) -> list[Path]:
    """The safetensors shards of a folder: from the index when present, else every *.safetensors."""
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no weight_map")
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists shard(s) that do not exist: {', '.join(missing)}")
        return [folder / n for n in names]
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{folder}: only pickle weights ({', '.join(pickles)}); MergeScope reads safetensors only "
                "because pickles can run code when loaded. Convert with `save_pretrained(..., safe_serialization=True)`."
            )
        raise CheckpointError(f"{folder}: no *.safetensors weights found")
    return shards


# GPT-2-style configs name the shape fields differently; an absent n_inner means 4 × n_embd.
CONFIG_ALIASES = {"num_hidden_layers": "n_layer", "hidden_size": "n_embd", "intermediate_size": "n_inner"}


def config_size(config: dict, field: str) -> int:
    """A shape field (num_hidden_layers, hidden_size, intermediate_size, vocab_size) of a config.json,
    read from its text_config when it has one and under GPT-2's names; 0 when absent."""
    text_cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    value = text_cfg.get(field)
    if value is None and field in CONFIG_ALIASES:
        value = text_cfg.get(CONFIG_ALIASES[field])
        if value is None and field == "intermediate_size" and text_cfg.get("n_embd"):
            value = 4 * text_cfg["n_embd"]
    return int(value or 0)


@dataclass(frozen=True)
class Summary:
    """What the dashboard lists for a checkpoint."""

    name: str
    path: str
    architecture: str
    model_type: str
    layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    dtype: str
    parameters: int
    size_bytes: int


class Checkpoint:
    """One validated checkpoint folder under the model roots."""

    def __init__(self, path: str | Path, roots: tuple[Path, ...] | None = None):
        self.path = resolve_model_path(path, roots)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a checkpoint folder")
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{self.path}: no config.json, not a Hugging Face checkpoint")
        self.config = _read_json(config_file)
        if self.config.get("auto_map"):
            raise CheckpointError(
                f"{config_file}: declares custom modelling code (auto_map); it would need trust_remote_code, "
                "which MergeScope never enables"
            )
        self.shards = shard_files(self.path)
        self._entries: dict[str, tuple[Path, TensorEntry]] = {}
        for shard in self.shards:
            entries, _ = read_header(shard)
            for name, entry in entries.items():
                if name in self._entries:
                    raise CheckpointError(f"{shard}: tensor {name!r} also stored in {self._entries[name][0]}")
                self._entries[name] = (shard, entry)
        self._open_lock = threading.Lock()
        self._open_shard: tuple[Path, object] | None = None

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def tensor_names(self) -> list[str]:
        return list(self._entries)

    def _entry(self, name: str) -> tuple[Path, TensorEntry]:
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}") from None

    def shard_of(self, name: str) -> Path:
        return self._entry(name)[0]

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[1].shape

    def tensor_dtype(self, name: str) -> str:
        """safetensors dtype code (F32, BF16, ...)."""
        return self._entry(name)[1].dtype

    def tensor_nbytes(self, name: str) -> int:
        entry = self._entry(name)[1]
        return entry.end - entry.start

    def read_tensor(self, name: str) -> torch.Tensor:
        """One tensor, read from the memory-mapped shard that holds it."""
        shard, _ = self._entry(name)
        with self._open_lock:
            # Keep only the latest shard open: streaming reads go shard by shard.
            if self._open_shard is None or self._open_shard[0] != shard:
                self._open_shard = (shard, safe_open(str(shard), framework="pt", device="cpu"))
            handle = self._open_shard[1]
            try:
                return handle.get_tensor(name)
            except Exception as err:  # safetensors raises its own error types for damaged data
                raise CheckpointError(f"{shard}: cannot read tensor {name!r} ({err})") from None

    def close(self) -> None:
        with self._open_lock:
            self._open_shard = None

    @property
    def size_bytes(self) -> int:
        return sum(s.stat().st_size for s in self.shards)

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(entry.shape) for _, entry in self._entries.values())

    @functools.cached_property
    def fingerprint(self) -> str:
        """Content hash of the tensors (names, dtypes, shapes, bytes); remembered per shard on disk."""
        from engine.checkpoints.fingerprints import checkpoint_fingerprint

        return checkpoint_fingerprint(self)

    def entries(self) -> dict[str, tuple[Path, TensorEntry]]:
        """Tensor name → (shard, header entry), for code that reads raw bytes (fingerprinting)."""
        return dict(self._entries)

    @property
    def summary(self) -> Summary:
        cfg = self.config
        dtypes = sorted({entry.dtype for _, entry in self._entries.values()})
        return Summary(
            name=self.name,
            path=str(self.path),
            architecture=",".join(cfg.get("architectures") or [cfg.get("model_type", "unknown")]),
            model_type=str(cfg.get("model_type", "unknown")),
            layers=config_size(cfg, "num_hidden_layers"),
            hidden_size=config_size(cfg, "hidden_size"),
            intermediate_size=config_size(cfg, "intermediate_size"),
            vocab_size=config_size(cfg, "vocab_size"),
            dtype="/".join(dtypes),
            parameters=self.parameter_count,
            size_bytes=self.size_bytes,
        )


def open_checkpoint(path: str | Path, roots: tuple[Path, ...] | None = None) -> Checkpoint:
    """Open and validate a checkpoint folder (roots, safetensors only, whole headers)."""
    return Checkpoint(path, roots)


def check_finite(tensor: torch.Tensor, name: str, path: str | Path) -> None:
    """CheckpointError naming tensor and file when `tensor` holds NaN or Inf."""
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise CheckpointError(f"{path}: tensor {name!r} holds {bad} NaN/Inf value(s); refusing to use it")
