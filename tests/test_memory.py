"""The clone's memory: what it holds (the training split only), what a prompt may recall (never the
sample's own conversation, never another person's lines in a foreign chat), forgetting, live additions
and the commands, on a dataset made by our ingest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OWNER, chat, full_export, msg, write

from llmclone.dataset.ingest import ingest
from llmclone.errors import UserError
from llmclone.memory.exchanges import TYPED, chat_key
from llmclone.memory.recall import Memory, RecallSettings
from llmclone.training.data import read_keys, read_samples

ALICE, BOB, CAROL = 7, 8, 9
DAY = 86400
T0 = 1_700_000_000


def conversation(peer: int, start: int, pairs: list[tuple[str, str]], first_id: int) -> list[dict]:
    out = []
    for i, (theirs, mine) in enumerate(pairs):
        out.append(msg(first_id + 2 * i, start + 600 * i, peer, theirs))
        out.append(msg(first_id + 2 * i + 1, start + 600 * i + 60, OWNER, mine))
    return out


def memory_export(tmp_path: Path) -> Path:
    alice = (conversation(ALICE, T0, [("what is your dog called?", "my dog is called biscuit"),
                                      ("my locker code is zebra forty two, keep it", "ok i will remember")], 1)
             + conversation(ALICE, T0 + 2 * DAY, [("how is biscuit doing", "biscuit chewed my slippers again"),
                                                  ("lol typical", "yeah he never learns")], 100)
             + conversation(ALICE, T0 + 30 * DAY, [("any plans tonight", "eval only phrase quokka")], 200))
    bob = (conversation(BOB, T0 + DAY, [("are you coming to the match", "yes with my brother"),
                                        ("which stadium", "the old one near the river")], 1)
           + conversation(BOB, T0 + 3 * DAY, [("did you see the goal", "what a goal honestly"),
                                              ("your dog ok?", "he is fine thanks")], 100))
    carol = conversation(CAROL, T0 + 4 * DAY, [("do you know a good bakery", "the one on elm street"),
                                               ("thanks!", "anytime")], 1)
    chats = [chat(ALICE, alice, name="Alice"), chat(BOB, bob, name="Bob"), chat(CAROL, carol, name="Carol")]
    return write(tmp_path / "export" / "result.json", full_export(chats))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    out = tmp_path / "dataset"
    ingest([memory_export(tmp_path)], out, progress=False, workers=1)
    return out


@pytest.fixture
def memory(dataset: Path, tmp_path: Path) -> Memory:
    clone = tmp_path / "clone"
    clone.mkdir()
    stats = json.loads((dataset / "stats.json").read_text())
    return Memory.build(clone, dataset, stats)


def key(peer: int) -> str:
    return chat_key("telegram", "personal", peer)


def shown_text(memory: Memory, history: list[dict[str, str]], chat: str | None, **kw: object) -> str:
    recall = memory.recall(history, chat, **kw)  # type: ignore[arg-type]
    return "\n".join(f"{said}\n{owner}" for said, owner in recall.exchanges)


def test_the_memory_holds_the_training_split_only(dataset: Path, memory: Memory) -> None:
    train_owner = {m[-1]["content"] for m in read_samples(dataset / "train.jsonl")}
    eval_owner = {m[-1]["content"] for m in read_samples(dataset / "eval.jsonl")}
    assert "eval only phrase quokka" in eval_owner  # the held-out period holds the planted phrase
    assert {e.owner for e in memory.exchanges} == train_owner
    assert not {e.owner for e in memory.exchanges} & eval_owner
    for chat_ in (key(ALICE), key(BOB), None):
        assert "quokka" not in shown_text(memory, [{"role": "user", "content": "quokka eval phrase"}], chat_)


def test_a_training_sample_recalls_only_conversations_before_its_own(dataset: Path, memory: Memory) -> None:
    samples = read_samples(dataset / "train.jsonl")
    keys = read_keys(dataset / "train.jsonl")
    recalled = 0
    for messages, (chat_, start) in zip(samples, keys, strict=True):
        # the sample's own target as the query: the strongest pull towards copying it
        query = [*messages[:-1], {"role": "user", "content": messages[-1]["content"]}]
        for e, _ in memory.select(query, chat_, RecallSettings(k=8, recent=4, tokens=4096), session=start):
            recalled += 1
            assert e.start < start
    assert recalled > len(samples)  # the rule is not met by recalling nothing


def test_another_persons_lines_never_reach_another_chat(memory: Memory) -> None:
    alice_lines = [e.said for e in memory.exchanges if e.chat == key(ALICE) and e.said]
    wide = RecallSettings(k=16, recent=8, tokens=4096)
    for peer in (BOB, CAROL, None):
        for line in [*alice_lines, "zebra locker code dog biscuit"]:
            text = shown_text(memory, [{"role": "user", "content": line}], key(peer) if peer else None, settings=wide)
            assert not any(a in text for a in alice_lines), (peer, line)
            assert "zebra" not in text  # Alice's locker code is her line, not the owner's
    # within Alice's own chat her lines come along, and the owner's words from other chats do too
    mine = shown_text(memory, [{"role": "user", "content": "your dog and your brother at the match"}], key(ALICE),
                      settings=wide)
    assert "what is your dog called?" in mine and "with my brother" in mine
    assert "are you coming to the match" not in mine  # Bob's line, in Alice's chat
    # the owner's own words from Alice's chat may reach Bob (they are the owner's)
    bob = shown_text(memory, [{"role": "user", "content": "what is your dog called"}], key(BOB), settings=wide)
    assert "biscuit" in bob


def test_recall_is_deterministic_and_within_its_budget(memory: Memory, dataset: Path, tmp_path: Path) -> None:
    history = [{"role": "user", "content": "how is your dog biscuit and the match"}]
    first = memory.recall(history, key(ALICE))
    again = Memory.load(tmp_path / "clone").recall(history, key(ALICE))
    assert first == again == memory.recall(history, key(ALICE)) and first.exchanges
    from llmclone.dataset.dialogues import estimate_tokens

    for budget in (16, 40, 80):
        recall = memory.recall(history, key(ALICE), RecallSettings(k=16, recent=8, tokens=budget))
        cost = sum(estimate_tokens(o) + (estimate_tokens(s) if s else 0) + 4 for s, o in recall.exchanges)
        assert cost <= budget


def test_the_prompt_with_memory_stays_within_its_budget(memory: Memory, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    from llmclone.models.chat_format import ChatFormat

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    fmt = ChatFormat()
    history = [{"role": "user" if i % 2 else "assistant", "content": f"line {i} about the dog and the match"}
               for i in range(60)]
    recall = memory.recall(history, key(ALICE), RecallSettings(k=8, recent=4, tokens=400))
    assert recall.exchanges
    for budget in (64, 128, 256, 1024):
        ids = fmt.prompt_within(tokenizer, history, budget, recall)
        assert len(ids) <= budget
    text = tokenizer.decode(fmt.prompt_within(tokenizer, history, 1024, recall))
    assert "Memory:" in text and text.rstrip().endswith("Clone:")


def test_forget_removes_every_trace(memory: Memory, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    memory.add(key(ALICE), "live question from alice", "live answer about biscuit", TYPED)
    memory.close()
    memory = Memory.load(clone)
    held = sum(1 for e in memory.exchanges if e.chat == key(ALICE))
    assert held == 4  # Alice's first two conversations; the third is held out
    assert memory.forget(key(ALICE)) == held + 1
    after = Memory.load(clone)
    assert all(e.chat != key(ALICE) for e in [*after.exchanges, *after._live])
    assert "biscuit" not in shown_text(after, [{"role": "user", "content": "biscuit dog"}], key(BOB))
    for path in (clone / "memory").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for word in (b"biscuit", b"zebra", b"live answer", key(ALICE).encode()):
                assert word not in data, (path, word)
    with pytest.raises(UserError, match="not in this clone's memory"):
        after.forget(key(ALICE))


def test_live_memory_survives_a_restart_and_keeps_the_cross_chat_rule(memory: Memory, tmp_path: Path) -> None:
    memory.add(key(CAROL), "what was the name of that bakery again", "sunrise bakery on elm", TYPED)
    memory.close()
    again = Memory.load(tmp_path / "clone")
    here = shown_text(again, [{"role": "user", "content": "bakery name"}], key(CAROL))
    assert "sunrise bakery on elm" in here and "what was the name of that bakery again" in here
    there = shown_text(again, [{"role": "user", "content": "bakery name"}], key(BOB))
    assert "sunrise bakery on elm" in there and "what was the name" not in there
    live = tmp_path / "clone" / "memory" / "live.sqlite"
    assert live.stat().st_mode & 0o077 == 0


def test_contacts_give_each_chat_its_relation(dataset: Path, tmp_path: Path) -> None:
    contacts = tmp_path / "contacts.toml"
    contacts.write_text(f'[[contact]]\nrelation = "mom"\nchats = ["telegram:{ALICE}"]\n\n'
                        f'[[contact]]\nrelation = "colleague"\nchats = ["{key(BOB)}"]\n')
    stats = json.loads((dataset / "stats.json").read_text())
    (tmp_path / "c").mkdir()
    memory = Memory.build(tmp_path / "c", dataset, stats, contacts)
    assert memory.recall([{"role": "user", "content": "hi"}], key(ALICE)).relation == "mom"
    assert memory.recall([{"role": "user", "content": "hi"}], key(BOB)).relation == "colleague"
    assert memory.recall([{"role": "user", "content": "hi"}], key(CAROL)).relation is None
    bad_cases = {
        "unknown chat": ('[[contact]]\nrelation = "mom"\nchats = ["telegram:424242"]\n', "not in this clone's memory"),
        "no relation": (f'[[contact]]\nchats = ["telegram:{ALICE}"]\n', "wrong shape"),
        "no tables": ('mom = "telegram:7"\n', "no \\[\\[contact\\]\\] tables"),
        "bad name": ('[[contact]]\nrelation = "mom"\nchats = ["alice"]\n', "names no chat"),
        "not toml": ("[[contact\n", "cannot read the contacts file"),
    }
    for text, message in bad_cases.values():
        contacts.write_text(text)
        with pytest.raises(UserError, match=message):
            Memory.build(tmp_path / "c", dataset, stats, contacts)


def llmclone(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmclone", *args], capture_output=True, text=True, timeout=300)


def test_memory_commands_and_their_bad_input(dataset: Path, tiny_clone: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(tiny_clone, clone)
    shutil.rmtree(clone / "memory")
    missing = llmclone("memory", "show", str(clone), "hello")
    assert missing.returncode == 2 and "llmclone memory build" in missing.stderr and "Traceback" not in missing.stderr
    # the tiny clone is the example's owner; this dataset is another person's
    other = llmclone("memory", "build", str(clone), "--data", str(dataset))
    assert other.returncode == 2 and "another person's dataset" in other.stderr
    manifest = json.loads((clone / "clone.json").read_text())
    manifest["owner"] = json.loads((dataset / "stats.json").read_text())["owner"]
    (clone / "clone.json").write_text(json.dumps(manifest))
    built = llmclone("memory", "build", str(clone), "--data", str(dataset))
    assert built.returncode == 0 and "exchanges from 3 chats" in built.stdout, built.stderr
    shown = llmclone("memory", "show", str(clone), "what is your dog called", "--chat", f"telegram:{ALICE}", "--json")
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)
    assert found and {"chat", "start", "said", "owner", "origin"} <= set(found[0])
    assert any(e["owner"] == "my dog is called biscuit" and e["chat"] == key(ALICE) for e in found)
    listed = json.loads(llmclone("memory", "chats", str(clone), "--json").stdout)
    assert {r["chat"] for r in listed} == {key(ALICE), key(BOB), key(CAROL)}
    nowhere = llmclone("memory", "forget", str(clone), "telegram:424242")
    assert nowhere.returncode == 2 and "not in this clone's memory" in nowhere.stderr
    forgot = llmclone("memory", "forget", str(clone), f"telegram:{ALICE}")
    assert forgot.returncode == 0 and "--exclude-chat" in forgot.stdout
    assert json.loads((clone / "clone.json").read_text())["memory"]["chats"] == 2


def test_a_clone_trained_with_memory_draws_on_what_it_recalls(tmp_path: Path) -> None:
    """Each chat has its own word, asked for by the same question in every conversation: only the memory
    (that chat's earlier conversation) says which. Trained with memory, the clone gives the chat's word a
    higher likelihood under its own chat's recall than under another chat's."""
    from tiny import build_tiny_model

    from llmclone.clone import LLMClone
    from llmclone.config import TrainConfig
    from llmclone.training.trainer import train

    words = ["mango", "kiwi", "plum", "lemon", "peach", "grape", "melon", "apple", "cherry", "lime", "fig", "pear"]
    chats = []
    for c, word in enumerate(words):
        peer, messages = 10 + c, []
        for d in range(8):
            t = T0 + d * DAY + c * 3600
            messages += [msg(2 * d + 1, t, peer, "what's the word?"), msg(2 * d + 2, t + 60, OWNER, word)]
        chats.append(chat(peer, messages, name=f"P{c}"))
    data = tmp_path / "ds"
    ingest([write(tmp_path / "export" / "result.json", full_export(chats))], data, progress=False, workers=1)
    texts = [m["content"] for line in (data / "train.jsonl").read_text().splitlines() for m in json.loads(line)["messages"]]
    model = build_tiny_model(tmp_path / "model", [*texts, "User: ", "Clone: ", "Memory:", "---"])
    config = TrainConfig(model=str(model), max_steps=600, batch_tokens=512, max_length=128, eval_steps=1000,
                         learning_rate=5e-3, lora_r=16, memory_k=0, memory_recent=1)
    train(data, tmp_path / "clone", config, quiet=True)
    clone = LLMClone.load(tmp_path / "clone")
    question = [{"role": "user", "content": "what's the word?"}]
    own = [clone.recall(question, key(10 + c)) for c in range(len(words))]
    other = [own[(c + 1) % len(words)] for c in range(len(words))]
    assert all(r is not None and r.exchanges[-1][1] == w for r, w in zip(own, words, strict=True))
    cases = [(question, w) for w in words]
    right = [loss / n for loss, n in clone.reply_losses(cases, recalls=own)]
    wrong = [loss / n for loss, n in clone.reply_losses(cases, recalls=other)]
    assert sum(r < w for r, w in zip(right, wrong, strict=True)) >= 10
    assert sum(right) / len(right) < sum(wrong) / len(wrong) - 0.5


def test_replies_use_memory_as_the_clone_was_trained(tiny_model: Path, example_dataset: Path, tmp_path: Path) -> None:
    from llmclone.clone import LLMClone
    from llmclone.config import TrainConfig
    from llmclone.memory import manage
    from llmclone.training.trainer import train

    clone = tmp_path / "plain"
    config = TrainConfig(model=str(tiny_model), max_steps=2, batch_tokens=512, max_length=256, max_eval_samples=2,
                         memory=False)
    manifest = train(example_dataset, clone, config, quiet=True)
    assert manifest["memory"] is None and not (clone / "memory").exists()
    assert LLMClone.load(clone).memory is None
    with pytest.raises(UserError, match="llmclone memory build"):
        LLMClone.load(clone, memory="on")
    manage.build(clone, example_dataset)
    assert LLMClone.load(clone).memory is None  # built afterwards: used when asked for, not by default
    assert LLMClone.load(clone, memory="on").memory is not None
