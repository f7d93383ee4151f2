"""zoo/manifest.json: what was built, from what, how, and how well — and a check against the files."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

from engine.errors import CheckpointError

MANIFEST_NAME = "manifest.json"
PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "babel", "num2words", "sacrebleu", "py3langid")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, keyed by its path relative to the folder."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def write_manifest(zoo_dir: Path, manifest: dict) -> Path:
    """Write atomically, so a reader never sees half a manifest."""
    path = Path(zoo_dir) / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_manifest(zoo_dir: Path) -> dict:
    path = Path(zoo_dir) / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no zoo manifest; build the zoo with `python -m engine.zoo build`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None


def verify_zoo(zoo_dir: Path) -> list[str]:
    """Problems found comparing the manifest's file hashes with the files: [] when all match."""
    zoo_dir = Path(zoo_dir)
    manifest = read_manifest(zoo_dir)
    problems = []
    recorded = {f"models/{name}/{rel}": digest for name, model in manifest["models"].items()
                for rel, digest in model["files"].items()}
    recorded.update({f"data/{rel}": digest for rel, digest in manifest["data"]["files"].items()})
    for rel, digest in recorded.items():
        path = zoo_dir / rel
        if not path.is_file():
            problems.append(f"{path}: listed in the manifest but missing")
        elif sha256_file(path) != digest:
            problems.append(f"{path}: sha256 differs from the manifest")
    on_disk = {f"models/{k}" for k in folder_hashes(zoo_dir / "models")} if (zoo_dir / "models").is_dir() else set()
    on_disk |= {f"data/{k}" for k in folder_hashes(zoo_dir / "data")} if (zoo_dir / "data").is_dir() else set()
    problems += [f"{zoo_dir / rel}: not listed in the manifest" for rel in sorted(on_disk - set(recorded))]
    return problems
