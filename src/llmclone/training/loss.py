"""The training loss: cross-entropy on the owner's tokens, with logits computed only at those positions.

Gemma 3's output layer maps to 262k tokens; computing it for every position of a packed row is most of
a step's work on a CPU. `logits_to_keep` (a tensor of positions) makes the model project only the
hidden states whose next token is an owner token; the loss is the usual mean over those tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from trl import SFTTrainer


class CloneTrainer(SFTTrainer):
    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        labels = inputs.pop("labels")
        # Padding-free batches are one packed row: the positions whose *next* token is trained.
        targets = labels[:, 1:]
        keep = (targets[0] != -100).nonzero().flatten()
        outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
        logits = outputs.logits[0].float()
        loss = F.cross_entropy(logits, targets[0, keep], reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else keep.numel()
        loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count spans all ranks
        if model.training:
            tokens = inputs["position_ids"].size(1) if "position_ids" in inputs else inputs["input_ids"].numel()
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(
                torch.tensor(tokens, device=loss.device)).sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss
