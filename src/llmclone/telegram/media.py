"""Incoming Telegram messages as the text the clone was trained on: media become the same placeholders."""

from __future__ import annotations

from typing import Any

from llmclone import placeholders


def aiogram_text(m: Any) -> str:
    """An aiogram Message (bot or business) as text with placeholders."""
    caption = m.caption or ""
    if m.text:
        return m.text
    if m.sticker:
        return placeholders.sticker(m.sticker.emoji)
    if m.voice:
        return placeholders.with_caption(placeholders.voice(m.voice.duration), caption)
    if m.video_note:
        return placeholders.video_message(m.video_note.duration)
    for attr, tag in (("photo", "<photo>"), ("animation", "<gif>"), ("video", "<video>"), ("audio", "<audio>"),
                      ("document", "<file>"), ("location", "<location>"), ("venue", "<location>"),
                      ("contact", "<contact>")):
        if getattr(m, attr, None):
            return placeholders.with_caption(tag, caption)
    if m.poll:
        return placeholders.poll(m.poll.question)
    return placeholders.with_caption("<media>", caption) if caption else ""


def telethon_text(m: Any) -> str:
    """A Telethon Message as text with placeholders."""
    text = m.message or ""
    if m.sticker:
        alt = next((a.alt for a in m.sticker.attributes if hasattr(a, "alt")), None)
        return placeholders.sticker(alt)
    if m.voice:
        return placeholders.with_caption(placeholders.voice(_duration(m.voice)), text)
    if m.video_note:
        return placeholders.video_message(_duration(m.video_note))
    for attr, tag in (("photo", "<photo>"), ("gif", "<gif>"), ("video", "<video>"), ("audio", "<audio>"),
                      ("geo", "<location>"), ("contact", "<contact>"), ("document", "<file>")):
        if getattr(m, attr, None):
            return placeholders.with_caption(tag, text)
    if m.poll:
        return placeholders.poll(getattr(m.poll.poll.question, "text", str(m.poll.poll.question)))
    return text


def _duration(document: Any) -> int:
    return next((int(a.duration) for a in document.attributes if hasattr(a, "duration")), 0)
