"""Decode steps as captured CUDA graphs over a static KV cache (GPU only).

One decode step of a 7B model is a few hundred small kernels; launched one by one from Python they take
longer than reading the weights (the step's real cost), so a batch-1 reply runs at a fraction of the card's
memory bandwidth. A CUDA graph replays the whole step with one launch. It needs fixed shapes and addresses:
a transformers `StaticCache` of `cache_tokens` slots per row, static input buffers, and one graph per batch
size (rows are padded up to the next power of two, so a handful of graphs serve every batch), captured per
window of cache slots as the reply grows (models/decode_window.py: a step attends over the slots in use, not
over the whole cache). A graph replays
the kernels it captured whatever Python flags say later, so graphs are kept per adapter state (`mode`: on,
off for `base=True`, merged in): switching the adapter never replays the other state's kernels.

Prefill stays eager (one call per reply, shapes vary). Any failure to capture falls back to the eager path
for the engine's lifetime, with the reason logged: replies never depend on graphs being available.

On by default on CUDA (`LLMCLONE_CUDA_GRAPHS=0` turns them off): `tests/test_gpu.py` checks on a GPU that
graph and eager decoding give the same logits step after step (the version before `_full_attention` failed it;
the fixed one passes, benchmarks/NOTES.md).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("llmclone.engine")


class GraphDecoder:
    def __init__(self, model: Any, cache_tokens: int, smallest_window: int = 256) -> None:
        from llmclone.models import decode_window

        self.model, self.cache_tokens = model, cache_tokens
        self.graphs: dict[tuple[int, Any], _Graph] = {}
        self.failed: str | None = None
        self.windows = [cache_tokens]
        if decode_window.install(model):
            self.windows = [w for w in (smallest_window << k for k in range(32)) if w < cache_tokens] + [cache_tokens]

    def start(self, input_ids: Any, attention: Any, positions: Any, max_new: int, mode: Any = None) -> _Graph | None:
        """Prefill the batch into the graph of its size; None when graphs cannot serve it (eager then)."""
        rows, width = input_ids.shape
        if self.failed is not None or width + max_new > self.cache_tokens:
            return None
        bucket = 1 << (rows - 1).bit_length()
        try:
            graph = self.graphs.get((bucket, mode))
            if graph is None:
                graph = self.graphs[bucket, mode] = _Graph(self.model, bucket, self.cache_tokens, self.windows,
                                                           self.give_up)
            graph.prefill(input_ids, attention, positions)
            return graph
        except Exception as err:  # a model whose forward cannot be captured: eager from now on
            self.give_up(err)
            return None

    def give_up(self, err: Exception) -> None:
        """Eager decoding from the next reply on (the graphs' memory freed), with the reason logged."""
        self.failed = f"{type(err).__name__}: {err}"
        self.graphs.clear()
        log.warning("CUDA graphs are off for this model (%s); decoding eagerly.", self.failed)


def _full_attention(config: Any, cache_tokens: int) -> Any:
    """The config for the graph's cache: every layer a full static layer, whose token count lives in a device
    tensor. transformers' sliding-window static layers count in a Python int, which the causal mask reads as
    the query's position: a graph would freeze it at capture and mask out every token decoded since (on an H200
    the logits drifted from eager from the third step on). A window at least as long as the cache never cuts
    anything, so such layers are full layers here, exactly; a shorter window (Gemma's 512) is refused."""
    import copy

    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    types = getattr(text, "layer_types", None) or ["sliding_attention" if window else "full_attention"] * (
        text.num_hidden_layers)
    other = sorted(set(types) - {"full_attention", "sliding_attention"})
    if other:
        raise NotImplementedError(f"{other[0]} layers")
    if "sliding_attention" in types and (window is None or window < cache_tokens):
        raise NotImplementedError(f"sliding-window layers of {window} tokens")
    full = copy.copy(text)
    full.layer_types = ["full_attention"] * len(types)
    return full


class _Graph:
    def __init__(self, model: Any, rows: int, cache_tokens: int, windows: list[int],
                 give_up: Any = None) -> None:
        import torch
        from transformers import StaticCache

        self.model, self.rows, self.cache_tokens = model, rows, cache_tokens
        device = next(model.parameters()).device
        self.cache = StaticCache(config=_full_attention(model.config, cache_tokens), max_cache_len=cache_tokens)
        self.ids = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.position = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.slot = torch.zeros((1,), dtype=torch.long, device=device)
        self.mask = torch.ones((rows, cache_tokens), dtype=torch.long, device=device)
        self.windows, self.give_up = windows, give_up
        self.steps: dict[int, Any] = {}  # window -> its captured step (.replay() writes .out)
        self.length = 0  # tokens the cache holds, on the host: which window the next step needs

    def _forward(self, **kwargs: Any) -> Any:
        return self.model(past_key_values=self.cache, use_cache=True, **kwargs).logits

    def prefill(self, input_ids: Any, attention: Any, positions: Any) -> None:
        import torch

        real, width = input_ids.shape
        pad = self.rows - real  # rows beyond the batch repeat its first row; their tokens are ignored
        if pad:
            input_ids = torch.cat([input_ids, input_ids[:1].expand(pad, -1)])
            attention = torch.cat([attention, attention[:1].expand(pad, -1)])
            positions = torch.cat([positions, positions[:1].expand(pad, -1)])
        self.real = real
        self._rewind(0)
        self.mask.fill_(1)
        self.mask[:, :width] = attention  # left padding stays masked for the whole reply
        cache_position = torch.arange(width, device=input_ids.device)
        logits = self._forward(input_ids=input_ids, attention_mask=self.mask, position_ids=positions,
                               cache_position=cache_position, logits_to_keep=1)
        self.logits = logits[:real, -1].float()
        self.position.copy_(positions[:, -1:])
        self.slot.fill_(width - 1)
        self.length = width

    def _rewind(self, length: int) -> None:
        """Set how many tokens each cache layer counts as held, in place. transformers' static layers write at
        their own running count (not at `cache_position`), so it must match `slot` before every prefill and
        after the capture's warm-up steps; the captured graph advances it on each replay."""
        import torch

        for layer in getattr(self.cache, "layers", []):
            count = getattr(layer, "cumulative_length", None)
            if isinstance(count, torch.Tensor):
                count.fill_(length)
            elif isinstance(count, int):
                layer.cumulative_length = length
            if hasattr(layer, "cumulative_length_int"):
                layer.cumulative_length_int = length

    def _capture(self, slots: int) -> Any:
        """The step attending over the first `slots` cache slots, captured."""
        import torch

        from llmclone.models.decode_window import window

        # Warm-up on a side stream, as CUDA graph capture requires; it writes the slot after the tokens held,
        # which the next real step overwrites.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), window(slots):
            for _ in range(2):
                self._forward(input_ids=self.ids, attention_mask=self.mask, position_ids=self.position,
                              cache_position=self.slot)
        torch.cuda.current_stream().wait_stream(stream)
        step = _Step(torch.cuda.CUDAGraph())
        with torch.cuda.graph(step.graph), window(slots):
            step.out = self._forward(input_ids=self.ids, attention_mask=self.mask, position_ids=self.position,
                                     cache_position=self.slot)
        return step

    def advance(self, tokens: Any) -> Any:
        import torch

        if tokens.numel() < self.rows:
            tokens = torch.cat([tokens, tokens[:1].expand(self.rows - tokens.numel())])
        self.ids.copy_(tokens[:, None])
        self.slot += 1
        self.position += 1
        slots = next(w for w in self.windows if w > self.length)
        if slots not in self.steps:
            try:
                self.steps[slots] = self._capture(slots)
            except Exception as err:  # out of memory, say, mid-reply: the rest of it runs the same step uncaptured
                self.steps[slots] = _Uncaptured(self, slots)
                if self.give_up is not None:
                    self.give_up(err)
            self._rewind(self.length)  # the warm-up and capture advanced the cache's counts
        self.steps[slots].replay()
        self.length += 1
        return self.steps[slots].out[: self.real, -1].float()


class _Step:
    def __init__(self, graph: Any) -> None:
        self.graph, self.out = graph, None

    def replay(self) -> None:
        self.graph.replay()


class _Uncaptured:
    """A window's step run eagerly on the graph's own buffers, for a reply whose capture failed midway."""

    def __init__(self, graph: _Graph, slots: int) -> None:
        self.graph, self.slots, self.out = graph, slots, None

    def replay(self) -> None:
        from llmclone.models.decode_window import window

        g = self.graph
        with window(self.slots):
            self.out = g._forward(input_ids=g.ids, attention_mask=g.mask, position_ids=g.position,
                                  cache_position=g.slot)
