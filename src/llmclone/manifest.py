"""clone.json: what a clone directory is — the one artifact every stage after training loads."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from llmclone.errors import UserError

MANIFEST = "clone.json"
FORMAT_VERSION = 1


def library_versions() -> dict[str, str]:
    out = {}
    for name in ("llmclone", "torch", "transformers", "peft", "trl", "bitsandbytes"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def read_manifest(clone_dir: str | Path) -> dict[str, Any]:
    """The manifest of a clone directory, or a UserError saying what is wrong with it."""
    clone_dir = Path(clone_dir)
    path = clone_dir / MANIFEST
    if not clone_dir.is_dir():
        raise UserError(f"{clone_dir} is not a clone directory; create one with llmclone train DATASET --out {clone_dir}.")
    if not path.is_file():
        raise UserError(f"{clone_dir} has no {MANIFEST}, so it is not a clone directory (or training did not "
                        "finish); train again or pass --resume.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        version = int(manifest["format_version"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{path} is corrupt; train the clone again.") from None
    if version > FORMAT_VERSION:
        raise UserError(f"{clone_dir} was made by a newer LLMClone (format {version}); upgrade: pip install -U llmclone.")
    if not (clone_dir / "adapter" / "adapter_config.json").is_file():
        raise UserError(f"{clone_dir} has no adapter weights (adapter/); train the clone again.")
    return manifest
