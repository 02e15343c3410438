"""The ingest pipeline end to end (in-process): outputs, split, privacy, selection, determinism."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest
from conftest import EXAMPLE, OWNER, chat, dialogue, full_export, msg, write

from llmclone import process_tg_data
from llmclone.dataset.ingest import IngestOptions, ingest
from llmclone.dataset.io import read_jsonl
from llmclone.errors import UserError


def run(paths: list[Path] | Path, out: Path, **options: object) -> dict:
    workers = options.pop("workers", 1)
    return ingest(paths if isinstance(paths, list) else [paths], out, IngestOptions(**options), progress=False,
                  workers=workers)  # type: ignore[arg-type]


def rows(out: Path, name: str = "train") -> list[dict]:
    return list(read_jsonl(out / f"{name}.jsonl"))


def test_example_export(tmp_path: Path) -> None:
    stats = run(EXAMPLE, tmp_path / "ds")
    assert stats["owner"]["name"] == "Lyosha Petrov"
    assert stats["chats"]["used"] == 5 and stats["chats"]["skipped"]["group"] == 1
    assert stats["redactions"] == {"email": 1, "phone": 1}
    train, ev = rows(tmp_path / "ds"), rows(tmp_path / "ds", "eval")
    assert len(train) == stats["samples"]["train"] and len(ev) == stats["samples"]["eval"]
    for row in train + ev:
        assert row["messages"][-1]["role"] == "assistant"
        assert set(row) == {"messages", "chat", "start"}
    text = (tmp_path / "ds" / "train.jsonl").read_text() + (tmp_path / "ds" / "eval.jsonl").read_text()
    assert "lyosha.petrov@example.com" not in text and "555-12-34" not in text
    assert "<email>" in text and "<phone>" in text


def test_split_is_by_time(tmp_path: Path) -> None:
    stats = run(EXAMPLE, tmp_path / "ds")
    cutoff = stats["split"]["eval_from_unixtime"]
    assert cutoff is not None
    # every eval sample's owner turn is at or after the cutoff, every train one before it
    export = json.loads(EXAMPLE.read_text())
    owner_times = {}
    for c in export["chats"]["list"]:
        for m in c["messages"]:
            if m.get("from_id") == "user100000001" and isinstance(m.get("text"), str):
                owner_times.setdefault(m["text"], []).append(int(m["date_unixtime"]))
    assert 0.05 < stats["samples"]["eval"] / (stats["samples"]["eval"] + stats["samples"]["train"]) < 0.2
    for name, ok in (("train", lambda t: t < cutoff), ("eval", lambda t: t >= cutoff)):
        for row in rows(tmp_path / "ds", name):
            first_line = row["messages"][-1]["content"].split("\n")[0]
            if first_line in owner_times:
                assert any(ok(t) for t in owner_times[first_line])


def test_same_input_same_bytes_and_private_files(tmp_path: Path) -> None:
    run(EXAMPLE, tmp_path / "a")
    run(EXAMPLE, tmp_path / "b", workers=2)
    for name in ("train.jsonl", "eval.jsonl", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert stat.S_IMODE((tmp_path / "a" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700


def test_parallel_path_equals_sequential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llmclone.dataset.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(ingest_module, "_BATCH_BYTES", 2000)  # many batches
    chats = [chat(i, dialogue(i, 30, start=1_700_000_000 + i * 7, peer=i)) for i in range(200, 230)]
    export = write(tmp_path / "r.json", full_export(chats))
    seq = run(export, tmp_path / "seq", workers=1)
    par = run(export, tmp_path / "par", workers=2)
    assert seq == par
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "seq" / name).read_bytes() == (tmp_path / "par" / name).read_bytes()


def test_parallel_run_leaves_no_spill_file_when_one_batch_holds_everything(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import llmclone.dataset.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "_PARALLEL_MIN_BYTES", 0)  # one batch, two workers: one never gets work
    export = write(tmp_path / "r.json", full_export([chat(7, dialogue(7, 30))]))
    run(export, tmp_path / "par", workers=2)
    assert sorted(p.name for p in (tmp_path / "par").iterdir()) == ["eval.jsonl", "redacted.hashes", "stats.json",
                                                                  "train.jsonl"]


def test_groups_only_owner_messages_get_no_invented_context(tmp_path: Path, small_export: Path) -> None:
    stats = run(small_export, tmp_path / "ds", groups=True)
    assert stats["chats"]["group"] == 1 and stats["chats"]["groups_without_context"] == 1
    group_rows = [r for r in rows(tmp_path / "ds") + rows(tmp_path / "ds", "eval")
                  if r["messages"][-1]["content"] == "group hello"]
    assert group_rows == [{"messages": [{"role": "assistant", "content": "group hello"}], "chat": group_rows[0]["chat"],
                           "start": 1_700_300_000}]


def test_chat_selection_and_dates(tmp_path: Path, small_export: Path) -> None:
    only = run(small_export, tmp_path / "a", chats=["Third"])
    assert only["chats"]["used"] == 1 and only["chats"]["skipped"]["not_selected"] == 3
    excluded = run(small_export, tmp_path / "b", exclude_chats=["7", "third"])
    assert excluded["chats"]["used"] == 1
    dated = run(small_export, tmp_path / "c", since="2023-11-16")  # 1_700_100_000 is 2023-11-16
    assert dated["chats"]["used"] == 2 and dated["messages"]["dropped"]["out_of_date_range"] == 12


def test_me_by_name_and_by_id(tmp_path: Path) -> None:
    single = write(tmp_path / "g.json", chat(50, [msg(1, 1_700_000_000, 5, "q?"), msg(2, 1_700_000_030, 6, "a!")],
                                             kind="private_group", name="G"))
    with pytest.raises(UserError, match="cannot tell which sender is you"):
        run(single, tmp_path / "x", groups=True)
    by_id = run(single, tmp_path / "a", groups=True, me="user6")
    by_name = run(single, tmp_path / "b", groups=True, me="name 6")
    assert rows(tmp_path / "a") + rows(tmp_path / "a", "eval") == rows(tmp_path / "b") + rows(tmp_path / "b", "eval")
    assert by_id["messages"]["owner"] == by_name["messages"]["owner"] == 1


def test_several_exports_deduplicated_and_merged(tmp_path: Path) -> None:
    messages = dialogue(7, 20)
    a = write(tmp_path / "a.json", full_export([chat(7, messages[:12])]))
    b = write(tmp_path / "b.json", full_export([chat(7, messages[8:])]))  # overlaps 8..11
    whole = write(tmp_path / "w.json", full_export([chat(7, messages)]))
    merged = run([a, b], tmp_path / "m")
    single = run(whole, tmp_path / "s")
    assert merged["messages"] == single["messages"]
    assert rows(tmp_path / "m") + rows(tmp_path / "m", "eval") == rows(tmp_path / "s") + rows(tmp_path / "s", "eval")


def test_exports_of_different_accounts_refused(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", full_export([chat(7, dialogue(7, 4))]))
    b = write(tmp_path / "b.json", full_export([chat(7, dialogue(7, 4))], owner=999))
    with pytest.raises(UserError, match="different accounts"):
        run([a, b], tmp_path / "m")


def test_redact_file_and_drop(tmp_path: Path) -> None:
    messages = [msg(1, 1_700_000_000, 7, "how is Project Falcon?"), msg(2, 1_700_000_030, OWNER, "secret stuff"),
                msg(3, 1_700_010_000 + 20000, 7, "lunch?"), msg(4, 1_700_030_100, OWNER, "sure")]
    export = write(tmp_path / "r.json", full_export([chat(7, messages)]))
    terms = tmp_path / "redact.txt"
    terms.write_text("project falcon\n")
    kept = run(export, tmp_path / "a", redact_file=str(terms), eval_fraction=0)
    assert kept["redactions"] == {"custom": 1}
    assert "<redacted>" in (tmp_path / "a" / "train.jsonl").read_text()
    dropped = run(export, tmp_path / "b", redact_file=str(terms), drop_redacted=True, eval_fraction=0)
    assert dropped["samples"]["train"] == 1 and dropped["samples"]["dropped_redacted"] == 1


def test_nothing_left_behind_on_failure(tmp_path: Path) -> None:
    export = write(tmp_path / "r.json", full_export([chat(7, [msg(1, 1, 7, "only them")])]))
    with pytest.raises(UserError, match="wrote no messages"):
        run(export, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_existing_output_kept_without_force(tmp_path: Path) -> None:
    run(EXAMPLE, tmp_path / "ds")
    before = (tmp_path / "ds" / "train.jsonl").read_bytes()
    with pytest.raises(UserError, match="already exists"):
        run(EXAMPLE, tmp_path / "ds")
    assert ingest([EXAMPLE], tmp_path / "ds", IngestOptions(max_context=32), force=True, progress=False)
    assert (tmp_path / "ds" / "train.jsonl").read_bytes() != before


def test_zip_input(tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(EXAMPLE, "DataExport_2025-09-01/result.json")
    run(archive, tmp_path / "z")
    run(EXAMPLE, tmp_path / "p")
    assert (tmp_path / "z" / "train.jsonl").read_bytes() == (tmp_path / "p" / "train.jsonl").read_bytes()


def test_invalid_options() -> None:
    for bad, flag in (({"merge_gap": 5000, "session_gap": 100}, "--merge-gap"), ({"eval_fraction": 1.5}, "--eval-fraction"),
                      ({"since": "yesterday"}, "--since"), ({"context_unit": "words"}, "--context-unit"),
                      ({"drop_redacted": True}, "--drop-redacted"), ({"max_context": 0}, "--max-context"),
                      ({"window": 3}, "--window: unknown setting")):
        with pytest.raises(UserError, match=flag):
            IngestOptions.of(**bad)


def test_process_tg_data_formats() -> None:
    dataset = process_tg_data(EXAMPLE)
    messages = process_tg_data(str(EXAMPLE), output_format="messages")
    jsonl = process_tg_data(EXAMPLE.parent, output_format="jsonl")
    assert len(dataset) == len(messages) == len(jsonl.splitlines())
    assert dataset[0]["messages"] == messages[0] == json.loads(jsonl.splitlines()[0])["messages"]
    with pytest.raises(UserError):
        process_tg_data(EXAMPLE, output_format="csv")


def test_written_samples_are_the_windows_messages(tmp_path: Path) -> None:
    """The pipeline writes samples from cached per-turn bytes; they must equal Window.messages()."""
    from llmclone.dataset.dialogues import merge_turns, split_sessions, windows
    from llmclone.sources.base import Tally
    from llmclone.sources.telegram import classify_chat, open_export

    messages = [*dialogue(7, 14), msg(40, 1_700_100_000, OWNER, "re: message 1", reply_to_message_id=2)]  # a day later
    export = write(tmp_path / "r.json", full_export([chat(7, messages)]))
    run(export, tmp_path / "ds", max_context=20)
    written = sorted(json.dumps(r["messages"]) for r in rows(tmp_path / "ds") + rows(tmp_path / "ds", "eval"))
    (parsed,) = open_export(export).chats(lambda t, i, n: classify_chat(t, i), Tally())
    for m in parsed.messages:
        m.is_owner = m.sender == f"user{OWNER}"
    by_id = {m.id: m for m in parsed.messages}
    expected = sorted(json.dumps(w.messages()) for s in split_sessions(merge_turns(parsed.messages, 300), 4 * 3600)
                      for w in windows(s, 20, by_id=by_id))
    assert written == expected
    assert any('"re: message 1"' in w and '"message 1 in 7"' in w for w in written)  # the quoted message came along


@pytest.mark.parametrize(("what", "mark"), [("dataset", "stats.json"), ("clone", "clone.json"),
                                            ("export", "clone.json"), ("report", "report.json")])
def test_force_replaces_a_directory_only_when_it_is_an_earlier_output(tmp_path: Path, what: str, mark: str) -> None:
    from llmclone.dataset.io import atomic_dir

    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_text("meow")
    with pytest.raises(UserError, match=f"not a {what} directory"), atomic_dir(other, force=True, what=what):
        pass
    assert (other / "cat.jpg").read_text() == "meow" and sorted(p.name for p in tmp_path.iterdir()) == ["photos"]
    earlier = tmp_path / "earlier"
    write(earlier / mark, {})
    with atomic_dir(earlier, force=True, what=what) as tmp:
        write(tmp / mark, {"new": 1})
    assert json.loads((earlier / mark).read_text()) == {"new": 1}


def test_the_eval_split_always_leaves_turns_to_train_on(tmp_path: Path) -> None:
    one = write(tmp_path / "one.json", full_export([chat(7, dialogue(7, 2))]))  # one owner turn: "0 train" before
    assert run(one, tmp_path / "a", eval_fraction=0.9)["samples"] == {"train": 1, "eval": 0, "dropped_redacted": 0}
    two = write(tmp_path / "two.json", full_export([chat(7, dialogue(7, 4, step=3600))]))
    assert run(two, tmp_path / "b", eval_fraction=0.9)["samples"] == {"train": 1, "eval": 1, "dropped_redacted": 0}
    same_time = write(tmp_path / "tie.json", full_export([chat(7, dialogue(7, 4, step=0))]))  # no later turn to hold out
    with pytest.raises(UserError, match="leaving none to train on"):
        run(same_time, tmp_path / "c", eval_fraction=0.5)
    assert not (tmp_path / "c").exists()
