"""LLMClone: turn a person's chat history into a language model that writes like them."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# The public API (the original library's names), imported lazily: `llmclone --help` should not pay for torch.
_EXPORTS = {
    "process_tg_data": "llmclone.compat",
    "CloneConfig": "llmclone.clone",
    "LLMClone": "llmclone.clone",
    "train_clone": "llmclone.compat",
    "UserError": "llmclone.errors",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(name)


__all__ = list(_EXPORTS)
