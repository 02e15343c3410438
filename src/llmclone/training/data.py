"""Dataset directory → tokenized training and evaluation sets, with the owner-only loss mask."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from llmclone.config import TrainConfig
from llmclone.errors import UserError
from llmclone.models.chat_format import ChatFormat, Recall


def check_dataset(dataset_dir: Path) -> dict[str, Any]:
    """The dataset's stats, after checking it is a dataset `llmclone ingest` wrote."""
    if not dataset_dir.is_dir():
        raise UserError(f"{dataset_dir} is not a dataset directory; create one with: llmclone ingest EXPORT --out "
                        f"{dataset_dir}")
    train = dataset_dir / "train.jsonl"
    if not train.is_file():
        raise UserError(f"{dataset_dir} has no train.jsonl; create the dataset with llmclone ingest.")
    rows = read_samples(train, limit=50)
    if not rows:
        raise UserError(f"{train} is empty; ingest chats in which you wrote something.")
    stats_path = dataset_dir / "stats.json"
    try:
        return json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.is_file() else {}
    except json.JSONDecodeError:
        raise UserError(f"{stats_path} is corrupt; ingest the dataset again.") from None


def read_samples(path: Path, limit: int | None = None) -> list[list[dict[str, str]]]:
    """The `messages` of each line, checked: roles user/assistant, text content, ending with the owner."""
    samples: list[list[dict[str, str]]] = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path}:{n} is not UTF-8 text; create the dataset with llmclone ingest, or save the "
                                "file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
                ok = isinstance(messages, list) and messages and all(
                    m["role"] in ("user", "assistant", "system") and isinstance(m["content"], str) for m in messages)
            except (json.JSONDecodeError, KeyError, TypeError):
                ok = False
            if not ok or messages[-1]["role"] != "assistant":
                raise UserError(f"{path}:{n} is not a training sample (a JSON object with 'messages', roles user/"
                                "assistant, ending with the owner's message); create the dataset with llmclone ingest.")
            samples.append(messages)
            if limit is not None and len(samples) >= limit:
                break
    return samples


def read_keys(path: Path) -> list[tuple[str, int]]:
    """(chat key, session start) of each sample, in the file's order (what memory recall needs)."""
    keys = []
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                row = json.loads(raw)
                keys.append((str(row.get("chat", "")), int(row.get("start", 0))))
    return keys


def tokenized(samples: list[list[dict[str, str]]], tokenizer: Any, chat_format: ChatFormat, max_length: int,
              recalls: list[Recall | None] | None = None) -> Any:
    """A `datasets.Dataset` of input_ids and assistant_masks, as TRL's SFTTrainer reads them; `recalls`: each
    sample's memory block (None: none)."""
    from datasets import Dataset

    ids, masks = [], []
    for n, messages in enumerate(samples):
        sample_ids, mask = chat_format.encode(tokenizer, messages, max_length, recalls[n] if recalls else None)
        if any(mask):  # a sample whose owner turn was cut away teaches nothing
            ids.append(sample_ids)
            masks.append(mask)
    return Dataset.from_dict({"input_ids": ids, "assistant_masks": masks})


def owner_tokens(train_set: Any, owner_only: bool = True) -> Any:
    """The sorted ids of the tokens the loss is taken on (the owner's), or of all tokens, in a tokenized set."""
    import numpy as np
    import torch

    ids = train_set.data.column("input_ids").combine_chunks().flatten().to_numpy()
    if owner_only:
        ids = ids[train_set.data.column("assistant_masks").combine_chunks().flatten().to_numpy().astype(bool)]
    return torch.from_numpy(np.unique(ids).astype(np.int64))


def evenly_spaced(items: list, most: int) -> list:
    """At most `most` of the items, evenly spaced: a bounded eval set still spans the held-out period."""
    if len(items) <= most:
        return items
    return [items[i * len(items) // most] for i in range(most)]


def training_samples(dataset_dir: Path, config: TrainConfig) -> tuple[list, list]:
    """Train samples (the dataset's, then the mixed-in general data) and a bounded set of eval samples."""
    train = read_samples(dataset_dir / "train.jsonl")
    eval_path = dataset_dir / "eval.jsonl"
    evaluation = read_samples(eval_path) if eval_path.is_file() else []
    evaluation = evenly_spaced(evaluation, config.max_eval_samples)
    if config.mix_data:
        path = Path(config.mix_data).expanduser()
        if not path.is_file():
            raise UserError(f"mix_data {path} does not exist; give a JSONL file of conversations.")
        general = read_samples(path)
        wanted = round(len(train) * config.mix_ratio)
        rng = random.Random(config.seed)
        train = train + [general[rng.randrange(len(general))] for _ in range(wanted)] if general else train
    return train, evaluation
