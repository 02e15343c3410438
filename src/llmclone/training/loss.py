"""The training loss: cross-entropy on the owner's tokens, logits computed only there and a chunk at a time.

Gemma 3's output layer maps to 262k tokens; computing it for every position of a packed row is most of
a step's work on a CPU. `logits_to_keep` (a tensor of positions) makes the model project only the
hidden states whose next token is an owner token. Even those logits are large (a 1.5k-token micro-step of
Mistral holds ~0.3 GiB of them in fp32 with their gradient; Gemma ~4× that), so when the output layer is
frozen the model returns the hidden states instead and `chunked_cross_entropy` projects them a chunk at a
time, computing the gradient of the hidden states as it goes: the full logits never exist. Why not a
library's: Liger's fused linear cross-entropy is Triton, GPU only; TRL's fused LM head (`add_fused_lm_head`)
scores only the loss positions on Triton devices but every position elsewhere, which on a CPU would more
than double the output layer's cost (owner tokens are ~45% of chat tokens). This one is plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from trl import SFTTrainer

CHUNK_BYTES = 64 << 20  # fp32 logits per chunk


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy of (hidden @ weight.T) against targets; the weight is frozen."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        rows = max(1, CHUNK_BYTES // (4 * weight.size(0)))
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.size(0), rows):
            # some transformers versions upcast the "logits" (here: hidden states) to fp32; the projection
            # runs in the weight's dtype, as the output layer would
            logits = (hidden[start:start + rows].to(weight.dtype) @ weight.T).float()
            target = targets[start:start + rows]
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, target[:, None]).squeeze(1)).sum()
            if grad is not None:  # d(loss)/d(logits) = softmax - one_hot, then back through the projection
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(target.numel(), device=target.device), target] -= 1
                grad[start:start + rows] = (probs.to(weight.dtype) @ weight).to(grad.dtype)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(grad.dtype) if grad is not None else None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`F.cross_entropy(hidden @ weight.T, targets, reduction="sum")` without the logits in memory."""
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets)


def _causal_lm(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft, the model itself


def frozen_head(model: Any) -> nn.Linear | None:
    """The causal LM's output layer if the chunked loss may replace it: plain, frozen, bias-free, no soft-cap."""
    causal_lm = _causal_lm(model)
    head = causal_lm.get_output_embeddings()
    config = getattr(causal_lm, "config", None)
    text_config = config.get_text_config() if config is not None else None
    if (type(head) is not nn.Linear or head.bias is not None or head.weight.requires_grad
            or getattr(text_config, "final_logit_softcapping", None) is not None):
        return None
    return head


@contextmanager
def hidden_states_out(model: Any, head: nn.Linear) -> Iterator[None]:
    """For one forward pass, the model's "logits" are the final hidden states (the output layer is skipped)."""
    causal_lm = _causal_lm(model)
    causal_lm.set_output_embeddings(nn.Identity())
    try:
        yield
    finally:
        causal_lm.set_output_embeddings(head)


class CloneTrainer(SFTTrainer):
    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        labels = inputs.pop("labels")
        # Padding-free batches are one packed row: the positions whose *next* token is trained.
        targets = labels[:, 1:]
        keep = (targets[0] != -100).nonzero().flatten()
        unwrapped = self.accelerator.unwrap_model(model)
        head = frozen_head(unwrapped) if not return_outputs else None
        if head is not None:
            with hidden_states_out(unwrapped, head):
                outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
            loss = chunked_cross_entropy(outputs.logits[0], head.weight, targets[0, keep])
        else:
            outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
            loss = F.cross_entropy(outputs.logits[0].float(), targets[0, keep], reduction="sum")
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
