"""The original LLMClone library's entry points, kept so its users' code runs unchanged."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from llmclone.dataset.ingest import IngestOptions, ingest
from llmclone.dataset.io import read_jsonl
from llmclone.errors import UserError

OUTPUT_FORMATS = ("dataset", "jsonl", "messages")


def process_tg_data(file_path: str | Path, user: str | None = None, output_format: str = "dataset",
                    **options: Any) -> Any:
    """Read a Telegram export and return its training samples (the train split).

    `user` picks the owner (id or display name; default: the export's account). `output_format`:
    "dataset" → a Hugging Face `datasets.Dataset` with a `messages` column; "jsonl" → the JSONL text;
    "messages" → a list of message lists. Extra keyword arguments are `IngestOptions` fields.
    """
    if output_format not in OUTPUT_FORMATS:
        raise UserError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, not {output_format!r}.")
    with tempfile.TemporaryDirectory(prefix="llmclone-") as tmp:
        out = Path(tmp) / "dataset"
        ingest([file_path], out, IngestOptions(me=user, **options), progress=False)
        train = out / "train.jsonl"
        if output_format == "jsonl":
            return train.read_text(encoding="utf-8")
        rows = list(read_jsonl(train))
    if output_format == "messages":
        return [row["messages"] for row in rows]
    from datasets import Dataset

    return Dataset.from_list(rows)
