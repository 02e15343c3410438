"""KV caches of recent conversations for the llama.cpp engine.

One llama.cpp context holds one KV cache, and llama.cpp reuses it only for the longest common prefix with the
next prompt. A clone in Telegram or behind the API answers several chats in turn, so without this every switch
of chat re-evaluates the whole history (a cold reply: benchmarks/README.md, reply latency). After each reply the context's state
(its KV cells, ~18 KB per token for the embedded model) is kept in memory under its tokens; before the next
reply the state sharing the longest prefix with the new prompt is restored if it beats the live context.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from typing import Any

import numpy as np

BUDGET_BYTES = 256 * 2**20  # ~40 chats of 300 tokens for the embedded model


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class ConversationStates:
    def __init__(self, llm: Any, budget_bytes: int = BUDGET_BYTES) -> None:
        self.llm = llm
        self.budget = budget_bytes
        # tokens' bytes -> (tokens, length of the prompt they began with, llama.cpp state)
        self.saved: OrderedDict[bytes, tuple[np.ndarray, int, bytes]] = OrderedDict()

    def restore_best(self, ids: list[int]) -> None:
        """Make the context the one sharing the longest prefix with `ids`."""
        import llama_cpp

        want = np.asarray(ids, dtype=np.intc)
        best = common_prefix(np.asarray(self.llm._input_ids, dtype=np.intc), want)
        choice = None
        for key, (tokens, _, _) in self.saved.items():
            n = common_prefix(tokens, want)
            if n > best:
                best, choice = n, key
        if choice is None:
            return
        tokens, _, state = self.saved[choice]
        self.saved.move_to_end(choice)
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_set_data(self.llm._ctx.ctx, buffer, len(state)) != len(state):
            self.saved.pop(choice)  # not restorable: evaluate from scratch instead
            self.llm.reset()
            return
        self.llm.input_ids[: len(tokens)] = tokens
        self.llm.n_tokens = len(tokens)
        self.llm._requires_eval = True  # the logits are not restored: llama-cpp-python re-evaluates the last token

    def save(self, prompt_length: int) -> None:
        """Keep the live context's state (`prompt_length` of its tokens were the prompt, the rest the reply). A
        state whose whole prompt it shares is the same chat's previous turn and is dropped."""
        import llama_cpp

        tokens = np.array(self.llm._input_ids, dtype=np.intc)
        if not len(tokens):
            return
        ctx = self.llm._ctx.ctx
        size = llama_cpp.llama_state_get_size(ctx)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_get_data(ctx, buffer, size)
        for key, (older, prompt, _) in list(self.saved.items()):
            if common_prefix(older, tokens) >= prompt:
                del self.saved[key]
        self.saved[tokens.tobytes()] = (tokens, prompt_length, ctypes.string_at(buffer, written))
        while len(self.saved) > 1 and sum(len(s) for _, _, s in self.saved.values()) > self.budget:
            self.saved.popitem(last=False)  # the least recently used chat
