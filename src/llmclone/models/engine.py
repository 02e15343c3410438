"""The reply engine seam: prompt token ids in, reply token ids out, with the same stop rules for every engine.

`LLMClone` builds the prompt, trims the history and cuts stop strings once; an engine only decodes. Two
engines implement it: `TorchEngine` (models/torch_engine.py: transformers models on a CPU or GPU, several
requests decoded together in one batch) and `LlamaCppEngine` (models/llamacpp.py: llama.cpp on a CPU, one at
a time). Each request carries its own sampling settings and seed, so a reply is the same whether it was
decoded alone or beside others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from llmclone.errors import UserError


@dataclass(frozen=True)
class Sampling:
    """How a reply is drawn. Applied in this order: repetition penalty, no stop before `min_new_tokens`,
    temperature, nucleus (`top_p`); temperature 0 is greedy. `seed` makes a reply repeatable on its own
    (None: drawn from torch's global generator, so `torch.manual_seed` still makes runs repeat)."""

    temperature: float = 0.8
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_new_tokens: int = 80
    min_new_tokens: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= 2:
            raise UserError(f"temperature must be between 0 and 2, not {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], not {self.top_p}.")
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}.")
        if self.repetition_penalty <= 0:
            raise UserError(f"repetition_penalty must be positive, not {self.repetition_penalty}.")

    @classmethod
    def of(cls, settings: dict[str, Any] | None = None) -> Sampling:
        known = {k: v for k, v in (settings or {}).items() if k in cls.__dataclass_fields__ and v is not None}
        return cls(**known)

    def with_seed(self) -> Sampling:
        """This setting with a concrete seed (drawn from torch's global generator when none was given)."""
        if self.seed is not None:
            return self
        import torch

        return replace(self, seed=int(torch.randint(0, 2**31 - 1, ()).item()))


@dataclass
class Request:
    """One reply to decode. `should_stop` sees the reply so far (stop strings); `on_token` receives each token
    as it is decoded (streaming). Stop ids end the reply and are not part of it."""

    ids: list[int]
    sampling: Sampling = field(default_factory=Sampling)
    stop_ids: list[int] = field(default_factory=list)
    should_stop: Callable[[list[int]], bool] | None = None
    on_token: Callable[[int], None] | None = None
    finish_reason: str = "stop"  # set by the engine: "stop" or "length"
    cancelled: Callable[[], bool] | None = None  # polled between tokens: a client that went away


class Engine(Protocol):
    context_tokens: int  # the longest prompt it takes

    def generate(self, requests: list[Request], base: bool = False) -> list[list[int]]: ...
