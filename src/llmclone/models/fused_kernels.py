"""Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU) on a model, for training and replying on a GPU alike.

transformers writes each of these as several elementwise operations: an RMSNorm is six kernels, a rotary
embedding ten, a SwiGLU two. In a training step they are memory traffic; in a one-token decode step they are
hundreds of tiny kernels of a few microseconds each, a large share of the step (benchmarks/NOTES.md). Liger
fuses each into one. The loss stays ours (training/loss.py): Liger's cross-entropy kernels are not applied.
Where `runtime.plan` chooses them (`Runtime.kernels`): on a GPU with liger-kernel installed (`llmclone[gpu]`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def apply(model: Any) -> None:
    """Patch the model (or the model inside a peft wrapper) in place; families Liger lacks stay as they are.

    Liger also swaps the family's classes and rotary function in transformers' module, for every model of
    that family built later in the process, CPU ones too, which its Triton kernels cannot run (a clone
    trained on the GPU, then a CPU model in the same process, failed so). The classes are put back: this
    model's own layers are already patched. The rotary function, which the layers look up on each call,
    becomes Liger's for CUDA tensors and transformers' for the rest."""
    from transformers.integrations.liger import apply_liger_kernel

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules[type(base).__module__]
    saved = {name: value for name, value in vars(module).items()
             if name == "apply_rotary_pos_emb" or (isinstance(value, type) and name.endswith(("RMSNorm", "MLP")))}
    apply_liger_kernel(model, {"cross_entropy": False, "fused_linear_cross_entropy": False})
    for name, original in saved.items():
        swapped = getattr(module, name)
        if swapped is not original and name == "apply_rotary_pos_emb":
            setattr(module, name, _on_cuda(swapped, getattr(original, "plain", original)))
        elif swapped is not original:
            setattr(module, name, original)


def _on_cuda(fused: Callable[..., Any], plain: Callable[..., Any]) -> Callable[..., Any]:
    def rotary(q: Any, k: Any, *args: Any, **kwargs: Any) -> Any:
        return (fused if q.is_cuda else plain)(q, k, *args, **kwargs)

    rotary.plain = plain  # type: ignore[attr-defined]
    return rotary
