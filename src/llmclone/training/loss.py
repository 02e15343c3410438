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

On a CPU the training softmax may also be sampled (`SampledVocabulary`, `loss_vocabulary`): the one lever
here that changes the gradient, so the evaluation loss, always over the whole vocabulary, judges it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTTrainer

CHUNK_BYTES = 64 << 20  # fp32 logits per chunk


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy of (hidden @ weight.T) against targets; the weight is frozen."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                log_weights: torch.Tensor | None) -> torch.Tensor:
        rows = max(1, CHUNK_BYTES // (4 * weight.size(0)))
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.size(0), rows):
            # some transformers versions upcast the "logits" (here: hidden states) to fp32; the projection
            # runs in the weight's dtype, as the output layer would
            logits = (hidden[start:start + rows].to(weight.dtype) @ weight.T).float()
            if log_weights is not None:  # columns that stand for several tokens each (sampled softmax)
                logits += log_weights
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
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, None, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(grad.dtype) if grad is not None else None, None, None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """`F.cross_entropy(hidden @ weight.T + log_weights, targets, reduction="sum")` without the logits in memory."""
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, log_weights)


class SampledVocabulary:
    """A training softmax over the owner's tokens plus a fresh sample of all the others.

    The normaliser over the other ~250k tokens is estimated by importance sampling: `samples` of them are
    drawn each micro-step from `proposal` (where the base model puts its mass at the owner's positions, mixed
    half and half with uniform), each logit carrying the log-weight −log(samples · q). Unbiased for the sum, so
    the mass the base model puts on tokens the owner never writes (web text, digits, other scripts) is still
    pushed down, at a few percent of the output layer's cost. The owner's tokens are computed exactly.
    """

    def __init__(self, owner_tokens: torch.Tensor, vocab_size: int, proposal: torch.Tensor | None = None,
                 samples: int = 8192) -> None:
        self.owner_tokens = owner_tokens
        others = torch.ones(vocab_size, dtype=torch.bool)
        others[owner_tokens] = False
        self.others = others.nonzero().flatten()
        self.samples = samples
        self._index = torch.full((vocab_size,), -1, dtype=torch.long)
        self._index[owner_tokens] = torch.arange(owner_tokens.numel())
        self.use_proposal(proposal)

    def use_proposal(self, proposal: torch.Tensor | None) -> None:
        """Draw from ½ uniform + ½ `proposal` (a distribution over the whole vocabulary); uniform if None."""
        q = torch.full((self.others.numel(),), 1.0 / self.others.numel(), dtype=torch.float64)
        if proposal is not None:
            favoured = proposal.double()[self.others]
            q = 0.5 * q + 0.5 * favoured / favoured.sum().clamp(min=1e-30)
        self.q = q

    def draw(self, weight: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows of the output layer, the targets as indices into them, and each row's log-weight."""
        device = weight.device
        picked = torch.multinomial(self.q, self.samples, replacement=True)
        rows = weight[torch.cat([self.owner_tokens, self.others[picked]]).to(device)]
        log_weights = torch.zeros(rows.size(0), dtype=torch.float32)
        log_weights[self.owner_tokens.numel():] = -(self.samples * self.q[picked]).log().float()
        return rows, self._index.to(device)[targets], log_weights.to(device)


MARGINAL_POSITIONS = 512  # enough for where the base model's mass sits; each costs a 262k-wide row on Gemma
# Each chunk of the marginal streams the whole output layer from memory (671 MB on Gemma), so it takes wide
# chunks (benchmarks/NOTES.md, "Behind the code").
MARGINAL_CHUNK_BYTES = 256 << 20


@torch.no_grad()
def mean_next_token_distribution(hidden: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Mean softmax of `hidden @ weight.T` over the rows (of `hidden` itself if `weight` is None: logits).

    Logits are computed vocabulary-major (`weight @ chunk.T`, ~20% faster here than row-major), a chunk of rows
    at a time in one reused buffer: fresh buffers of this size cost more in page faults than the softmax."""
    vocab = weight.size(0) if weight is not None else hidden.size(1)
    rows = max(1, MARGINAL_CHUNK_BYTES // (4 * vocab))
    total = torch.zeros(vocab, dtype=torch.float32, device=hidden.device)
    buffer = torch.empty(vocab * min(rows, hidden.size(0)), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.size(0), rows):
        chunk = hidden[start:start + rows]
        logits = buffer[: vocab * chunk.size(0)].view(vocab, chunk.size(0))  # contiguous for the ragged last one
        if weight is not None and weight.dtype == torch.float32:
            torch.mm(weight, chunk.float().T, out=logits)
        else:
            logits.copy_((chunk.to(weight.dtype) @ weight.T).T if weight is not None else chunk.T)
        logits.sub_(logits.amax(0, keepdim=True)).exp_()
        total.addmv_(logits, logits.sum(0).reciprocal())  # each column's exp over its sum, summed over columns
    return total / max(hidden.size(0), 1)


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


MARGINAL_FILE = "owner_marginal.pt"


class CloneTrainer(SFTTrainer):
    # When set, the training softmax is sampled (TrainConfig.loss_vocabulary); evaluation is always exact.
    sampled_vocabulary: SampledVocabulary | None = None
    # When set, the trainer records the base model's mean next-token distribution at the owner's positions
    # (`owner_marginal`): the sampled softmax draws from it, the llama.cpp shortlist keeps its likely tokens.
    wants_marginal: bool = False
    owner_marginal: torch.Tensor | None = None
    # Logits only at the owner's positions, a chunk at a time, where the output layer allows (TrainPlan)
    chunked_loss: bool = True

    def _take_marginal(self, rows: torch.Tensor, weight: torch.Tensor | None) -> None:
        """From the first training micro-batch: before the first optimizer step LoRA's B matrices are zero, so
        its hidden states are the base model's, and the forward pass that made them was needed anyway (a
        separate pass over the training set would cost several times these logits: benchmarks/NOTES.md)."""
        marginal = mean_next_token_distribution(rows[:MARGINAL_POSITIONS].detach(), weight)
        if self.accelerator.num_processes > 1:  # every rank draws from the same proposal
            marginal = self.accelerator.reduce(marginal, "mean")
        self._use_marginal(marginal.cpu())

    def _use_marginal(self, marginal: torch.Tensor) -> None:
        self.owner_marginal = marginal
        if self.sampled_vocabulary is not None:
            self.sampled_vocabulary.use_proposal(marginal)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        # A resumed run's first micro-batch has trained adapters: it takes the marginal its checkpoint kept.
        if isinstance(resume_from_checkpoint, str) and (Path(resume_from_checkpoint) / MARGINAL_FILE).exists():
            self._use_marginal(torch.load(Path(resume_from_checkpoint) / MARGINAL_FILE, weights_only=True))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.owner_marginal is not None and self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            torch.save(self.owner_marginal, folder / MARGINAL_FILE)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        labels = inputs.pop("labels")
        # Padding-free batches are one packed row: the positions whose *next* token is trained.
        targets = labels[:, 1:]
        keep = (targets[0] != -100).nonzero().flatten()
        unwrapped = self.accelerator.unwrap_model(model)
        head = frozen_head(unwrapped) if self.chunked_loss and not return_outputs else None
        take_marginal = model.training and self.wants_marginal and self.owner_marginal is None and keep.numel()
        if head is not None:
            with hidden_states_out(unwrapped, head):
                outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
            if take_marginal:
                self._take_marginal(outputs.logits[0], head.weight)
            weight, target, log_weights = head.weight, targets[0, keep], None
            if self.sampled_vocabulary is not None and model.training:
                weight, target, log_weights = self.sampled_vocabulary.draw(weight, target)
            loss = chunked_cross_entropy(outputs.logits[0], weight, target, log_weights)
        else:
            outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
            if take_marginal:
                self._take_marginal(outputs.logits[0], None)
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
