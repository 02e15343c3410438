"""Each sample's memory block, recalled as a reply would recall it: from conversations that began before the
sample's own, never from it or later ones (so the model learns to draw on memory, not to copy it)."""

from __future__ import annotations

from pathlib import Path

from llmclone.config import TrainConfig
from llmclone.memory.recall import Memory, RecallSettings
from llmclone.models.chat_format import Recall
from llmclone.training.data import evenly_spaced, read_keys


def recall_settings(config: TrainConfig) -> RecallSettings:
    return RecallSettings(k=config.memory_k, recent=config.memory_recent, tokens=config.memory_tokens)


def sample_recalls(memory: Memory, dataset_dir: Path, config: TrainConfig, train: list, evaluation: list
                   ) -> tuple[list[Recall | None], list[Recall | None]]:
    """Recalls for the train samples (the dataset's first; mixed-in general data gets none) and the eval
    samples (the same evenly spaced choice `training_samples` made)."""
    settings = recall_settings(config)
    train_keys = read_keys(dataset_dir / "train.jsonl")
    eval_path = dataset_dir / "eval.jsonl"
    eval_keys = evenly_spaced(read_keys(eval_path), config.max_eval_samples) if eval_path.is_file() else []
    return _recalls(memory, train, train_keys, settings), _recalls(memory, evaluation, eval_keys, settings)


def _recalls(memory: Memory, samples: list, keys: list[tuple[str, int]], settings: RecallSettings
             ) -> list[Recall | None]:
    out: list[Recall | None] = []
    for n, messages in enumerate(samples):
        if n >= len(keys):
            out.append(None)
            continue
        chat, start = keys[n]
        out.append(memory.recall(messages[:-1], chat, settings, session=start) or None)
    return out
