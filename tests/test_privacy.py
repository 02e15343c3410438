"""PII scrubbing: every detector finds its kind, and ordinary chat numbers are left alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmclone.dataset.privacy import Scrubber
from llmclone.errors import UserError


@pytest.mark.parametrize(
    ("text", "kind", "placeholder"),
    [
        ("пиши на ivan.petrov+chat@mail.ru", "email", "<email>"),
        ("my number is +7 916 555-12-34", "phone", "<phone>"),
        ("звони 8 (916) 555-12-34", "phone", "<phone>"),
        ("call +1 (415) 555-0132 tonight", "phone", "<phone>"),
        ("call me at (415) 555-0132", "phone", "<phone>"),
        ("домашний 123-45-67", "phone", "<phone>"),
        ("+44 20 7946 0958", "phone", "<phone>"),
        ("card 4111 1111 1111 1111 thanks", "card", "<card>"),
        ("карта 5500-0000-0000-0004", "card", "<card>"),
        ("IBAN DE89 3704 0044 0532 0130 00", "iban", "<iban>"),
        ("GB82WEST12345698765432", "iban", "<iban>"),
        ("https://bob:hunter2@example.com/x", "secret_url", "<secret-url>"),
        ("https://site.com/reset?token=abcdef123456", "secret_url", "<secret-url>"),
        ("go https://a.com/?next=https://b.com/x&token=abcdef123456", "secret_url", "<secret-url>"),
        ("x" * 100 + "-https://bob:hunter2@example.com/x", "secret_url", "<secret-url>"),
        ("." * 100 + "ivan@mail.ru", "email", "<email>"),
        ("me@mail.a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.com", "email", "<email>"),
        ("send to 0x52908400098527886E0F7030069857D2E4169EE7", "crypto_wallet", "<crypto-wallet>"),
        ("btc 1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "crypto_wallet", "<crypto-wallet>"),
        ("bot token 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1", "token", "<token>"),
        ("password: hunter2", "password", "<password>"),
        ("пароль: qwerty123", "password", "<password>"),
        ("код: 48213", "password", "<password>"),
        ("the wifi password is Tr0ub4dor", "password", "<password>"),
    ],
)
def test_detects(text: str, kind: str, placeholder: str) -> None:
    scrubber = Scrubber()
    out = scrubber.scrub(text)
    assert placeholder in out, out
    assert scrubber.counts[kind] == 1


@pytest.mark.parametrize(
    "text",
    [
        "встречаемся в 12:30", "at 7:45pm", "2023-10-05", "05.10.2023", "10/05/2023", "it costs $1,299.99",
        "1500 руб", "за 2 500 ₽", "in 1999 we", "version 3.11.7", "+5 градусов", "room 404", "order #12345678",
        "score 3-2", "100%", "5 км за 25:13", "ISBN 978-3-16-148410-0", "1 000 000 просмотров",
        "4111 1111 1111 1112",  # fails Luhn: not a card
        "call me maybe", "I passed the exam", "pin it to the board", "the code is clean",
        "12.5 kg", "с 9 до 18", "тел. не помню", "+1", "lol 555", "meeting 10-12",
    ],
)
def test_leaves_ordinary_text_alone(text: str) -> None:
    scrubber = Scrubber()
    assert scrubber.scrub(text) == text
    assert not scrubber.counts


def test_redact_file(tmp_path: Path) -> None:
    path = tmp_path / "redact.txt"
    path.write_text("# names\nИванов\nProject Falcon\nre:ул\\. \\w+ \\d+\n", encoding="utf-8")
    scrubber = Scrubber.from_file(path)
    out = scrubber.scrub("Иванов from project falcon lives at ул. Ленина 5")
    assert out == "<redacted> from <redacted> lives at <redacted>"
    assert scrubber.counts["custom"] == 3


def test_bad_redact_file(tmp_path: Path) -> None:
    path = tmp_path / "redact.txt"
    path.write_text("re:(unclosed\n")
    with pytest.raises(UserError, match=r"redact\.txt:1"):
        Scrubber.from_file(path)
    with pytest.raises(UserError, match="cannot read"):
        Scrubber.from_file(tmp_path / "missing.txt")


def test_find_reports_without_counting() -> None:
    scrubber = Scrubber()
    found = scrubber.find("mail me: a@b.com or +7 916 555-12-34")
    assert ("email", "a@b.com") in found and any(k == "phone" for k, _ in found)
    assert not scrubber.counts


pieces = st.sampled_from(["hi", "a@b.com", "+7 916 555-12-34", "12:30", "password: x1y2z3", "4111 1111 1111 1111",
                          "привет", "код: 1234", "monkey", "\n", " ", "2023-10-05", "İ", "ß"])


@given(st.lists(st.lists(pieces, max_size=6).map(" ".join), max_size=12))
def test_scrub_many_equals_one_by_one(texts: list[str]) -> None:
    one, many = Scrubber(), Scrubber()
    assert many.scrub_many(list(texts)) == [one.scrub(t) for t in texts]
    assert many.counts == one.counts


def test_detectors_take_linear_time_on_long_runs() -> None:
    """Each of these took quadratic time (16,000 'a.' before an '@' took 2 s, so 1 MB took hours)."""
    import subprocess
    import sys

    code = (
        "from llmclone.dataset.privacy import Scrubber\n"
        "s = Scrubber()\n"
        "for t in ['a.' * 500_000 + '@', 'a.' * 500_000 + '://', 'https://' * 120_000 + '?', '1-' * 500_000 + '@x']:\n"
        "    s.scrub(t)\n"
        "print(s.scrub('a.' * 1000 + 'b@c.com')[-7:])\n"
    )
    # a bound on termination (the quadratic patterns ran for hours), not a speed target
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "<email>"
