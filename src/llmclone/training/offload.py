"""Gradient checkpointing with each layer's input parked in host memory until the backward pass needs it.

Checkpointing keeps one tensor per decoder layer (its input hidden states) and recomputes the rest; on a 7B
model at 8,192 tokens per micro-step those inputs are 32 × 64 MiB = 2 GiB of GPU memory. Here they are copied
to pinned host memory on a side stream while the next layers compute, and copied back one layer ahead of the
backward pass, so the copies hide behind the matmuls (the idea Unsloth calls offloaded checkpointing).
transformers' own `offload=True` uses `save_on_cpu`, whose copies run on the compute stream and stall it.

The layer input is the only tensor the non-reentrant checkpoint saves in the outer graph (everything inside
the layer is recomputed), so the hooks below see exactly those; small tensors stay where they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.utils.checkpoint import checkpoint

MIN_BYTES = 1 << 20  # smaller tensors are not worth a copy


class _Parked:
    """One layer input in host memory, with the copy back to the device started at most once ahead of use."""

    def __init__(self, host: torch.Tensor, device: torch.device, copied: Any, stream: Any, previous: _Parked | None):
        self.host, self.device, self.copied, self.stream = host, device, copied, stream
        self.previous = previous  # the layer before: its input is needed right after this one's backward
        self.fetched: torch.Tensor | None = None
        self.ready: Any = None
        self.used = False

    def prefetch(self) -> None:
        if self.fetched is not None:
            return
        if self.stream is None:  # host-only run (tests): a plain copy
            self.fetched = self.host.clone()
            return
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(self.copied)
            self.fetched = self.host.to(self.device, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record(self.stream)

    def take(self) -> torch.Tensor:
        self.prefetch()
        tensor, self.fetched, self.used = self.fetched, None, True
        assert tensor is not None
        if self.stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(self.ready)
            tensor.record_stream(current)  # allocated on the side stream, freed after use on this one
        return tensor


class Offloader:
    """The checkpoint function to give transformers' layers: `layer._gradient_checkpointing_func = Offloader()`.

    `min_bytes=0` with CPU tensors parks copies too (how the tests exercise the prefetch chain without a GPU).
    """

    def __init__(self, min_bytes: int = MIN_BYTES) -> None:
        self.min_bytes = min_bytes
        self.parked = 0  # tensors sent to host memory so far (for tests and curiosity)
        self._last: _Parked | None = None
        self._streams: dict[torch.device, Any] = {}

    def __call__(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        with saved_tensors_hooks(self._pack, self._unpack):
            return checkpoint(function, *args, use_reentrant=False, **kwargs)

    def _pack(self, tensor: torch.Tensor) -> Any:
        if tensor.numel() * tensor.element_size() < self.min_bytes or (not tensor.is_cuda and self.min_bytes):
            return tensor
        stream = None
        if tensor.is_cuda:
            stream = self._streams.get(tensor.device)
            if stream is None:
                stream = self._streams[tensor.device] = torch.cuda.Stream(tensor.device)
            stream.wait_stream(torch.cuda.current_stream(tensor.device))  # the tensor is written by then
            with torch.cuda.stream(stream):
                host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                host.copy_(tensor, non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(stream)
            tensor.record_stream(stream)  # its memory is not reused before the copy has read it
        else:
            host, copied = tensor.clone(), None
        previous = self._last if self._last is not None and not self._last.used else None
        self._last = _Parked(host, tensor.device, copied, stream, previous)
        self.parked += 1
        return self._last

    def _unpack(self, packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        tensor = packed.take()
        if packed.previous is not None:  # backward runs the layers in reverse: fetch the next one now
            packed.previous.prefetch()
            packed.previous = None
        return tensor


def enable(model: Any, offloader: Offloader) -> int:
    """Turn on checkpointing with parked layer inputs in every decoder layer of `model`; returns how many."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = offloader
    return len(layers)
