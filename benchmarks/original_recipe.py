"""Pieces of the original article's training recipe shared by the CPU and GPU benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ORIGINAL_LORA = {"r": 8, "lora_alpha": 32, "lora_dropout": 0.05, "task_type": "CAUSAL_LM",
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def original_samples(tokenizer: Any, data: Path) -> list[list[int]]:
    """Every speaker's tokens (the original trained on all of them), cut at max_length=256."""
    from llmclone.models.chat_format import ChatFormat
    from llmclone.training.data import read_samples

    return [ChatFormat().encode(tokenizer, messages)[0][:256] for messages in read_samples(data / "train.jsonl")]


def counting_collator(tokenizer: Any) -> tuple[Any, dict[str, int]]:
    """The padding collator, counting the real (non-padding) tokens it hands out."""
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    seen = {"real": 0}

    def counting(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collator(features)
        seen["real"] += int(batch["attention_mask"].sum())
        return batch

    return counting, seen
