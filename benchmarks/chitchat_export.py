"""Real human texting (PyPI `chitchat-dataset`, MIT) as a Telegram Desktop full-account export.

One prolific sender becomes the owner. Every conversation they took part in becomes a personal chat
with the other sender; `repeat` > 1 adds copies shifted by whole years with fresh peer ids, to reach
the size of a heavy user's export. Used by the ingest benchmark and the quality measurements.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path

from chitchat_dataset import Dataset

YEAR = 365 * 24 * 3600
OWNER_USER_ID = 100000001


def prolific_sender(data: dict) -> str:
    counts: Counter[str] = Counter()
    for conv in data.values():
        for burst in conv["messages"]:
            for m in burst:
                counts[m["sender"]] += 1
    return counts.most_common(1)[0][0]


def write_export(out: Path, repeat: int = 1, owner: str | None = None, all_conversations: bool = False) -> dict:
    """Write `out` (result.json); returns counts. With `all_conversations`, the first sender of every
    conversation plays the owner (a bigger export); otherwise only the real owner's conversations."""
    data = Dataset()
    owner = owner or prolific_sender(data)
    peers: dict[str, int] = {}
    chats = messages = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write('{\n "about": "Here is the data you requested.",\n "personal_information": ')
        f.write(json.dumps({"user_id": OWNER_USER_ID, "first_name": "Owner", "last_name": "Chitchat"}))
        f.write(',\n "chats": {\n  "about": "This page lists all chats from this export.",\n  "list": [')
        first = True
        for copy in range(repeat):
            for conv_id, conv in data.items():
                senders = [m["sender"] for burst in conv["messages"] for m in burst]
                if not senders:
                    continue
                me = owner if owner in senders else (senders[0] if all_conversations else None)
                if me is None:
                    continue
                others = [s for s in senders if s != me]
                peer_key = f"{copy}:{others[0] if others else conv_id}"
                peer_id = peers.setdefault(peer_key, 200000000 + len(peers))
                msgs = []
                for burst in conv["messages"]:
                    for m in burst:
                        ts = int(datetime.fromisoformat(m["timestamp"].replace("Z", "+00:00")).timestamp()) + copy * YEAR
                        mine = m["sender"] == me
                        msgs.append({
                            "id": len(msgs) + 1, "type": "message",
                            "date": datetime.utcfromtimestamp(ts).strftime("%Y-%m-%dT%H:%M:%S"),
                            "date_unixtime": str(ts),
                            "from": "Owner Chitchat" if mine else f"Friend {peer_id}",
                            "from_id": f"user{OWNER_USER_ID if mine else peer_id}",
                            "text": m["text"],
                            "text_entities": [{"type": "plain", "text": m["text"]}],
                        })
                chat = {"name": f"Friend {peer_id}", "type": "personal_chat", "id": peer_id, "messages": msgs}
                f.write(("\n" if first else ",\n") + json.dumps(chat, ensure_ascii=False, indent=1))
                first = False
                chats += 1
                messages += len(msgs)
        f.write("\n  ]\n },\n \"left_chats\": {\n  \"about\": \"Left chats.\",\n  \"list\": []\n }\n}\n")
    return {"chats": chats, "messages": messages, "bytes": out.stat().st_size}
