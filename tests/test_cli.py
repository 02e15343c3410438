"""The command line as a user runs it: a real process, exit codes, one-sentence errors, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE, chat, full_export, msg, write


def llmclone(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmclone", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands() -> None:
    out = llmclone("--help")
    assert out.returncode == 0 and "ingest" in out.stdout


def test_ingest_example(tmp_path: Path) -> None:
    out = llmclone("ingest", str(EXAMPLE.parent), "--out", str(tmp_path / "ds"))
    assert out.returncode == 0, out.stderr
    assert "samples:" in out.stdout and "redactions: 1 email, 1 phone" in out.stdout
    as_json = llmclone("ingest", str(EXAMPLE), "--out", str(tmp_path / "ds2"), "--json")
    assert json.loads(as_json.stdout)["owner"]["name"] == "Lyosha Petrov"


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    files = {
        "not json": b"just some text",
        "truncated": EXAMPLE.read_bytes()[:50_000],
        "html": b"<!DOCTYPE html>\n<html><head><title>Exported Data</title></head></html>",
        "other json": b'{"users": [1, 2, 3]}',
        "empty export": json.dumps(full_export([])).encode(),
        "owner silent": json.dumps(full_export([chat(7, [msg(1, 1_700_000_000, 7, "anyone?")])])).encode(),
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp / name.replace(" ", "_") / "result.json"
        paths[name].parent.mkdir()
        paths[name].write_bytes(content)
    unreadable = tmp / "unreadable.json"
    unreadable.write_text("{}")
    unreadable.chmod(0)
    paths["unreadable"] = unreadable
    paths["missing"] = tmp / "missing.json"
    return paths


@pytest.mark.parametrize("case", ["not json", "truncated", "html", "other json", "empty export", "owner silent",
                                  "unreadable", "missing"])
def test_bad_input_one_sentence_exit_2_no_output(tmp_path: Path, case: str) -> None:
    path = _bad_inputs(tmp_path)[case]
    if case == "unreadable" and path.open("rb").readable() and __import__("os").geteuid() == 0:
        pytest.skip("root reads any file")
    out = llmclone("ingest", str(path), "--out", str(tmp_path / "ds"))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr
    assert str(path.name) in out.stderr or str(path) in out.stderr
    assert not (tmp_path / "ds").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds")]


def test_bad_option_value(tmp_path: Path) -> None:
    out = llmclone("ingest", str(EXAMPLE), "--out", str(tmp_path / "ds"), "--since", "last week")
    assert out.returncode == 2 and "YYYY-MM-DD" in out.stderr


def test_existing_dataset_needs_force(tmp_path: Path) -> None:
    write(tmp_path / "ds" / "keep.txt", "mine")
    out = llmclone("ingest", str(EXAMPLE), "--out", str(tmp_path / "ds"))
    assert out.returncode == 2 and "--force" in out.stderr
    assert (tmp_path / "ds" / "keep.txt").exists()


def test_force_replaces_only_an_earlier_output(tmp_path: Path) -> None:
    """--force pointed at the export itself, at a file or at any other directory deletes nothing."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "result.json").write_bytes(EXAMPLE.read_bytes())
    out = llmclone("ingest", str(export), "--out", str(export), "--force")
    assert out.returncode == 2 and "not a dataset directory" in out.stderr and "Traceback" not in out.stderr
    assert (export / "result.json").read_bytes() == EXAMPLE.read_bytes()
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    out = llmclone("ingest", str(export), "--out", str(afile), "--force")
    assert out.returncode == 2 and "is a file" in out.stderr
    assert afile.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["export", "notes.txt"]
    dataset = tmp_path / "ds"
    assert llmclone("ingest", str(export), "--out", str(dataset)).returncode == 0
    assert llmclone("ingest", str(export), "--out", str(dataset), "--force").returncode == 0  # an earlier dataset
    out = llmclone("train", str(dataset), "--out", str(export), "--force", "--max-steps", "1")
    assert out.returncode == 2 and "not a clone directory" in out.stderr
    assert (export / "result.json").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]


