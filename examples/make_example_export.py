"""Writes examples/telegram_export/result.json: a small but realistic Telegram Desktop full-account export.

The owner, Lyosha (user id 100000001), has habits a clone should pick up: he writes in lowercase,
never ends with a full stop, laughs with "ахах"/"haha", smiles with "))", sends thoughts as bursts of
short messages, says "короче" and "ну" a lot in Russian and "ok ok" / "no worries" in English, and
answers photos with a 👍 sticker. Around him: Masha and Dima (Russian), Sarah (English, a colleague),
Mom, a deleted account, a hiking group (only his own messages, as Telegram exports groups by default),
a bot, Saved Messages, and a channel he left.

The file is generated (deterministically) rather than hand-written so that it is long enough for a
demo clone to learn from. Run: python examples/make_example_export.py
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

OWNER_ID, OWNER = 100000001, "Lyosha Petrov"
TZ = timezone(timedelta(hours=3))
rng = random.Random(7)

# (speaker, text) exchanges: "o" = owner, "u" = the other person. "|" splits a burst into messages.
RU_EXCHANGES = [
    [("u", "привет! как дела?"), ("o", "привет)) да норм|работаю потихоньку"), ("u", "а вечером что делаешь?"),
     ("o", "ну пока не знаю|может в кино сходим?")],
    [("u", "ты видел новости?"), ("o", "неа|а что там"), ("u", "опять цены подняли"), ("o", "ахах ну классика|короче ничего нового")],
    [("u", "пойдём в субботу на шашлыки?"), ("o", "давай))|я возьму мясо"), ("u", "отлично, во сколько?"), ("o", "ну часа в два|норм?")],
    [("u", "как прошла встреча?"), ("o", "короче долго рассказывать|но вроде норм всё")],
    [("u", "ты где?"), ("o", "еду уже|минут через 10 буду")],
    [("u", "скинь фотки с выходных"), ("o", "<photo>"), ("o", "ща ещё найду|там было круто))")],
    [("u", "<photo>"), ("o", "<sticker 👍>"), ("o", "ахах огонь")],
    [("u", "спасибо за помощь!"), ("o", "да не за что))|обращайся")],
    [("u", "ты завтра работаешь?"), ("o", "ну да|до шести короче")],
    [("u", "купи хлеба по дороге"), ("o", "ок|ещё что-нибудь?"), ("u", "молоко"), ("o", "понял))")],
    [("u", "посмотрел сериал который я советовала?"), ("o", "ахах да|залпом посмотрел за два дня|короче топ")],
    [("u", "как погода у вас?"), ("o", "ну такое|дождь опять")],
    [("u", "у тебя есть зарядка?"), ("o", "есть|ща принесу")],
    [("u", "ты не забыл про завтра?"), ("o", "неа помню))|в семь же?"), ("u", "да"), ("o", "ок")],
    [("u", "я устала"), ("o", "ну отдохни)|завтра выходной же")],
    [("u", "<voice 0:12>"), ("o", "ахах понял|ок давай так")],
    [("u", "что подарить Диме?"), ("o", "короче он хотел наушники|но можно и книгу")],
    [("u", "ты играл в новую игру?"), ("o", "ну немного|пока не втянулся")],
    [("u", "когда отпуск?"), ("o", "в августе вроде|если не перенесут))")],
    [("u", "как кот?"), ("o", "спит)) как обычно|<photo>")],
]
EN_EXCHANGES = [
    [("u", "Hi! Did you get a chance to look at the report?"), ("o", "hey|yeah looked at it this morning|looks good to me")],
    [("u", "Can we move the call to 3pm?"), ("o", "ok ok|3pm works")],
    [("u", "Thanks for fixing the bug!"), ("o", "no worries))|it was a tiny one")],
    [("u", "Are you coming to the team lunch?"), ("o", "yes|save me a seat haha")],
    [("u", "How was your weekend?"), ("o", "pretty chill|went hiking with friends|you?"), ("u", "Quiet, mostly reading."), ("o", "nice))")],
    [("u", "Could you review my pull request?"), ("o", "sure|give me 20 min")],
    [("u", "The build is broken again"), ("o", "haha of course it is|looking")],
    [("u", "Do you have the slides from yesterday?"), ("o", "yep|<file> here")],
    [("u", "Happy Friday!"), ("o", "haha happy friday))")],
    [("u", "Is the deadline still Monday?"), ("o", "i think so|will double check")],
]
GROUP_LINES = ["ну что, идём в воскресенье?)", "я за|короче беру палатку", "ахах кто взял спички",
               "<photo>", "вот маршрут|<location>", "<sticker 🏔>", "всем спасибо за поход))"]


class Writer:
    def __init__(self) -> None:
        self.next_id = 1

    def message(self, when: datetime, sender: tuple[str | None, int], text: str, **extra: object) -> dict:
        mid, self.next_id = self.next_id, self.next_id + 1
        msg: dict = {"id": mid, "type": "message", "date": when.strftime("%Y-%m-%dT%H:%M:%S"),
                     "date_unixtime": str(int(when.timestamp())), "from": sender[0], "from_id": f"user{sender[1]}"}
        msg.update(extra)
        body = _media(text, msg)
        msg["text"] = body
        msg["text_entities"] = _entities(body)
        return msg


def _media(text: str, msg: dict) -> str | list:
    if text.startswith("<photo>"):
        msg.update(photo="(File not included. Change data exporting settings to download.)", width=1280, height=960)
        return text.removeprefix("<photo>").strip()
    if text.startswith("<sticker"):
        msg.update(file="(File not included. Change data exporting settings to download.)", media_type="sticker",
                   sticker_emoji=text[9:-1], width=512, height=512)
        return ""
    if text.startswith("<voice"):
        secs = int(text[7:-1].split(":")[0]) * 60 + int(text[7:-1].split(":")[1])
        msg.update(file="(File not included. Change data exporting settings to download.)",
                   media_type="voice_message", mime_type="audio/ogg", duration_seconds=secs)
        return ""
    if text.startswith("<file>"):
        msg.update(file="(File not included. Change data exporting settings to download.)", file_name="slides.pdf",
                   mime_type="application/pdf")
        return text.removeprefix("<file>").strip()
    if text.startswith("<location>"):
        msg.update(location_information={"latitude": 55.75, "longitude": 37.61})
        return ""
    if "топ" in text:  # some formatting, as people do
        head, _, tail = text.partition("топ")
        return [head, {"type": "bold", "text": "топ"}, tail] if tail else [head, {"type": "bold", "text": "топ"}]
    return text


def _entities(body: str | list) -> list:
    if isinstance(body, str):
        return [{"type": "plain", "text": body}] if body else []
    return [p if isinstance(p, dict) else {"type": "plain", "text": p} for p in body if p]


def personal_chat(w: Writer, name: str | None, uid: int, exchanges: list, start: datetime, sessions: int) -> dict:
    msgs: list[dict] = []
    when = start
    peer = (name, uid)
    me = (OWNER, OWNER_ID)
    for _ in range(sessions):
        when += timedelta(hours=rng.randint(8, 60), minutes=rng.randint(0, 59))
        for _ in range(rng.randint(1, 2)):
            for speaker, text in rng.choice(exchanges):
                sender = me if speaker == "o" else peer
                when += timedelta(seconds=rng.randint(20, 240))
                for part in text.split("|"):
                    when += timedelta(seconds=rng.randint(3, 25))
                    extra = {}
                    if msgs and rng.random() < 0.06:
                        extra["reply_to_message_id"] = msgs[max(0, len(msgs) - rng.randint(2, 12))]["id"]
                    if speaker == "o" and rng.random() < 0.03:
                        edited = when + timedelta(seconds=40)
                        extra.update(edited=edited.strftime("%Y-%m-%dT%H:%M:%S"),
                                     edited_unixtime=str(int(edited.timestamp())))
                    msgs.append(w.message(when, sender, part, **extra))
        if rng.random() < 0.08:  # a forward: not the owner's words, must be dropped
            when += timedelta(minutes=2)
            msgs.append(w.message(when, me, "Смешной мем про понедельник", forwarded_from="Мемы каждый день"))
        if rng.random() < 0.05:
            when += timedelta(minutes=5)
            msgs.append({"id": w.next_id, "type": "service", "date": when.strftime("%Y-%m-%dT%H:%M:%S"),
                         "date_unixtime": str(int(when.timestamp())), "actor": OWNER, "actor_id": f"user{OWNER_ID}",
                         "action": "phone_call", "duration_seconds": rng.randint(30, 600), "discard_reason": "hangup",
                         "text": "", "text_entities": []})
            w.next_id += 1
    return {"name": name, "type": "personal_chat", "id": uid, "messages": msgs}


def build() -> dict:
    w = Writer()
    start = datetime(2025, 3, 1, 10, 0, tzinfo=TZ)
    chats = [
        personal_chat(w, "Маша", 200000002, RU_EXCHANGES, start, 70),
        personal_chat(w, "Дима Соколов", 200000003, RU_EXCHANGES, start, 55),
        personal_chat(w, "Sarah Miller", 200000004, EN_EXCHANGES, start, 60),
        personal_chat(w, "Мама", 200000005, RU_EXCHANGES[:12], start, 35),
        personal_chat(w, None, 200000006, RU_EXCHANGES[4:9], start, 6),  # a deleted account
    ]
    # A mention and a link, with entity objects as Telegram writes them.
    sarah = chats[2]["messages"]
    note = w.message(datetime(2025, 9, 1, 12, 0, tzinfo=TZ), (OWNER, OWNER_ID), "")
    note["text"] = ["see ", {"type": "text_link", "text": "the doc", "href": "https://example.com/doc"},
                    " and ping ", {"type": "mention", "text": "@sarah_m"}, " ", {"type": "custom_emoji", "text": "🙂",
                                                                               "document_id": "5368324170671202286"}]
    note["text_entities"] = [p if isinstance(p, dict) else {"type": "plain", "text": p} for p in note["text"]]
    sarah.append(note)
    group_msgs = []
    when = start
    for _ in range(12):
        when += timedelta(days=rng.randint(5, 15))
        for line in rng.sample(GROUP_LINES, 3):
            for part in line.split("|"):
                when += timedelta(seconds=rng.randint(5, 60))
                group_msgs.append(w.message(when, (OWNER, OWNER_ID), part))
    group_msgs.insert(0, {"id": w.next_id, "type": "service", "date": "2025-03-01T09:00:00", "date_unixtime":
                          str(int(datetime(2025, 3, 1, 9, tzinfo=TZ).timestamp())), "actor": "Дима Соколов",
                          "actor_id": "user200000003", "action": "invite_members", "members": [OWNER],
                          "text": "", "text_entities": []})
    chats.append({"name": "Походы 🏔", "type": "private_supergroup", "id": 1500000007, "messages": group_msgs})
    bot_when = datetime(2025, 4, 2, 9, 0, tzinfo=TZ)
    chats.append({"name": "Weather Bot", "type": "bot_chat", "id": 300000008, "messages": [
        w.message(bot_when, (OWNER, OWNER_ID), "/start"),
        w.message(bot_when + timedelta(seconds=2), ("Weather Bot", 300000008), "Moscow: +12°C, cloudy")]})
    chats.append({"type": "saved_messages", "id": OWNER_ID, "messages": [
        w.message(bot_when, (OWNER, OWNER_ID), "паспорт: 4510 123456, не забыть продлить")]})
    left = [{"name": "Tech News", "type": "public_channel", "id": 1600000009, "messages": [
        {"id": 1, "type": "message", "date": "2025-05-01T10:00:00", "date_unixtime": "1746082800",
         "from": "Tech News", "from_id": "channel1600000009", "text": "New phone announced", "text_entities":
         [{"type": "plain", "text": "New phone announced"}]}]}]
    # Private details the ingest must scrub before training.
    masha = chats[0]["messages"]
    masha.append(w.message(datetime(2025, 8, 30, 20, 0, tzinfo=TZ), ("Маша", 200000002), "скинь свой номер плиз"))
    masha.append(w.message(datetime(2025, 8, 30, 20, 1, tzinfo=TZ), (OWNER, OWNER_ID), "+7 916 555-12-34|почта lyosha.petrov@example.com"))
    return {
        "about": "Here is the data you requested. Remember: Telegram is ad free, it doesn't sell your data.",
        "personal_information": {"user_id": OWNER_ID, "first_name": "Lyosha", "last_name": "Petrov",
                                 "phone_number": "+7 916 555 1234", "username": "@lyosha_p", "bio": "просто лёша"},
        "contacts": {"about": "Contacts you have.", "list": [
            {"user_id": 200000002, "first_name": "Маша", "last_name": "", "phone_number": "+7 926 000 0002",
             "date": "2024-01-01T10:00:00", "date_unixtime": "1704092400"}]},
        "chats": {"about": "This page lists all chats from this export.", "list": chats},
        "left_chats": {"about": "Below are the supergroups and channels from this export that you've left.",
                       "list": left},
    }


def _split_bursts(export: dict) -> None:
    """Messages written with '|' become separate messages (bursts), as people send them."""
    for section in ("chats", "left_chats"):
        for chat in export[section]["list"]:
            out = []
            for m in chat["messages"]:
                if isinstance(m.get("text"), str) and "|" in m["text"]:
                    for i, part in enumerate(m["text"].split("|")):
                        copy = dict(m, text=part, text_entities=[{"type": "plain", "text": part}])
                        copy["id"] = m["id"] * 10 + i if i else m["id"]
                        out.append(copy)
                else:
                    out.append(m)
            chat["messages"] = out


if __name__ == "__main__":
    data = build()
    _split_bursts(data)
    # The export ships inside the package (llmclone demo uses it); examples/telegram_export links to it.
    out = Path(__file__).resolve().parent.parent / "src" / "llmclone" / "examples" / "telegram_export" / "result.json"
    out.parent.mkdir(exist_ok=True)
    # Telegram Desktop writes one-space indentation and raw UTF-8.
    out.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    n = sum(len(c["messages"]) for c in data["chats"]["list"])
    print(f"wrote {out} ({n} messages in {len(data['chats']['list'])} chats)")
