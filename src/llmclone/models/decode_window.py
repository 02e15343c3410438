"""Decode attention over the cache slots in use only, for captured decode steps (models/cuda_graphs.py).

A captured step has fixed shapes, so it attends over every slot of its static KV cache (room for the longest
prompt plus the longest reply), masked, though a reply has far fewer in use; at 16 rows the cache reads, not
the weights, set the step's time. Graphs are therefore captured per window of slots (256, 512, ... up to the
cache), and while one is captured this attention cuts keys, values and mask to the window's first slots.
Slots past the tokens held are masked anyway, so a window that covers them all computes the same numbers
(tests/test_decode_window.py). The attention itself stays transformers' SDPA, which on recent versions also
runs a one-token query on the key/value heads without repeating them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

NAME = "llmclone_windowed_sdpa"
_window: int | None = None  # set only while a graph is captured; Python does not run on replay


def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if _window is not None and query.shape[2] == 1 and key.shape[2] > _window:
        key, value = key[:, :, :_window], value[:, :, :_window]
        if attention_mask is not None:
            attention_mask = attention_mask[..., :_window]
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


@contextlib.contextmanager
def window(slots: int | None) -> Iterator[None]:
    """One-token steps run inside attend over the first `slots` cache slots."""
    global _window
    before, _window = _window, slots
    try:
        yield
    finally:
        _window = before


def install(model: Any) -> bool:
    """Route a model that runs SDPA through the windowed attention (the same numbers outside `window`);
    False, and the model untouched, where it runs another attention or transformers cannot switch it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) == NAME:
        return True
    if getattr(base.config, "_attn_implementation", None) != "sdpa" or not hasattr(base, "set_attn_implementation"):
        return False
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    base.set_attn_implementation(NAME)
    return True
