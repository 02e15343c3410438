"""The llama.cpp engine's shortlisted vocabulary: any text still goes in, spelled with listed pieces only."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmclone.models.chat_format import ChatFormat
from llmclone.models.shortlist import Shortlist, clone_shortlist, shortlist_ids

TEXTS = st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs", "M")), max_size=40)


def _round_trip(listed: Shortlist, tokenizer: object, text: str) -> list[int]:
    full = tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    short = listed.to_short(full)
    assert all(0 <= s < len(listed) for s in short)
    back = [listed.to_full(s) for s in short]
    assert set(back) <= set(listed.full)
    assert tokenizer.decode(back) == tokenizer.decode(full)  # type: ignore[attr-defined]
    return short


def test_tiny_tokenizer_shortlist_keeps_the_seen_tokens_and_spells_the_rest(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    seen = tokenizer("привет, как дела", add_special_tokens=False)["input_ids"]
    keep = shortlist_ids(tokenizer, seen, head=8)
    assert set(seen) <= set(keep) and set(range(8)) <= set(keep) and len(keep) < len(tokenizer)
    listed = Shortlist(keep, tokenizer)
    assert listed.to_short(seen) == [keep.index(i) for i in seen]  # listed tokens map to their positions
    unlisted = [i for i in tokenizer("hello world, how are you", add_special_tokens=False)["input_ids"]
                if i not in keep]
    assert unlisted and all(len(listed.spell(i)) > 1 for i in unlisted)
    _round_trip(listed, tokenizer, "hello world, how are you? привет")


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
def test_gemma_shortlist_round_trips_any_text(embedded_home: Path, text: str) -> None:
    listed, tokenizer = _gemma_shortlist()
    _round_trip(listed, tokenizer, text)


@pytest.mark.slow
def test_gemma_shortlist_spells_with_the_fewest_listed_pieces(embedded_home: Path) -> None:
    listed, tokenizer = _gemma_shortlist()
    assert 30_000 < len(listed) < 45_000
    visage = tokenizer.convert_tokens_to_ids("▁visage")
    assert visage not in listed.position
    assert tokenizer.convert_ids_to_tokens([listed.to_full(s) for s in listed.spell(visage)]) == ["▁vis", "age"]
    # a character no listed piece covers comes as its UTF-8 bytes
    short = _round_trip(listed, tokenizer, "ꙮ")
    assert [tokenizer.convert_ids_to_tokens(listed.to_full(s)) for s in short] == ["<0xEA>", "<0x99>", "<0xAE>"]
    # the chat format's labels and markers are listed as themselves, even when the training tokens lack them
    for token in ("<bos>", "<eos>", "<end_of_turn>", "\n", "\n\n", "User", "Clone", ":"):
        assert tokenizer.convert_tokens_to_ids(token) in listed.position, token


_GEMMA: list[tuple[Shortlist, object]] = []


def _gemma_shortlist() -> tuple[Shortlist, object]:
    if not _GEMMA:
        from transformers import AutoTokenizer

        from llmclone.models.base_models import resolve

        tokenizer = AutoTokenizer.from_pretrained(resolve("embedded").path)
        seen = tokenizer("привет! как дела? норм)) пошли гулять", add_special_tokens=False)["input_ids"]
        _GEMMA.append((Shortlist(clone_shortlist(tokenizer, ChatFormat(), seen), tokenizer), tokenizer))
    return _GEMMA[0]
