"""LLMClone: turn a person's chat history into a language model that writes like them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from llmclone.api import process_tg_data


def __getattr__(name: str) -> Any:
    # The public API is imported lazily: `llmclone --help` should not pay for torch.
    if name == "process_tg_data":
        from llmclone.api import process_tg_data

        return process_tg_data
    raise AttributeError(name)


__all__ = ["process_tg_data"]
