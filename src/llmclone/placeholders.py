"""The media placeholder vocabulary, shared by ingest (training) and replying.

Non-text content is written into the text as a short tag so that the clone learns *when* its owner
sends a sticker or a photo, and so that incoming media can be shown to it the same way:

| tag                    | meaning                                   |
|------------------------|-------------------------------------------|
| `<photo>`              | a photo                                   |
| `<sticker 😀>`         | a sticker with its emoji (`<sticker>` without) |
| `<gif>`                | an animation                              |
| `<video>`              | a video file                              |
| `<video message 0:07>` | a round video message and its length      |
| `<voice 0:07>`         | a voice message and its length            |
| `<audio>`              | a music/audio file                        |
| `<file>`               | any other document                        |
| `<location>`           | a location, live location or venue        |
| `<contact>`            | a shared contact                          |
| `<poll: question>`     | a poll and its question                   |
| `<game>`, `<invoice>`, `<todo: title>`, `<media>` | rarer kinds            |

A caption follows its tag after a space: `<photo> look at this`.
Privacy redactions use the same angle-bracket style (`<email>`, `<phone>`, ... see dataset/privacy.py).
"""

from __future__ import annotations

import re


def duration(seconds: int | float | None) -> str:
    seconds = int(seconds or 0)
    return f"{seconds // 60}:{seconds % 60:02d}"


def sticker(emoji: str | None) -> str:
    return f"<sticker {emoji}>" if emoji else "<sticker>"


def voice(seconds: int | float | None) -> str:
    return f"<voice {duration(seconds)}>"


def video_message(seconds: int | float | None) -> str:
    return f"<video message {duration(seconds)}>"


def poll(question: str) -> str:
    return f"<poll: {question}>" if question else "<poll>"


def todo(title: str) -> str:
    return f"<todo: {title}>" if title else "<todo>"


def with_caption(tag: str, caption: str) -> str:
    return f"{tag} {caption}" if caption else tag


# Outgoing side: what a clone writes is sent as text, so tags become what a person would send.
MEDIA_TAG = re.compile(
    r"<(?:sticker(?: (?P<emoji>[^<>\n]{1,16}))?|photo|gif|video|video message \d+:\d\d|voice \d+:\d\d"
    r"|audio|file|location|contact|poll(?:: [^<>\n]*)?|game|invoice|todo(?:: [^<>\n]*)?|media)>"
)


def render_outgoing(text: str, keep_tags: bool = False) -> str:
    """Turn the clone's text into what can be sent: `<sticker 😀>` → 😀, other media tags dropped."""
    if keep_tags:
        return text
    out = MEDIA_TAG.sub(lambda m: m.group("emoji") or "", text)
    return re.sub(r"[ \t]{2,}", " ", out).strip()
