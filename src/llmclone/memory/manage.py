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
    from llmclone.training.data import check_dataset

    manifest = read_manifest(clone_dir)
    stats = check_dataset(Path(dataset_dir))
    theirs, ours = (stats.get("owner") or {}).get("key"), (manifest.get("owner") or {}).get("key")
    if theirs and ours and theirs != ours:
        raise UserError(f"{dataset_dir} is another person's dataset (its owner is not this clone's); give the dataset "
                        "this clone was trained on, or a newer export of the same account.")
    memory = Memory.build(Path(clone_dir), Path(dataset_dir), stats, contacts)
    record = manifest.get("memory") or dataclasses.asdict(RecallSettings())
    manifest["memory"] = record | {"exchanges": memory.meta["exchanges"], "chats": memory.meta["chats"]}
    write_json(Path(clone_dir) / MANIFEST, manifest)
    return memory


def show(clone_dir: Path, query: str, chat: str | None = None) -> list[dict[str, Any]]:
    """What a message `query` in `chat` would recall: the exchanges as the prompt would show them."""
    manifest = read_manifest(clone_dir)
    memory = Memory.load(Path(clone_dir))
    record = manifest.get("memory") or {}
    settings = RecallSettings(**{k: record[k] for k in ("k", "recent", "tokens") if k in record})
    key = key_of(chat) if chat else None
    history = [{"role": "user", "content": query}]
    found = [{"chat": e.chat, "start": e.start, "said": said, "owner": e.owner, "origin": e.origin}
             for e, said in memory.select(history, key, settings)]
    memory.close()
    return found


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
    gone = memory.forget(key_of(chat))
    manifest_path = Path(clone_dir) / MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("memory"):
        fresh = json.loads((Path(clone_dir) / "memory" / "memory.json").read_text(encoding="utf-8"))
        manifest["memory"] |= {"exchanges": fresh["exchanges"], "chats": fresh["chats"]}
        write_json(manifest_path, manifest)
    return gone
