"""The contacts file: who each chat is to the owner, so the clone writes to each person as its owner does.

TOML, one table per person; a person may have several chats (the same contact on two messengers):

    [[contact]]
    relation = "mom"
    chats = ["telegram:123456789", "3f1c0a9b2e7d"]

A chat is named by its pseudonymous key (`llmclone memory chats CLONE` lists them) or as source:id
(a personal chat, as the export gives its id) or source:kind:id.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from pathlib import Path

from llmclone.errors import UserError
from llmclone.memory.exchanges import chat_key

_KEY = re.compile(r"[0-9a-f]{12}")


def key_of(name: str) -> str:
    """The chat key a contacts file or a command line names."""
    name = name.strip()
    if _KEY.fullmatch(name):
        return name
    parts = name.split(":")
    if len(parts) == 2 and all(parts):
        return chat_key(parts[0], "personal", parts[1])
    if len(parts) == 3 and all(parts):
        return chat_key(*parts)
    raise UserError(f"{name!r} names no chat; give its 12-character key (llmclone memory chats CLONE lists them) or "
                    "source:id, such as telegram:123456789.")


def read_contacts(path: str | Path, known: Iterable[str]) -> dict[str, str]:
    """chat key -> relation, checked against the chats the clone knows."""
    path = Path(path).expanduser()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"contacts file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"cannot read the contacts file {path} ({err}); write it as TOML.") from None
    people = raw.get("contact")
    shape = ('write [[contact]] tables, each with relation = "..." and chats = ["telegram:123", ...]')
    if set(raw) - {"contact"} or not isinstance(people, list) or not people:
        raise UserError(f"{path} holds no [[contact]] tables; {shape}.")
    known = set(known)
    relations: dict[str, str] = {}
    for n, person in enumerate(people, 1):
        relation, chats = (person.get("relation"), person.get("chats")) if isinstance(person, dict) else (None, None)
        if (not isinstance(relation, str) or not relation.strip() or not isinstance(chats, list) or not chats
                or not all(isinstance(c, str) for c in chats) or set(person) - {"relation", "chats", "name"}):
            raise UserError(f"contact {n} in {path} has the wrong shape; {shape}.")
        for name in chats:
            key = key_of(name)
            if key not in known:
                raise UserError(f"contact {n} in {path} names the chat {name!r}, which is not in this clone's "
                                "memory; check it with llmclone memory chats CLONE.")
            relations[key] = relation.strip()
    return relations
