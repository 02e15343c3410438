"""models/fused_kernels.py on a CPU: what Liger swaps module-wide is put back, so models built later in the
process (CPU ones too) are transformers' own, while the patched model keeps its fused layers. Liger itself
is stood in for by a function that swaps the same names as liger-kernel 0.8 does (its Triton kernels need a
GPU: tests/test_gpu.py runs the real one)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_engine import _tiny_mistral
from transformers.models.mistral import modeling_mistral

from llmclone.models import fused_kernels


class _FusedNorm(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_liger_swaps_are_undone_for_models_built_later(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.integrations.liger as integration

    calls: list[str] = []

    def fused_rotary(q: Any, k: Any, cos: Any, sin: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("fused")
        return q, k

    def fake_liger(model: Any, config: dict[str, bool]) -> None:
        assert config == {"cross_entropy": False, "fused_linear_cross_entropy": False}  # the loss stays ours
        modeling_mistral.apply_rotary_pos_emb = fused_rotary
        modeling_mistral.MistralRMSNorm = _FusedNorm
        model.model.norm.fused = True  # Liger patches the instance's layers too

    for name in ("apply_rotary_pos_emb", "MistralRMSNorm", "MistralMLP"):
        monkeypatch.setattr(modeling_mistral, name, getattr(modeling_mistral, name))
    monkeypatch.setattr(integration, "apply_liger_kernel", fake_liger)
    plain_norm = modeling_mistral.MistralRMSNorm
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        before = _tiny_mistral()(ids).logits
    patched = _tiny_mistral()
    fused_kernels.apply(patched)
    fused_kernels.apply(patched)  # twice: still one level of dispatch
    assert patched.model.norm.fused
    assert modeling_mistral.MistralRMSNorm is plain_norm
    with torch.inference_mode():
        after = _tiny_mistral()(ids).logits  # built later, on the CPU: transformers' layers, its rotary
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert calls == []
    rotary = modeling_mistral.apply_rotary_pos_emb
    assert rotary.plain.__module__ == modeling_mistral.__name__  # type: ignore[attr-defined]
    cuda_like = type("CudaTensor", (), {"is_cuda": True})()  # what the dispatch reads of a tensor
    rotary(cuda_like, cuda_like, None, None)
    assert calls == ["fused"]  # CUDA tensors take Liger's kernel
