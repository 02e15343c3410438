"""Base model resolution: the embedded GGUF converted once into a cached checkpoint, local paths, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmclone.errors import UserError
from llmclone.models import base_models
from llmclone.models.base_models import resolve


def test_local_checkpoint_and_unknown(tiny_model: Path, tmp_path: Path) -> None:
    base = resolve(str(tiny_model))
    assert base.kind == "local" and base.path == str(tiny_model.resolve()) and base.checksum
    assert resolve(str(tiny_model)).checksum == base.checksum
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no config\.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="not found"):
        resolve("no-such-thing")


def test_interrupted_conversion_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMCLONE_HOME", str(tmp_path))

    def fail(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(base_models, "_gguf_architecture", lambda path: "gemma3")
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    with pytest.raises(KeyboardInterrupt):
        resolve("embedded")
    models = tmp_path / "models"
    assert not [p for p in models.iterdir() if (p / "config.json").exists()]
    assert not [p for p in models.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_embedded_model_converted_once_and_cached(embedded_home: Path) -> None:
    """The real embedded model: GGUF → safetensors + tokenizer, then loads from the cache in seconds."""
    import time

    from transformers import AutoConfig, AutoTokenizer

    tmp_path = embedded_home
    base = resolve("embedded")
    assert base.kind == "embedded" and Path(base.path).is_relative_to(tmp_path)
    config = AutoConfig.from_pretrained(base.path)
    assert config.model_type in ("gemma3_text", "gemma3") and config.vocab_size == 262144
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    assert tokenizer.decode(tokenizer("привет, как дела?", add_special_tokens=False)["input_ids"]) == "привет, как дела?"
    assert not list((tmp_path / "models").glob("*.gguf")) and not list((tmp_path / "models").glob(".*"))
    start = time.perf_counter()
    again = resolve("embedded")
    assert again == base and time.perf_counter() - start < 5


def test_a_local_base_model_makes_no_network_call(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as a fresh process has it: online
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)
    resolve(str(tiny_model))
    import os

    assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert constants.HF_HUB_OFFLINE and constants.HF_HUB_DISABLE_TELEMETRY
    import huggingface_hub

    assert huggingface_hub.is_offline_mode()  # what transformers and the hub library ask before any request
