"""Shared test helpers: paths to fixtures and a builder for Telegram exports of any shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Generation speed is not what these tests check: on a busy 2-core CI machine the first text draw (Hypothesis
# builds its character tables) took 1.1 s and tripped the too-slow health check.
settings.register_profile("llmclone", suppress_health_check=[HealthCheck.too_slow], deadline=None)
settings.load_profile("llmclone")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "telegram"
EXAMPLE = ROOT / "examples" / "telegram_export" / "result.json"
OWNER = 100


def msg(mid: int, ts: int, sender: int | str, text: Any = "hi", **extra: Any) -> dict[str, Any]:
    """A Telegram export message as Telegram Desktop writes it."""
    from_id = sender if isinstance(sender, str) else f"user{sender}"
    m = {"id": mid, "type": "message", "date": "2024-01-01T00:00:00", "date_unixtime": str(ts),
         "from": f"name {sender}", "from_id": from_id, "text": text}
    m.update(extra)
    return m


def chat(chat_id: int, messages: list[dict[str, Any]], kind: str = "personal_chat", name: str | None = "Peer"
         ) -> dict[str, Any]:
    return {"name": name, "type": kind, "id": chat_id, "messages": messages}


def full_export(chats: list[dict[str, Any]], owner: int = OWNER, left: list[dict[str, Any]] | None = None
                ) -> dict[str, Any]:
    return {
        "about": "Here is the data you requested.",
        "personal_information": {"user_id": owner, "first_name": "Owner", "last_name": "Person"},
        "chats": {"about": "This page lists all chats from this export.", "list": chats},
        "left_chats": {"about": "Left chats.", "list": left or []},
    }


def dialogue(chat_id: int, turns: int, start: int = 1_700_000_000, step: int = 60, peer: int = 7) -> list[dict]:
    """Alternating peer/owner messages, one a minute."""
    return [msg(i + 1, start + i * step, peer if i % 2 == 0 else OWNER, f"message {i} in {chat_id}")
            for i in range(turns)]


def write(path: Path, obj: Any, **dump: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, **({"indent": 1} | dump)), encoding="utf-8")
    return path


@pytest.fixture
def small_export(tmp_path: Path) -> Path:
    """Three personal chats and one group with a little of everything."""
    chats = [
        chat(7, dialogue(7, 12)),
        chat(8, dialogue(8, 8, start=1_700_100_000, peer=8)),
        chat(9, dialogue(9, 6, start=1_700_200_000, peer=9), name="Third"),
        chat(50, [msg(1, 1_700_300_000, OWNER, "group hello")], kind="private_supergroup", name="Group"),
    ]
    return write(tmp_path / "export" / "result.json", full_export(chats))


@pytest.fixture(scope="session")
def example_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example export, ingested once per test session."""
    from llmclone.dataset.ingest import ingest

    out = tmp_path_factory.mktemp("example") / "dataset"
    ingest([EXAMPLE], out, progress=False, workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, example_dataset: Path) -> Path:
    from tiny import build_tiny_model

    texts = [m["content"] for line in (example_dataset / "train.jsonl").read_text().splitlines()
             for m in json.loads(line)["messages"]]
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", [*texts, "User: ", "Clone: "])


@pytest.fixture(autouse=True)
def fp32_on_every_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training tests compare numbers: the same fp32 whatever the CPU (bf16 where a CPU has it is tested on
    its own; commands run in a subprocess still choose by the CPU, as for users)."""
    from llmclone.models import runtime

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that tries to reach beyond this machine (Telegram, a model hub, anything)."""
    import ipaddress
    import socket

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = host == "localhost"
            if not loopback:
                raise AssertionError(f"test tried to connect to {host}: tests must stay on 127.0.0.1")

    def connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


@pytest.fixture(scope="session")
def tiny_clone(tiny_model: Path, example_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of the example's owner on the tiny model (3 steps: enough to have an adapter and metrics)."""
    from llmclone.config import TrainConfig
    from llmclone.training.trainer import train

    out = tmp_path_factory.mktemp("clone") / "clone"
    config = TrainConfig(model=str(tiny_model), max_steps=3, batch_tokens=512, max_length=256, eval_steps=2,
                         max_eval_samples=4, logging_steps=1)
    train(example_dataset, out, config, quiet=True)
    return out


@pytest.fixture(scope="session")
def embedded_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh LLMClone home in which the real embedded model gets converted (once per test session)."""
    home = tmp_path_factory.mktemp("llmclone-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLMCLONE_HOME", str(home))
        yield home
