"""What `llmclone memory build|show|chats|forget` do to a clone's memory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from llmclone.dataset.io import write_json
from llmclone.errors import UserError
from llmclone.manifest import MANIFEST, read_manifest
from llmclone.memory.contacts import key_of
from llmclone.memory.recall import Memory, RecallSettings


def build(clone_dir: Path, dataset_dir: Path, contacts: Path | None = None) -> Memory:
    """Rebuild a clone's memory from its owner's dataset (the training split), with a contacts file."""
    manifest = read_manifest(clone_dir)
    stats = _dataset_stats(Path(dataset_dir))
    theirs, ours = (stats.get("owner") or {}).get("key"), (manifest.get("owner") or {}).get("key")
    if theirs and ours and theirs != ours:
        raise UserError(f"{dataset_dir} is another person's dataset (its owner is not this clone's); give the dataset "
                        "this clone was trained on, or a newer export of the same account.")
    memory = Memory.build(Path(clone_dir), Path(dataset_dir), stats, contacts)
    # a clone trained without memory gets one it may use on request (--memory on), not by default
    record = manifest.get("memory") or dataclasses.asdict(RecallSettings()) | {"trained": False}
    manifest["memory"] = record | {"exchanges": memory.meta["exchanges"], "chats": memory.meta["chats"]}
    write_json(Path(clone_dir) / MANIFEST, manifest)
    return memory


def _dataset_stats(dataset_dir: Path) -> dict[str, Any]:
    if not (dataset_dir / "train.jsonl").is_file() or not (dataset_dir / "stats.json").is_file():
        raise UserError(f"{dataset_dir} is not a dataset directory (no train.jsonl and stats.json); create one with "
                        f"llmclone ingest EXPORT --out {dataset_dir}")
    try:
        return json.loads((dataset_dir / "stats.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{dataset_dir / 'stats.json'} is corrupt; ingest the dataset again.") from None


def show(clone_dir: Path, query: str, chat: str | None = None) -> list[dict[str, Any]]:
    """What a message `query` in `chat` would recall: the exchanges as the prompt would show them."""
    manifest = read_manifest(clone_dir)
    memory = Memory.load(Path(clone_dir))
    record = manifest.get("memory") or {}
    settings = RecallSettings(**{k: record[k] for k in ("k", "recent", "tokens") if k in record})
    key = key_of(chat) if chat else None
    history = [{"role": "user", "content": query}]
    try:
        return [{"chat": e.chat, "start": e.start, "said": said, "owner": e.owner, "origin": e.origin}
                for e, said in memory.select(history, key, settings)]
    finally:
        memory.close()


def chats(clone_dir: Path) -> list[dict[str, Any]]:
    read_manifest(clone_dir)
    memory = Memory.load(Path(clone_dir))
    try:
        return memory.chats()
    finally:
        memory.close()


def forget(clone_dir: Path, chat: str) -> int:
    read_manifest(clone_dir)
    memory = Memory.load(Path(clone_dir))
    try:
        gone = memory.forget(key_of(chat))
    finally:
        memory.close()
    manifest_path = Path(clone_dir) / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("memory"):
        fresh = json.loads((Path(clone_dir) / "memory" / "memory.json").read_text(encoding="utf-8"))
        manifest["memory"] |= {"exchanges": fresh["exchanges"], "chats": fresh["chats"]}
        write_json(manifest_path, manifest)
    return gone
