"""Reading a safetensors header without loading tensors, and checking the file is whole.

Format: 8-byte little-endian header length N, N bytes of JSON, then the tensor data; each
tensor's `data_offsets` are relative to the end of the header.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from engine.errors import CheckpointError

# The spec caps headers at 100 MB; anything larger is a corrupt length field.
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # safetensors dtype code: F32, F16, BF16, I64, ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


def read_header(file: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """Tensor entries and `__metadata__` of a safetensors file; CheckpointError if corrupt or truncated."""
    size = file.stat().st_size
    with file.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{file}: truncated safetensors file ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise CheckpointError(
                f"{file}: corrupt or truncated safetensors header (claims {header_len} bytes, file has {size})"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        try:
            begin, end = info["data_offsets"]
            entry = TensorEntry(
                info["dtype"], tuple(int(d) for d in info["shape"]), data_start + begin, data_start + end
            )
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{file}: corrupt safetensors header entry for tensor {name!r}") from None
        if entry.end > size:
            raise CheckpointError(
                f"{file}: truncated: tensor {name!r} ends at byte {entry.end} but the file has {size} bytes"
            )
        entries[name] = entry
    return entries, metadata
