"""A patched system written as a Hugging Face checkpoint: the merge, patched, saved with its recipe
and its patch (which blocks and parts, from which checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from engine.errors import MergeScopeError
from engine.pipeline.systems import System


def export_patched(system: System, models, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Save the live patched model (built by the model cache) as safetensors, config, tokenizer,
    mergekit_config.yml and patch.json; written beside `out_dir` and renamed at the end, so a
    failure leaves nothing there."""
    if system.patch is None:
        raise MergeScopeError(f"{system.name}: not a patched system")
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not overwrite:
        raise MergeScopeError(f"{out_dir}: already exists; choose another folder or pass overwrite")
    loaded = models.get(system)
    patch = system.patch
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        with loaded.lock:
            loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / "mergekit_config.yml").write_text(system.recipe.to_yaml(), encoding="utf-8")
        card = {
            "merge_identity": patch.merge.identity,
            "source": str(patch.source.checkpoint.path),
            "source_fingerprint": patch.source.identity,
            "blocks": list(patch.layers.blocks),
            "parts": list(patch.layers.parts),
            "direction": system.direction,
            "identity": system.identity,
        }
        (tmp / "patch.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
