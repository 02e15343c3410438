"""An instruct clone's persona: a system prompt with the owner's name and languages.

Decided once, when the clone is trained, and recorded in its chat format (clone.json), so that training
samples and reply prompts carry the same words. Base models (the transcript format) have no system role.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from llmclone.errors import UserError
from llmclone.models.chat_format import TEMPLATE, ChatFormat

AUTO, NONE = "auto", "none"
LANGUAGES = {"ru": "Russian", "en": "English", "uk": "Ukrainian", "be": "Belarusian", "kk": "Kazakh",
             "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese", "pl": "Polish",
             "tr": "Turkish", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "ar": "Arabic", "hi": "Hindi",
             "nl": "Dutch", "sv": "Swedish", "cs": "Czech", "he": "Hebrew", "fa": "Persian", "id": "Indonesian"}


def persona_for(setting: str, chat_format: ChatFormat, owner: dict[str, Any],
                samples: Sequence[Sequence[dict[str, str]]]) -> str | None:
    """The system prompt the clone trains and replies with, or None."""
    if setting == NONE or (setting == AUTO and chat_format.kind != TEMPLATE):
        return None
    if chat_format.kind != TEMPLATE:
        raise UserError("a persona is the system prompt of an instruct model's chat template; use an instruct "
                        "model (chat_format = 'template') or persona = 'none'.")
    if setting != AUTO:
        return setting
    name = owner.get("name") or "the owner of this account"
    languages = [LANGUAGES.get(code, code) for code in owner_languages(samples)]
    said = f", in {' and '.join(languages)}" if languages else ""
    return (f"You are {name}, chatting in a messenger with people you know. Reply as {name} would{said}: "
            "in your own words and style, as briefly or at length as you usually write.")


def owner_languages(samples: Sequence[Sequence[dict[str, str]]], share: float = 0.2, chunk: int = 20,
                    most: int = 4000) -> list[str]:
    """Language codes of the owner's turns, most used first: those of at least `share` of chunks of `chunk`
    turns (one chat line is too short to classify), from at most `most` turns spread over the samples."""
    turns = [m["content"] for s in samples for m in s if m["role"] == "assistant" and m["content"].strip()]
    if not turns:
        return []
    turns = turns[:: max(1, len(turns) // most)][:most]
    import py3langid

    chunks = [" ".join(turns[i:i + chunk]) for i in range(0, len(turns), chunk)]
    counts = Counter(py3langid.classify(text)[0] for text in chunks)
    return [code for code, n in counts.most_common() if n >= share * len(chunks)]
