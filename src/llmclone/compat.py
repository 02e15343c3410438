"""The original LLMClone library's entry points, kept so its users' code runs unchanged: `process_tg_data`,
`train_clone` (and `LLMClone(CloneConfig(...))`, whose constructor takes the original settings object).

Everything here delegates to the pipeline's own stages (dataset/ingest.py, training/trainer.py, clone.py)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from llmclone.clone import LLMClone
from llmclone.dataset.ingest import IngestOptions, ingest
from llmclone.dataset.io import private_umask, read_jsonl
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
        ingest([file_path], out, IngestOptions.of(me=user, **options), progress=False)
        train = out / "train.jsonl"
        if output_format == "jsonl":
            return train.read_text(encoding="utf-8")
        rows = list(read_jsonl(train))
    if output_format == "messages":
        return [row["messages"] for row in rows]
    from datasets import Dataset

    return Dataset.from_list(rows)


def train_clone(clone: LLMClone, dataset: Any, out: str | Path | None = None, **kwargs: Any) -> LLMClone:
    """Train `clone` on a dataset (a dataset directory, or what process_tg_data returns); returns it loaded."""
    from llmclone.training.trainer import train

    out = Path(out or clone.config.output_dir or tempfile.mkdtemp(prefix="llmclone-clone-"))
    with tempfile.TemporaryDirectory(prefix="llmclone-data-") as tmp:
        data_dir = Path(dataset) if isinstance(dataset, str | Path) else _write_dataset(dataset, Path(tmp))
        train(data_dir, out, clone.config.train_config(), force=True, **kwargs)
    loaded = LLMClone.load(out, merge=False)  # keeps save() and add_adapters() working on the adapter
    clone.__dict__.update(loaded.__dict__)
    return clone


def _write_dataset(dataset: Any, tmp: Path) -> Path:
    """A Dataset with a `messages` column, or a list of message lists, as a dataset directory."""
    with private_umask(), open(tmp / "train.jsonl", "w", encoding="utf-8") as f:
        for row in dataset:
            messages = row if isinstance(row, list) else row["messages"]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return tmp
