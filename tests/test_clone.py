"""A trained tiny clone: loading, replies, the original library's API, and the train CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE

from llmclone import CloneConfig, LLMClone, UserError, process_tg_data, train_clone


def test_load_and_reply(tiny_clone: Path) -> None:
    clone = LLMClone.load(tiny_clone, merge=False)
    history = [{"role": "user", "content": "привет! как дела?"}]
    messages = clone.reply(history, temperature=0, max_new_tokens=30)
    assert isinstance(messages, list) and all(isinstance(m, str) and m for m in messages)
    for m in messages:
        assert not m.startswith(("User:", "Clone:"))
    base = clone.reply(history, base=True, temperature=0, max_new_tokens=30)
    assert isinstance(base, list)
    assert isinstance(clone.sample("hi"), str)
    merged = LLMClone.load(tiny_clone)  # the default: adapter folded in, same replies
    assert merged.reply(history, temperature=0, max_new_tokens=30) == messages
    with pytest.raises(UserError, match="merge=False"):
        merged.reply(history, base=True)


def test_manifest_round_trip_and_copy(tiny_clone: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copied-clone"
    shutil.copytree(tiny_clone, copy)
    clone = LLMClone.load(copy, merge=False)
    assert clone.manifest == json.loads((tiny_clone / "clone.json").read_text())
    assert clone.chat_format.kind == "transcript"
    clone.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "adapter" / "adapter_config.json").is_file()
    other = LLMClone(CloneConfig(model_name=clone.manifest["base_model"]["spec"]))
    other.add_adapters(copy)
    assert other.reply([{"role": "user", "content": "ok"}], temperature=0, max_new_tokens=5) is not None


@pytest.mark.parametrize("case", ["missing", "no manifest", "corrupt", "newer"])
def test_bad_clone_directories(tiny_clone: Path, tmp_path: Path, case: str) -> None:
    import shutil

    target = tmp_path / "clone"
    if case != "missing":
        shutil.copytree(tiny_clone, target)
        manifest = target / "clone.json"
        if case == "no manifest":
            manifest.unlink()
        elif case == "corrupt":
            manifest.write_text("{not json")
        else:
            data = json.loads(manifest.read_text())
            manifest.write_text(json.dumps(data | {"format_version": 99}))
    with pytest.raises(UserError):
        LLMClone.load(target)


def test_original_api(tiny_model: Path, tmp_path: Path) -> None:
    dataset = process_tg_data(EXAMPLE)
    clone = LLMClone(CloneConfig(model_name=str(tiny_model), settings={"max_steps": 2, "batch_tokens": 512,
                                                                       "max_length": 256}))
    train_clone(clone, dataset, out=tmp_path / "api-clone", quiet=True)
    assert (tmp_path / "api-clone" / "clone.json").is_file()
    assert isinstance(clone.sample("привет"), str)


def test_train_cli_end_to_end(tiny_model: Path, example_dataset: Path, tmp_path: Path) -> None:
    def llmclone(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmclone", *args], capture_output=True, text=True, timeout=600)

    config = tmp_path / "clone.toml"
    config.write_text(f'[train]\nmodel = "{tiny_model}"\nmax_steps = 2\nbatch_tokens = 512\nmax_length = 256\n')
    printed = llmclone("train", str(example_dataset), "--out", str(tmp_path / "c"), "--config", str(config),
                       "--lora-r", "4", "--print-config")
    assert printed.returncode == 0 and "lora_r = 4" in printed.stdout and "max_steps = 2" in printed.stdout
    assert 'attention = "auto"' in printed.stdout and '#   attention = "varlen"' in printed.stdout  # and what runs
    done = llmclone("train", str(example_dataset), "--out", str(tmp_path / "c"), "--config", str(config), "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "c" / "clone.json").read_text())["metrics"]["steps"] == 2
    # the same file's [reply] table is how the clone replies; flags override it
    config.write_text(config.read_text() + "\n[reply]\ntemperature = 0\nmax_new_tokens = 6\n")
    by_file = llmclone("reply", str(tmp_path / "c"), "привет", "--json", "--config", str(config))
    by_flags = llmclone("reply", str(tmp_path / "c"), "привет", "--json", "--temperature", "0", "--max-new-tokens", "6")
    assert by_file.returncode == 0 and by_file.stdout == by_flags.stdout, by_file.stderr
    overridden = llmclone("reply", str(tmp_path / "c"), "привет", "--config", str(config), "--temperature", "5")
    assert overridden.returncode == 2 and "temperature" in overridden.stderr and "Traceback" not in overridden.stderr
    again = llmclone("train", str(example_dataset), "--out", str(tmp_path / "c"), "--config", str(config))
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    missing = llmclone("train", str(tmp_path / "nope"), "--out", str(tmp_path / "d"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text("rank = 8\n")
    wrong = llmclone("train", str(example_dataset), "--out", str(tmp_path / "d"), "--config", str(bad_key))
    assert wrong.returncode == 2 and "rank: unknown setting" in wrong.stderr
    assert not (tmp_path / "d").exists()


def test_demo_runs_the_whole_pipeline(tiny_model: Path, tmp_path: Path) -> None:
    from llmclone.demo import run_demo

    rows = run_demo(tmp_path / "demo", model=str(tiny_model), steps=2, quiet=True)
    assert len(rows) >= 3 and all(set(r) == {"prompt", "clone", "base"} for r in rows)
    assert (tmp_path / "demo" / "clone" / "clone.json").is_file()
    assert json.loads((tmp_path / "demo" / "demo.json").read_text()) == rows


def test_reply_and_chat_commands(tiny_clone: Path) -> None:
    def llmclone(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmclone", *args], capture_output=True, text=True, timeout=600,
                              input=stdin)

    as_json = llmclone("reply", str(tiny_clone), "привет", "--json", "--temperature", "0", "--max-new-tokens", "12")
    assert as_json.returncode == 0, as_json.stderr
    assert isinstance(json.loads(as_json.stdout)["messages"], list)
    from_stdin = llmclone("reply", str(tiny_clone), "--max-new-tokens", "8", stdin="как дела?\n")
    assert from_stdin.returncode == 0
    empty = llmclone("reply", str(tiny_clone), stdin="")
    assert empty.returncode == 2 and "no message" in empty.stderr
    session = llmclone("chat", str(tiny_clone), "--temperature", "0", "--max-new-tokens", "8",
                       stdin="привет\nдва \\\nстроки\n/regen\n/reset\n/regen\n/nope\n/exit\n")
    assert session.returncode == 0, session.stderr
    out = session.stdout
    assert out.startswith("Talking to lyosha.")
    assert "(conversation forgotten)" in out and "(nothing to regenerate yet)" in out and "(unknown command" in out
    assert out.count("you> ") == 7 and "...  " in out


def test_chat_history_and_streaming(tiny_clone: Path) -> None:
    import io

    from llmclone.terminal import chat_loop

    class Recorder:
        def __init__(self) -> None:
            self.histories: list[list[dict[str, str]]] = []

        def reply(self, history, on_message=None, **kw):  # type: ignore[no-untyped-def]
            self.histories.append([dict(m) for m in history])
            for m in ("one", "two"):
                on_message(m)
            return ["one", "two"]

    fake = Recorder()
    out = io.StringIO()
    chat_loop(fake, io.StringIO("hi\nmore\n/regen\n"), out, name="x")
    assert fake.histories[1] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "one\ntwo"},
                                 {"role": "user", "content": "more"}]
    assert fake.histories[2] == fake.histories[1]  # regen drops the last reply and asks again
    assert out.getvalue().count("x> one\nx> two\n") == 3
    # the real clone hands messages over as they are generated, and they are what it returns
    clone = LLMClone.load(tiny_clone)
    seen: list[str] = []
    returned = clone.reply([{"role": "user", "content": "привет"}], on_message=seen.append, temperature=0,
                           max_new_tokens=20)
    assert seen == returned
