"""How surprised a model is by a real reply: the tokens a reply is scored on, encoded exactly as in training."""

from __future__ import annotations

from typing import Any


def reply_tokens(tokenizer: Any, chat_format: Any, context: list[dict[str, str]], reply: str,
                 max_length: int = 1024, recall: Any = None) -> tuple[list[int], list[bool]]:
    """Token ids of `context` + the owner's `reply`, and a mask of the reply's tokens (and its end-of-turn
    token): only the last run of owner tokens counts, earlier owner turns are context here."""
    ids, mask = chat_format.encode(tokenizer, [*context, {"role": "assistant", "content": reply}], max_length, recall)
    end = len(mask)
    while end > 0 and not mask[end - 1]:
        end -= 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    keep = [max(start, 1) <= p < end for p in range(len(ids))]  # the first token has nothing to predict it
    return ids, keep
