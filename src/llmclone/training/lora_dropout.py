"""LoRA dropout that keeps no dropped copy of the input for the backward pass.

peft computes `lora_B(lora_A(dropout(x)))` per adapted projection, so each of q, k, v and o saves its own
dropped input plus a dropout mask: 1.5 copies of a hidden state per projection, ~48 KB per token per layer
on a 7B model (~25% of what a checkpointed layer holds during its backward pass). Here dropout and `lora_A`
are one autograd function that saves `x` itself (q, k and v share it, and the attention output that o reads is
saved by the attention already) and the random generator's state, and redraws the mask in the backward pass.
Same masks, same LoRA, same numbers; one more dropout kernel per projection, and less memory.

On a CPU the masks come from PCG64 (numpy) instead: torch's CPU generator (mt19937) is several times slower
per mask, and a training step of the embedded model draws 72 of them (benchmarks/NOTES.md, "Behind the
code"). Same Bernoulli(1 - p) keep rate (to 1/65,536), seeded from torch's generator, so `torch.manual_seed`
and resumed runs still repeat them. There the 1-byte mask is kept for the backward pass rather than redrawn
(memory is rarely what limits a CPU run; a redraw costs time).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


_LEVELS = 1 << 16


def cpu_keep_mask(shape: torch.Size, p: float, seed: int) -> torch.Tensor:
    """A Bernoulli(1 - p) keep-mask from 16-bit PCG64 draws (a drop when the draw is below p * 65,536)."""
    count = math.prod(shape)
    draws = np.random.PCG64(seed).random_raw((count + 3) // 4).view(np.uint16)[:count]  # 4 draws per 64 bits
    return torch.from_numpy(draws >= round(p * _LEVELS)).view(shape)


class _DroppedProjection(torch.autograd.Function):
    """y = dropout(x) @ w.T, with the generator state kept instead of the mask: the backward pass replays it.

    The same fused dropout kernel as `F.dropout`, drawing from the same generator in the same order, so the masks
    are the ones peft's dropout would have drawn (and a gradient-checkpoint recompute replays them too).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, p: float, cpu_masks: str) -> torch.Tensor:
        """`cpu_masks`: "pcg64" (cpu_keep_mask), or "torch": the GPU path's generator replay on a CPU too."""
        ctx.p = p
        ctx.seed = None
        if x.device.type == "cpu" and cpu_masks == "pcg64":
            # one draw from torch's generator: a gradient-checkpoint recompute (generator restored) draws the same
            ctx.seed = int(torch.randint(0, 2**62, ()).item())
            keep = cpu_keep_mask(x.shape, p, ctx.seed)
            out = F.linear(torch.where(keep, x, 0), weight.to(x.dtype)) * (1 / (1 - p))  # scaled where it is r wide
            ctx.save_for_backward(x, weight, keep)
        else:
            ctx.rng = _rng_state(x.device)
            dropped, _ = torch.ops.aten.native_dropout(x, p, True)
            out = F.linear(dropped, weight.to(x.dtype))
            ctx.save_for_backward(x, weight)
        # Under autocast the next layer casts as it likes; without, keep the adapter's dtype as peft would.
        return out if torch.is_autocast_enabled(x.device.type) else out.to(weight.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        if ctx.seed is not None:
            return _pcg64_backward(ctx, *ctx.saved_tensors, grad)
        x, weight = ctx.saved_tensors
        now = _rng_state(x.device)
        _set_rng_state(ctx.rng, x.device)
        dropped, keep = torch.ops.aten.native_dropout(x, ctx.p, True)
        _set_rng_state(now, x.device)
        grad = grad.to(x.dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.native_dropout_backward(F.linear(grad, weight.T.to(x.dtype)), keep,
                                                            1 / (1 - ctx.p))
        if ctx.needs_input_grad[1]:
            grad_w = (grad.flatten(0, -2).T @ dropped.flatten(0, -2)).to(weight.dtype)
        return grad_x, grad_w, None, None


def _pcg64_backward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor, grad: torch.Tensor
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
    grad = grad.to(x.dtype) * (1 / (1 - ctx.p))
    grad_x = grad_w = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.where(keep, F.linear(grad, weight.T.to(x.dtype)), 0)
    if ctx.needs_input_grad[1]:
        grad_w = (grad.flatten(0, -2).T @ torch.where(keep, x, 0).flatten(0, -2)).to(weight.dtype)
    return grad_x, grad_w, None, None


class DroppedLinear(nn.Linear):
    """peft's `lora_A` with the adapter's dropout folded in (training mode only; state dict unchanged)."""

    p = 0.0
    cpu_masks = "pcg64"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:  # as peft would (its input cast is off for this layer)
            return super().forward(x if torch.is_autocast_enabled(x.device.type) else x.to(self.weight.dtype))
        return _DroppedProjection.apply(x, self.weight, self.p, self.cpu_masks)


def fold_dropout(model: nn.Module, cpu_masks: str = "pcg64") -> int:
    """Fold every LoRA dropout of `model` (a peft model) into its `lora_A`; returns how many were folded.
    `cpu_masks`: how masks are drawn on a CPU (TrainPlan.cpu_masks)."""
    folded = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict) or getattr(module, "lora_variant", None):
            continue  # not a LoRA layer, or DoRA & co., which use the dropout themselves
        for name, dropout in list(dropouts.items()):
            lora_a = module.lora_A[name]
            if not isinstance(dropout, nn.Dropout) or dropout.p == 0 or type(lora_a) is not nn.Linear:
                continue
            lora_a.__class__ = DroppedLinear
            lora_a.p, lora_a.cpu_masks = dropout.p, cpu_masks
            dropouts[name] = nn.Identity()
            # Keep x as it comes (the same tensor for q, k and v): the function casts only for its matmul.
            module.cast_input_dtype_enabled = False
            folded += 1
    return folded
