"""`vocabulary.json` in a clone directory: the tokens of its training data and the base model's likely ones.

Training writes it (training/trainer.py); the llama.cpp engine's shortlist reads it (models/shortlist.py). One
line of 10-20k ids, owner-only like everything in a clone."""

from __future__ import annotations

import json
from pathlib import Path

from llmclone.dataset.io import private_umask

FILE = "vocabulary.json"


def write_vocabulary(clone_dir: Path, token_ids: list[int], likely_ids: list[int]) -> None:
    with private_umask():
        (clone_dir / FILE).write_text(json.dumps({"token_ids": token_ids, "likely_ids": likely_ids}))


def read_vocabulary(clone_dir: Path) -> tuple[list[int], list[int]]:
    """(token ids of the training data, the base model's likely ones); none for clones made before the file."""
    path = clone_dir / FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    return data.get("token_ids", []), data.get("likely_ids", [])