def test_version_non_finite_settings_and_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from llmclone import __version__, cli

    out = llmclone("--version")
    assert out.returncode == 0 and out.stdout.strip() == __version__
    out = llmclone("train", str(tmp_path), "--out", str(tmp_path / "c"), "--print-config", "--epochs", "inf")
    assert out.returncode == 2 and "finite" in out.stderr and "Infinity" not in out.stdout

    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("llmclone.dataset.ingest.ingest", interrupted)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["ingest", str(EXAMPLE), "--out", str(tmp_path / "ds")])
    assert stopped.value.code == 130 and "interrupted" in capsys.readouterr().err


def test_reply_refuses_text_that_is_not_utf8(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "llmclone", "reply", str(tmp_path), b"caf\xe9"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "not valid UTF-8" in out.stderr and "Traceback" not in out.stderr
    piped = subprocess.run([sys.executable, "-m", "llmclone", "reply", str(tmp_path)], input=b"caf\xe9",
                           capture_output=True, timeout=300)
    assert piped.returncode == 2 and b"not valid UTF-8" in piped.stderr and b"Traceback" not in piped.stderr


def test_sigterm_on_ingest_stops_workers_and_leaves_nothing(tmp_path: Path) -> None:
    import os
    import signal
    import time

    from conftest import dialogue

    chats = [chat(i, dialogue(i, 400, peer=i)) for i in range(1000, 1300)]  # ~20 MB: the parallel path
    export = write(tmp_path / "big" / "result.json", full_export(chats))
    proc = subprocess.Popen([sys.executable, "-m", "llmclone", "ingest", str(export), "--out", str(tmp_path / "ds"),
                             "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".ds.*.tmp/part-*.spill")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # until the workers have started writing
    assert proc.poll() is None, "ingest ended before it could be stopped"
    children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert children  # the worker processes
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    time.sleep(0.5)
    alive = []
    for pid in children:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    assert not alive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big"]


def test_one_clone_toml_holds_every_table(tmp_path: Path) -> None:
    """[train], [reply] and [telegram] in one file, each read by the same loader; a flat file is [train];
    a reply setting left in [telegram] (where it used to be) says where it goes now."""
    from llmclone.config import load_config, load_reply_config
    from llmclone.errors import UserError
    from llmclone.telegram.config import load_telegram_config

    path = tmp_path / "clone.toml"
    path.write_text('[train]\nlora_r = 16\n\n[reply]\ntemperature = 0.3\nengine = "llama.cpp"\n\n'
                    '[telegram]\nowner_id = 5\n')
    assert load_config(path, {}).lora_r == 16
    reply = load_reply_config(path, {"temperature": None})
    assert (reply.temperature, reply.engine, reply.max_new_tokens) == (0.3, "llama.cpp", 80)
    assert load_reply_config(path, {"temperature": 0.5}).temperature == 0.5
    assert load_telegram_config(path).owner_id == 5
    only_train = tmp_path / "train.toml"
    only_train.write_text("[train]\nlora_r = 4\n")
    assert load_reply_config(only_train) == load_reply_config(None)  # no [reply]: the defaults
    flat = tmp_path / "flat.toml"
    flat.write_text("lora_r = 4\n")
    assert load_config(flat, {}).lora_r == 4
    old = tmp_path / "old.toml"
    old.write_text("[telegram]\nowner_id = 5\ntemperature = 0.3\n")
    with pytest.raises(UserError, match=r"temperature now belong.*\[reply\] table"):
        load_telegram_config(old)
    for bad, why in (("[reply]\ntemperature = 3\n", "temperature"), ('[reply]\nengine = "vllm"\n', "engine"),
                     ("[reply]\nbeam = 4\n", "beam: unknown setting"), ("[train\n", "not valid TOML")):
        path.write_text(bad)
        with pytest.raises(UserError, match=why):
            load_reply_config(path)
