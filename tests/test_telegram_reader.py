"""Reading Telegram exports: both kinds, every container, old and new schemas, both reading paths."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from conftest import EXAMPLE, FIXTURES, OWNER, chat, dialogue, full_export, msg, write
from hypothesis import given, settings
from hypothesis import strategies as st

from llmclone.errors import UserError
from llmclone.sources.base import Tally
from llmclone.sources.telegram import Export, RestartWithStreaming, classify_chat, flatten_text, media_tag, open_export


def read_all(path: Path | str, streaming: bool = False) -> tuple[Export, list, Tally]:
    export = open_export(path)
    export.streaming = streaming
    while True:  # as the pipeline does: a file the fast path misread is read again, streaming
        tally = Tally()
        try:
            chats = list(export.chats(lambda t, i, n: "group" if t == "private_supergroup" else classify_chat(t, i),
                                      tally))
            return export, chats, tally
        except RestartWithStreaming:
            assert export.streaming


def test_full_export_owner_and_chats(small_export: Path) -> None:
    export, chats, _tally = read_all(small_export)
    assert export.owner_id == f"user{OWNER}"
    assert export.owner_name == "Owner Person"
    assert [c.id for c in chats] == [7, 8, 9, 50]
    assert len(chats[0].messages) == 12
    assert chats[0].messages[1].sender == f"user{OWNER}"


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_real_fixtures_read_identically_on_both_paths(name: str) -> None:
    _, fast, fast_tally = read_all(FIXTURES / name)
    _, slow, slow_tally = read_all(FIXTURES / name, streaming=True)
    assert [(c.id, c.kind, c.messages) for c in fast] == [(c.id, c.kind, c.messages) for c in slow]
    assert fast_tally == slow_tally


_VALUES = st.one_of(
    st.none(), st.integers(-5, 2_000_000_000), st.sampled_from(["message", "service", "user42", "channel7", "", " ",
                                                              "1700000000", "2024-02-03T04:05:06", "sticker",
                                                              "voice_message", "animation", "😀"]),
    st.text(max_size=8), st.lists(st.one_of(st.text(max_size=5), st.fixed_dictionaries({"type": st.just("bold"),
                                                                                       "text": st.text(max_size=5)})),
                                  max_size=3),
    st.fixed_dictionaries({"question": st.text(max_size=5)}),
)
_KEYS = ["id", "type", "date", "date_unixtime", "from", "from_id", "text", "text_entities", "reply_to_message_id",
         "reply_to_peer_id", "forwarded_from", "saved_from", "via_bot", "photo", "file", "file_name", "media_type",
         "sticker_emoji", "duration_seconds", "poll", "todo_list", "location_information", "edited", "unknown_key"]
_PLAIN = st.fixed_dictionaries({"id": st.integers(1, 10**6), "type": st.just("message"),
                                "date_unixtime": st.integers(0, 2 * 10**9).map(str), "from": st.text(max_size=5),
                                "from_id": st.sampled_from(["user1", "user2"]), "text": _VALUES},
                               optional={"reply_to_message_id": st.integers(1, 100), "reply_to_peer_id": _VALUES})


_EXTRA = st.dictionaries(st.sampled_from(_KEYS[6:]), _VALUES, max_size=3)  # a plain message's rare neighbours


def _both_paths(messages: list) -> None:
    import orjson

    from llmclone.sources.telegram import _convert_all, _parse_messages

    raw = orjson.dumps({"name": "x", "type": "personal_chat", "id": 1, "messages": messages}) + b",\n"
    fast_tally, dict_tally = Tally(), Tally()
    assert _parse_messages(raw, False, fast_tally) == _convert_all(messages, dict_tally)
    assert fast_tally == dict_tally


@settings(max_examples=300)
@given(st.lists(st.one_of(st.builds(lambda m, extra: m | extra, _PLAIN, _EXTRA),
                          st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=9)), max_size=6))
def test_fast_decoder_converts_messages_as_the_dict_path_does(messages: list) -> None:
    """The fast path decodes a chat's bytes into structs; every message, plain, rare or malformed, must become
    the same Message (or the same counted drop) as through `_convert` on the parsed dict."""
    _both_paths(messages)


def test_fast_decoder_knows_every_key_that_makes_a_message_not_plain() -> None:
    from llmclone.sources.telegram import _MEDIA_KEYS, _NOT_OWN_WORDS, _RARE

    assert set(_RARE) >= _MEDIA_KEYS | _NOT_OWN_WORDS


def test_fast_decoder_hands_a_chat_with_a_non_object_message_to_the_dict_path() -> None:
    plain = {"id": 1, "type": "message", "date_unixtime": "5", "from_id": "user1", "text": "hi"}
    for odd in (7, "text", None, [plain]):
        _both_paths([plain, odd, plain | {"id": 2}])


def test_text_list_joined_exactly_and_entities_keep_visible_text() -> None:
    assert flatten_text(["a ", {"type": "bold", "text": "b"}, "c"]) == "a bc"
    assert flatten_text([{"type": "text_link", "text": "the doc", "href": "https://x"}]) == "the doc"
    assert flatten_text([{"type": "custom_emoji", "text": "🙂", "document_id": "1"}]) == "🙂"
    assert flatten_text("") == ""


@given(st.lists(st.one_of(st.text(), st.builds(lambda t, k: {"type": k, "text": t}, st.text(),
                                                   st.sampled_from(["bold", "link", "custom_emoji", "plain"])))))
def test_flatten_is_plain_concatenation(parts: list) -> None:
    expected = "".join(p if isinstance(p, str) else p["text"] for p in parts)
    assert flatten_text(parts) == expected


def test_fixture_6msg_has_list_text_with_email() -> None:
    _, chats, _ = read_all(FIXTURES / "zhyzhyzhy123_langchain-community-fork__telegram_chat_json_result_6msg.json")
    texts = [m.text for c in chats for m in c.messages]
    raw = json.loads((FIXTURES / "zhyzhyzhy123_langchain-community-fork__telegram_chat_json_result_6msg.json").read_text())
    expected = ["".join(p if isinstance(p, str) else p["text"] for p in m["text"]) if isinstance(m["text"], list)
                else m["text"] for m in raw["messages"] if m["type"] == "message"]
    assert texts == expected


def test_old_export_integer_ids_and_local_dates() -> None:
    _, chats, _ = read_all(FIXTURES / "langchain-community__document_loaders_test_docs_telegram.json")
    m = chats[0].messages[0]
    assert m.sender == "user4325636679"
    assert m.ts == 1577836802  # 2020-01-01T00:00:02 read as UTC
    assert m.text == "It's 2020..."


def test_unknown_keys_ignored_and_replies_kept() -> None:
    _, chats, tally = read_all(FIXTURES / "Eklipti_telegram-chat-analyzer__examples_raw0.json")
    assert chats and chats[0].kind == "group"
    assert any(m.reply_to for m in chats[0].messages)
    assert tally.dropped_messages["service"] >= 1


def test_media_placeholders_on_exhaustive_fixture() -> None:
    _, chats, tally = read_all(FIXTURES / "Loganavter_Tkonverter__examples_result.json")
    texts = "\n".join(m.text for c in chats for m in c.messages)
    for tag in ("<photo>", "<sticker", "<voice ", "<video message ", "<gif>", "<file>", "<contact>",
                "<location>", "<poll: "):
        assert tag in texts, tag
    assert tally.dropped_messages["forward"] >= 1
    assert tally.dropped_messages["unsupported"] == 1
    assert tally.dropped_messages["service"] > 30


def test_media_tags() -> None:
    assert media_tag({"photo": "x"}) == "<photo>"
    assert media_tag({"media_type": "sticker", "sticker_emoji": "😀"}) == "<sticker 😀>"
    assert media_tag({"media_type": "voice_message", "duration_seconds": 67}) == "<voice 1:07>"
    assert media_tag({"poll": {"question": "Pizza?"}}) == "<poll: Pizza?>"
    assert media_tag({"file": "x.pdf"}) == "<file>"
    assert media_tag({"text": "plain"}) is None


def test_caption_follows_placeholder(tmp_path: Path) -> None:
    export = full_export([chat(7, [msg(1, 1_700_000_000, 7, "look at this", photo="photos/p.jpg"),
                                   msg(2, 1_700_000_060, OWNER, "wow")])])
    _, chats, _ = read_all(write(tmp_path / "r.json", export))
    assert chats[0].messages[0].text == "<photo> look at this"


def test_dropped_by_reason(tmp_path: Path) -> None:
    messages = [
        msg(1, 1, OWNER, "fwd", forwarded_from="Someone"),
        msg(2, 2, OWNER, "gif", via_bot="@gif"),
        {"id": 3, "type": "service", "date": "2024-01-01T00:00:00", "action": "pin_message", "text": ""},
        {"id": 4, "type": "unsupported"},
        msg(5, 5, OWNER, ""),
        {"id": 6, "type": "message", "text": 42},  # unexpected shape: skipped, not fatal
        msg(7, 7, OWNER, "kept"),
    ]
    _, chats, tally = read_all(write(tmp_path / "r.json", full_export([chat(7, messages)])))
    assert [m.text for m in chats[0].messages] == ["kept"]
    assert dict(tally.dropped_messages) == {"forward": 1, "via_bot": 1, "service": 1, "unsupported": 1,
                                            "empty": 1, "malformed": 1}


def test_skipped_chat_kinds_counted(tmp_path: Path) -> None:
    chats = [chat(7, dialogue(7, 2)), chat(8, dialogue(8, 2), kind="bot_chat"),
             chat(OWNER, dialogue(OWNER, 2), kind="saved_messages", name=None),
             chat(777000, dialogue(777000, 2)), chat(9, dialogue(9, 2), kind="public_channel")]
    _, got, tally = read_all(write(tmp_path / "r.json", full_export(chats)))
    assert [c.id for c in got] == [7]
    assert dict(tally.skipped_chats) == {"bot_chat": 1, "saved_messages": 1, "verification_codes": 1, "channel": 1}


def test_folder_and_zip_and_single_chat(tmp_path: Path, small_export: Path) -> None:
    by_folder = read_all(small_export.parent)[1]
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(small_export, "Telegram Export/result.json")
    by_zip = read_all(archive)[1]
    assert [c.messages for c in by_folder] == [c.messages for c in by_zip]
    single = write(tmp_path / "single" / "result.json", chat(7, dialogue(7, 4)))
    export, chats, _ = read_all(single)
    assert export.single_chat and export.owner_id == f"user{OWNER}"
    assert len(chats[0].messages) == 4


def test_fast_path_survives_tricky_bytes(tmp_path: Path) -> None:
    """Names with braces and message texts that spell out a chat header do not split chats."""
    fake = '{"name": "x", "type": "personal_chat", "id": 1, "messages": ['
    chats = [chat(7, [*dialogue(7, 3), msg(9, 1700000900, OWNER, fake)], name='Bob {work} "quoted"'),
             chat(8, dialogue(8, 3))]
    data = full_export(chats)
    pretty = read_all(write(tmp_path / "a.json", data))[1]
    minified = read_all(write(tmp_path / "b.json", data, indent=None, separators=(",", ":")))[1]
    sorted_keys = read_all(write(tmp_path / "c.json", data, sort_keys=True))[1]  # fast path gives way
    assert [c.messages for c in pretty] == [c.messages for c in minified] == [c.messages for c in sorted_keys]
    assert pretty[0].name == 'Bob {work} "quoted"'
    assert pretty[0].messages[-1].text == fake


def test_example_export_is_rich() -> None:
    export, chats, tally = read_all(EXAMPLE)
    texts = "\n".join(m.text for c in chats for m in c.messages)
    assert export.owner_name == "Lyosha Petrov"
    assert any(c.name is None for c in chats)  # a deleted account
    for tag in ("<photo>", "<sticker 👍>", "<voice 0:12>", "<location>", "<file>"):
        assert tag in texts
    assert tally.dropped_messages["forward"] > 0 and tally.dropped_messages["service"] > 0
    assert any(m.reply_to for c in chats for m in c.messages)
    assert any(ord(ch) > 0x400 for ch in texts) and "looks good to me" in texts


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "is empty"),
        (b"<!DOCTYPE html><html><body>messages</body></html>", "HTML export"),
        (b"hello, world", "is not JSON"),
        (b'{"chats": {"list": [{"name": "a", "type": "personal_chat", "id": 1, "messages": [{"id": 1,', "truncated"),
        (b'{"some": "json", "but": ["not", "telegram"]}', "not a Telegram Desktop export"),
        (b'{"chats": {"list": [{"name": "caf\xe9", "type": "personal_chat", "id": 1, "messages": []}]}}', "not UTF-8"),
        (b'{"chats": {"list": [{"name": "a", "type": "personal_chat", "id": 1, "messages": [{"text": "\xff"}]}]}}',
         "not UTF-8"),
        (b'[{"id": 1, "type": "message", "text": "hi"}]', "is a JSON list"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "result.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=fragment):
        read_all(path)


def test_missing_and_folder_without_export(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        open_export(tmp_path / "nope.json")
    (tmp_path / "html").mkdir()
    (tmp_path / "html" / "messages.html").write_text("<html></html>")
    with pytest.raises(UserError, match="HTML export"):
        open_export(tmp_path / "html")


# -- hostile shapes (issue 23): refused in one sentence before they are built ------------------------------------
def _ingest(path: Path, out: Path, **options: object) -> None:
    from llmclone.dataset.ingest import IngestOptions, ingest

    ingest([path], out, IngestOptions(**options), progress=False, workers=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["personal_information", "inside a message"])
def test_deep_nesting_is_refused_not_built(tmp_path: Path, where: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000  # ijson.parse took 20 GB on this, json/msgspec a RecursionError
    export = json.dumps(full_export([chat(7, dialogue(7, 4))]))
    if where == "personal_information":
        export = export.replace('"personal_information": {', f'"personal_information": {{"x": {deep}, ', 1)
    else:
        export = export.replace('"text": "message 1 in 7"', f'"text": {deep}', 1)
    path = tmp_path / "result.json"
    path.write_text(export)
    with pytest.raises(UserError, match="more than 64 levels deep"):
        _ingest(path, tmp_path / "out")
    assert not any(p.name != "result.json" for p in tmp_path.iterdir())  # no dataset, no temp dir


def test_a_sea_of_whitespace_inside_a_chat_is_refused(tmp_path: Path) -> None:
    export = json.dumps(full_export([chat(7, dialogue(7, 4))]))
    path = tmp_path / "result.json"
    path.write_text(export.replace('"messages": [', '"messages": [' + " " * (17 << 20), 1))
    with pytest.raises(UserError, match="more than 16 MB with no text boundary"):
        _ingest(path, tmp_path / "out")


def test_zip_bomb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    export = json.dumps(full_export([chat(7, dialogue(7, 4))]))
    path = tmp_path / "export.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("export/result.json", export.replace('"messages": [', '"messages": [' + " " * (80 << 20), 1))
    assert path.stat().st_size < 1 << 20
    with pytest.raises(UserError, match="-fold"):
        _ingest(path, tmp_path / "out")


def _zip_of(tmp_path: Path, method: int = zipfile.ZIP_DEFLATED) -> tuple[Path, bytearray]:
    path = tmp_path / "export.zip"
    with zipfile.ZipFile(path, "w", method) as zf:
        zf.writestr("export/result.json", json.dumps(full_export([chat(7, dialogue(7, 400))]), indent=1))
    return path, bytearray(path.read_bytes())


def _patch_header(data: bytearray, field: int, value: int, size: int = 2) -> None:
    """Set a field of the local header (offset from 'PK\\3\\4') and the same field of the central directory."""
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    data[local + field : local + field + size] = value.to_bytes(size, "little")
    data[central + field + 2 : central + field + 2 + size] = value.to_bytes(size, "little")  # 2 bytes further on


@pytest.mark.parametrize("damage", ["bad crc", "corrupt deflate", "deflate64", "encrypted"])
def test_damaged_zips_say_so_in_one_sentence(tmp_path: Path, damage: str) -> None:
    path, data = _zip_of(tmp_path, zipfile.ZIP_STORED if damage == "bad crc" else zipfile.ZIP_DEFLATED)
    start = data.find(b"PK\x03\x04") + 30 + len("export/result.json")
    if damage == "bad crc":
        data[start + 500] ^= 0x01  # a stored byte: only the CRC notices
    elif damage == "corrupt deflate":
        data[start + 20 : start + 60] = b"\xff" * 40
    elif damage == "deflate64":
        _patch_header(data, 8, 9)  # compression method 9
    else:
        _patch_header(data, 6, 1)  # general purpose flag bit 0: encrypted
    path.write_bytes(data)
    expected = {"bad crc": "damaged", "corrupt deflate": "damaged", "deflate64": "Deflate64", "encrypted": "encrypted"}
    with pytest.raises(UserError, match=expected[damage]):
        _ingest(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.zip"]


def test_string_chat_ids_read_alike_on_both_paths_and_bad_ones_counted(tmp_path: Path) -> None:
    chats = [chat(7, dialogue(7, 6)), chat(8, dialogue(8, 6, peer=8)), chat(9, dialogue(9, 6, peer=9)),
             chat(10, dialogue(10, 6, peer=10))]
    chats[1]["id"] = "8"  # a string among integers: the fast path's header did not match it and dropped it
    chats[2]["id"] = "not a number"
    path = write(tmp_path / "result.json", full_export(chats))
    _, fast, fast_tally = read_all(path)
    _, slow, slow_tally = read_all(path, streaming=True)
    assert [c.id for c in fast] == [c.id for c in slow] == [7, 8, 10]
    assert [c.messages for c in fast] == [c.messages for c in slow]
    assert fast_tally == slow_tally
    assert fast_tally.skipped_chats["malformed"] == 1


def test_large_chats_are_streamed_message_by_message_with_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                         ) -> None:
    import llmclone.sources.telegram as telegram

    path = write(tmp_path / "result.json", full_export([chat(7, dialogue(7, 300)), chat(8, dialogue(8, 20, peer=8))]))
    _, whole, whole_tally = read_all(path)
    monkeypatch.setattr(telegram, "_CHAT_BYTES_FAST", 4096)  # chat 7 is larger: read on the streaming path
    export, streamed, streamed_tally = read_all(path)
    assert export.streaming
    assert [(c.id, c.messages) for c in whole] == [(c.id, c.messages) for c in streamed]
    assert whole_tally == streamed_tally


@pytest.mark.parametrize("streaming", [False, True])
def test_a_chat_over_the_message_limit_is_refused_on_both_paths(tmp_path: Path, streaming: bool) -> None:
    from llmclone.dataset.ingest import IngestOptions, ingest

    # a single-chat export is read on the streaming path, a full one on the fast path: the same rule
    path = write(tmp_path / "result.json", chat(7, dialogue(7, 30)) if streaming else full_export([chat(7, dialogue(7, 30))]))
    with pytest.raises(UserError, match=r"more than 20 messages.*--max-chat-messages"):
        ingest([path], tmp_path / "out", IngestOptions(max_chat_messages=20), progress=False, workers=1)
    ingest([path], tmp_path / "out", IngestOptions(max_chat_messages=30), progress=False, workers=1)
