"""Talking to a clone in the terminal: `llmclone chat` (a conversation) and `llmclone reply` (one answer)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, TextIO

HELP = "/reset forgets the conversation, /regen asks for another reply, /exit quits; end a line with \\ to go on."


def read_message(lines: Iterator[str], prompt: Callable[[str], None]) -> str | None:
    """One message from the user: lines ending with a backslash continue it. None at end of input."""
    parts: list[str] = []
    prompt("you> ")
    for line in lines:
        line = line.rstrip("\n")
        if line.endswith("\\"):
            parts.append(line[:-1])
            prompt("...  ")
            continue
        parts.append(line)
        return "\n".join(parts)
    return "\n".join(parts) if parts else None


def chat_loop(clone: Any, stdin: TextIO, stdout: TextIO, name: str = "clone", **sampling: Any) -> None:
    """An interactive conversation; the clone's messages appear one by one as they are generated."""
    def say(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    say(f"Talking to {name}. {HELP}\n")
    history: list[dict[str, str]] = []
    lines = iter(stdin)
    while True:
        message = read_message(lines, say)
        if message is None or message.strip() == "/exit":
            say("\n")
            return
        command = message.strip()
        if command == "/reset":
            history.clear()
            say("(conversation forgotten)\n")
            continue
        if command == "/regen":
            if not history or history[-1]["role"] != "assistant":
                say("(nothing to regenerate yet)\n")
                continue
            history.pop()
        elif command.startswith("/"):
            say(f"(unknown command; {HELP})\n")
            continue
        elif command:
            history.append({"role": "user", "content": message})
        else:
            continue
        messages = clone.reply(history, on_message=lambda m: say(f"{name}> {m}\n"), **sampling)
        if not messages:
            say(f"{name}> (no reply)\n")
        history.append({"role": "assistant", "content": "\n".join(messages)})


def reply_once(clone: Any, text: str, as_json: bool, stdout: TextIO, **sampling: Any) -> None:
    messages = clone.reply([{"role": "user", "content": text}], **sampling)
    stdout.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n" if as_json else "\n".join(messages) + "\n")
