"""Variable-length attention for packed rows: each packed sample attends only to itself, at its own cost.

Padding-free packing puts many short samples in one row. With SDPA, transformers builds a block-diagonal
causal mask over the whole row and the kernel still visits every (query, key) pair of it: at 8k tokens of
~100-token samples that is ~80× the attention work that matters. On Ampere or newer GPUs PyTorch's
`varlen_attn` (Flash Attention over cumulative sequence lengths) skips it; on CPUs each sample gets its own
causal SDPA call (benchmarks/NOTES.md, "Behind the code", has a CPU step's attention both ways). The
boundaries come from the position ids that restart at 0 for every packed sample, which transformers passes
to the attention function.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import torch.nn.functional as F

from llmclone.errors import UserError

NAME = "llmclone_varlen"


@functools.cache
def flash_available() -> bool:
    """Whether this PyTorch has varlen attention and a GPU it runs on (Flash Attention: Ampere or newer)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


@functools.cache
def _varlen_params() -> frozenset[str]:
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def sequence_bounds(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative sample boundaries (int32, starting with 0, ending with the row length) and the longest sample."""
    positions = position_ids.reshape(-1)
    starts = (positions == 0).nonzero().flatten()
    if starts.numel() == 0 or starts[0] != 0:  # a row that does not start a sample still starts a segment
        starts = torch.cat([starts.new_zeros(1), starts])
    bounds = torch.cat([starts, starts.new_full((1,), positions.numel())]).to(torch.int32)
    return bounds, int((bounds[1:] - bounds[:-1]).max())


def _flash(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: torch.Tensor, longest: int,
            scale: float | None, window: int | None) -> torch.Tensor:
    """(tokens, heads, dim) in, (tokens, heads, dim) out; causal, optionally within a sliding window."""
    from torch.nn.attention.varlen import varlen_attn

    params = _varlen_params()
    if key.size(1) != query.size(1) and "enable_gqa" not in params:
        groups = query.size(1) // key.size(1)
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    kwargs: dict[str, Any] = {"scale": scale}
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = key.size(1) != query.size(1)
    if "window_size" in params:
        kwargs["window_size"] = (window - 1 if window and window < longest else -1, 0)
    else:  # older PyTorch: causal only, so a sliding window must not cut into any sample
        if window is not None and window < longest:
            raise UserError(f"this PyTorch's varlen attention has no sliding window, and a sample ({longest} "
                            f"tokens) is longer than the model's window ({window}): upgrade PyTorch (2.10 or "
                            "newer), or set attention = 'sdpa'.")
        kwargs["is_causal"] = True
    return varlen_attn(query, key, value, bounds, bounds, longest, longest, **kwargs)


def _per_sample(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: torch.Tensor, longest: int,
                scale: float | None, window: int | None) -> torch.Tensor:
    """The same contract with one causal SDPA call per sample (CPUs and GPUs without Flash Attention)."""
    outs = []
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        mask = None
        if window is not None and window < end - start:  # causal and at most `window` back
            ones = torch.ones(end - start, end - start, dtype=torch.bool, device=query.device)
            mask = ones.tril() & ~ones.tril(-window)
        outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                                   enable_gqa=k.size(0) != q.size(0)).transpose(0, 1))
    return torch.cat(outs)


KERNELS = {"flash": _flash, "per_sample": _per_sample}


def _attention_with(kernel: Any) -> Any:
    def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                  sliding_window: int | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
        """The transformers attention interface: (batch 1, heads, tokens, dim) in, (1, tokens, heads, dim) out."""
        position_ids = kwargs.get("position_ids")
        if position_ids is None or query.size(0) != 1:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                          dropout=dropout, sliding_window=sliding_window, **kwargs)
        bounds, longest = _bounds_of(position_ids)
        out = kernel(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), bounds, longest,
                     scaling, sliding_window)
        return out.unsqueeze(0), None

    return attention


_last: tuple[torch.Tensor, tuple[torch.Tensor, int]] | None = None


def _bounds_of(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """`sequence_bounds`, once per forward pass: every layer (and its recomputation) gets the same tensor, and
    the longest sample is read back to the host, a GPU sync that should not happen per layer."""
    global _last
    if _last is None or _last[0] is not position_ids:
        _last = (position_ids, sequence_bounds(position_ids))
    return _last[1]


def implementation_name(kernel: str) -> str:
    # transformers takes any implementation named "*flash*" for its own Flash Attention and looks for it
    return f"{NAME}_{'cuda' if kernel == 'flash' else kernel}"


def register(kernel: str) -> str:
    """Make varlen attention on `kernel` ("flash" or "per_sample") loadable as `attn_implementation`; returns
    its name. The packed-row mask is not built for it (None)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    name = implementation_name(kernel)
    AttentionInterface.register(name, _attention_with(KERNELS[kernel]))
    AttentionMaskInterface.register(name, lambda *args, **kwargs: None)
    return name
