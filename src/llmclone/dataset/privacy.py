"""Scrub personal data from text before anything is written: typed placeholders, counted by type.

Detectors are tuned for chat text in Russian and English. They aim for no false positives on what chats
are full of (times, dates, prices, counts, years) at the price of missing some odd phone formats: each
candidate is checked by shape and, where the data has one, a checksum (Luhn for cards, mod-97 for IBANs).
The same `Scrubber` is used by evaluation to find PII in what a clone says.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from itertools import accumulate
from pathlib import Path

from llmclone.errors import UserError

REDACTED = "<redacted>"

# Cheap gate: text with none of these cannot hold anything we look for (most chat messages).
_GATE_CHARS = re.compile(r"[0-9@]")
_GATE_WORDS = ("://", "pass", "pwd", "парол", "пасс", "код", "code", "pin", "пин", "secret", "секрет", "token", "key")
_SEP = "\n\x00\n"  # joins a chat's texts: no detector can match across it
_DIGIT = re.compile(r"\d")
_MIN_DIGITS = {"phone": 7, "card": 13, "iban": 10}

_SECRET_WORDS = (
    r"password|passwd|pass|pwd|пароль|пасс|код|code|pin|пин|пин-код|pin-code|secret|секрет"
)
_PASSWORD = re.compile(
    rf"(?P<label>\b(?:{_SECRET_WORDS})\b\s*(?P<sep>[:=]|is|это|-)\s*)(?P<value>[^\s,;]{{3,}})",
    re.IGNORECASE,
)
# Parts are bounded by RFC 5321's limits (local part 64, label 63) and start only where a run of them
# starts or after a dot, so a long run without an '@' costs linear time, not quadratic.
_EMAIL = re.compile(r"(?<![\w+-])\w[\w.+-]{0,63}@[\w-]{1,63}(?:\.[\w-]{1,63}){0,30}\.[A-Za-z]{2,63}\b")
_CRED_URL = re.compile(  # bounded scheme; a query is searched only up to the next URL: linear time
    r"\b[a-z][a-z0-9+.-]{0,31}://[^\s/@:]+:[^\s/@]+@\S+"  # user:password@host
    r"|\bhttps?://(?:(?!https?://)\S)*?[?&#](?:token|access_token|api_key|apikey|key|sig|signature|password|pass|auth|"
    r"secret|session|code)=[^\s&]{6,}\S*",
    re.IGNORECASE,
)
_BOT_TOKEN = re.compile(
    r"\b\d{8,10}:[A-Za-z0-9_-]{35}\b|\b(?:sk|pk|rk)-[A-Za-z0-9_-]{20,}\b|\bgh[pousr]_[A-Za-z0-9]{30,}\b"
    r"|\bxox[abpr]-[A-Za-z0-9-]{10,}\b|\bAKIA[0-9A-Z]{16}\b"
)
_WALLET = re.compile(
    r"\b0x[a-fA-F0-9]{40}\b|\bbc1[ac-hj-np-z02-9]{25,59}\b|\b[13][a-km-zA-HJ-NP-Z1-9]{25,34}\b"
    r"|\bT[1-9A-HJ-NP-Za-km-z]{33}\b"
)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"(?<![\w.,])(?:\d[ -]?){12,18}\d(?!\w)(?![.,]\d)")
_PHONE = re.compile(
    r"(?<![\w+])\+\d{1,3}[\s.-]?\(?\d{1,5}\)?(?:[\s.-]?\d){5,11}(?!\d)"  # international: +7 999 123-45-67
    r"|(?<![\w+.,])8[\s-]?\(?9\d{2}\)?[\s-]?\d{3}[\s-]?\d{2}[\s-]?\d{2}(?!\d)"  # Russian 8 9xx ...
    r"|(?<![\w+.,])\(\d{3}\)\s?\d{3}[\s.-]\d{4}(?!\d)"  # (555) 123-4567
    r"|(?<![\w+.,/:-])\d{3}[.-]\d{3}[.-]\d{4}(?![\d.:/-])"  # 555-123-4567
    r"|(?<![\w+.,/:-])9\d{2}[\s-]\d{3}[\s-]\d{2}[\s-]\d{2}(?![\d.:/-])"  # 999 123-45-67
    r"|(?<![\w+.,/:-])\d{3}-\d{2}-\d{2}(?![\d.:/-])"  # local 123-45-67
)

# Order matters: the most specific shapes go first so their digits are gone before phones look.
_DETECTORS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("secret_url", _CRED_URL),
    ("token", _BOT_TOKEN),
    ("email", _EMAIL),
    ("crypto_wallet", _WALLET),
    ("iban", _IBAN),
    ("card", _CARD),
    ("phone", _PHONE),
)
_VALIDATORS = {
    "card": lambda s: _luhn(re.sub(r"\D", "", s)),
    "iban": lambda s: _iban_ok(s.replace(" ", "")),
    "phone": lambda s: 7 <= len(re.sub(r"\D", "", s)) <= 15,
    "crypto_wallet": lambda s: s.startswith(("0x", "bc1")) or (
        any(c.isdigit() for c in s) and any(c.isupper() for c in s) and any(c.islower() for c in s)
    ),
}
PLACEHOLDERS = {
    "secret_url": "<secret-url>",
    "token": "<token>",
    "email": "<email>",
    "iban": "<iban>",
    "card": "<card>",
    "crypto_wallet": "<crypto-wallet>",
    "phone": "<phone>",
    "password": "<password>",
    "custom": REDACTED,
}


def _is_secret(m: re.Match[str]) -> bool:
    """'password: x' always; 'the code is x' only when x looks like one (has a digit), not 'clean'."""
    if m["value"].startswith("<"):  # already a placeholder
        return False
    return m["sep"] in ":=-" or any(c.isdigit() for c in m["value"])


def _may_hold(kind: str, text: str, digits: int) -> bool:
    """Cheap preconditions of each detector (their regexes are slow on text that cannot match)."""
    if kind == "email":
        return "@" in text
    if kind == "secret_url":
        return "://" in text
    return digits >= _MIN_DIGITS.get(kind, 1)


def _luhn(digits: str) -> bool:
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(iban: str) -> bool:
    if not 15 <= len(iban) <= 34:
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


REDACTED_VALUES = "redacted.hashes"  # in a dataset: keyed hashes of every value ingest redacted, never the values


def normalized(kind: str, value: str) -> bytes:
    """A redacted value as it is compared: digits only for numbers, lower case otherwise."""
    if kind in ("phone", "card", "iban"):
        value = "".join(c for c in value if c.isalnum())
    return " ".join(value.lower().split()).encode()


class RedactedValues:
    """The values ingest redacted, kept as keyed hashes (BLAKE2b) only: a probe can ask whether a string a
    clone wrote was in the owner's data, while the dataset keeps no value. The key is derived from the
    dataset's digest, which the hashes file does not hold: the file alone tells nothing."""

    def __init__(self, digests: set[bytes] | None = None, key: bytes = b"") -> None:
        self.values: set[bytes] = set()  # while ingesting, normalized; never written
        self.digests, self.key = digests or set(), key

    @staticmethod
    def key_for(dataset_digest: str) -> bytes:
        return hashlib.blake2b(f"llmclone redacted values of {dataset_digest}".encode(), digest_size=32).digest()

    def add(self, kind: str, value: str) -> None:
        self.values.add(normalized(kind, value))

    def __contains__(self, item: tuple[str, str]) -> bool:
        return hashlib.blake2b(normalized(*item), key=self.key, digest_size=16).digest() in self.digests

    def save(self, path: Path, dataset_digest: str) -> None:
        key = self.key_for(dataset_digest)
        path.write_bytes(b"".join(sorted(hashlib.blake2b(v, key=key, digest_size=16).digest() for v in self.values)))
        path.chmod(0o600)

    @classmethod
    def load(cls, path: Path, dataset_digest: str) -> RedactedValues | None:
        if not path.is_file():
            return None
        data = path.read_bytes()
        return cls({data[i:i + 16] for i in range(0, len(data), 16)}, cls.key_for(dataset_digest))


class Scrubber:
    """Replaces PII with typed placeholders and counts what it replaced (and, given `values`, keeps a
    keyed hash of each value it replaced)."""

    def __init__(self, custom_terms: Iterable[str] = (), custom_patterns: Iterable[str] = ()) -> None:
        self.values: RedactedValues | None = None
        self.counts: Counter[str] = Counter()
        parts = [rf"(?<!\w){re.escape(t)}(?!\w)" for t in custom_terms if t]
        parts += [f"(?:{p})" for p in custom_patterns]
        self._custom = re.compile("|".join(parts), re.IGNORECASE) if parts else None

    @classmethod
    def from_file(cls, path: str | Path | None) -> Scrubber:
        """A redact file: one word or phrase per line; `re:` starts a regular expression; `#` a comment."""
        if path is None:
            return cls()
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read the redact file {path} ({err}); give a UTF-8 text file.") from None
        terms, patterns = [], []
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("re:"):
                try:
                    re.compile(line[3:])
                except re.error as err:
                    raise UserError(f"{path}:{n}: bad regular expression ({err}); fix or remove it.") from None
                patterns.append(line[3:])
            else:
                terms.append(line)
        return cls(terms, patterns)

    def _custom_sub(self, text: str) -> tuple[str, int]:
        assert self._custom is not None
        if self.values is None:
            return self._custom.subn(REDACTED, text)
        return self._custom.subn(lambda m: self._kept("custom", m[0], REDACTED), text)

    def _kept(self, kind: str, value: str, placeholder: str) -> str:
        if self.values is not None:
            self.values.add(kind, value)
        return placeholder

    def scrub(self, text: str) -> str:
        if self._custom is not None:
            text, n = self._custom_sub(text)
            self.counts["custom"] += n
        if not _GATE_CHARS.search(text) and not any(w in text.lower() for w in _GATE_WORDS):
            return text
        return self._detect(text)

    def scrub_many(self, texts: list[str]) -> list[str]:
        """Scrub a chat's texts at once: one pass over them all finds the few that need a closer look."""
        joined = _SEP.join(texts)
        if joined.count("\x00") != len(texts) - 1:  # a text holds our separator: go one by one
            return [self.scrub(t) for t in texts]
        if self._custom is not None:
            joined, n = self._custom_sub(joined)
            if n:
                self.counts["custom"] += n
                texts = joined.split(_SEP)
        lengths = list(accumulate(map(len, texts), initial=0))
        n = len(texts)

        def owner_of(pos: int) -> int:  # index of the text holding joined[pos]
            return bisect_right(range(n), pos, key=lambda i: lengths[i] + len(_SEP) * i) - 1

        found: set[int] = set()
        pos = 0
        while (hit := _GATE_CHARS.search(joined, pos)) is not None:
            i = owner_of(hit.start())
            found.add(i)
            pos = lengths[i + 1] + len(_SEP) * (i + 1)  # on to the next text
        low = joined.lower()
        if len(low) != len(joined):  # rare letters change length when lowered: offsets would lie
            low = "".join(c.lower()[0] for c in joined)
        for word in _GATE_WORDS:
            at = low.find(word)
            while at != -1:
                found.add(owner_of(at))
                at = low.find(word, at + 1)
        if not found:
            return texts
        out = list(texts)
        for i in found:
            out[i] = self._detect(out[i])
        return out

    def _detect(self, text: str) -> str:
        low = text.lower()
        if any(w in low for w in _GATE_WORDS[1:]):
            text = _PASSWORD.sub(self._password, text)
        digits = len(_DIGIT.findall(text))
        for kind, pattern in _DETECTORS:
            if not _may_hold(kind, text, digits):
                continue
            if kind in _VALIDATORS:
                text = pattern.sub(lambda m, k=kind: self._checked(k, m), text)
            else:
                text, n = pattern.subn(PLACEHOLDERS[kind] if self.values is None else
                                       (lambda m, k=kind: self._kept(k, m[0], PLACEHOLDERS[k])), text)
                if n:
                    self.counts[kind] += n
        return text

    def find(self, text: str) -> list[tuple[str, str]]:
        """The PII-like strings in text, as (type, string), without changing any count."""
        saved, self.counts = self.counts, Counter()
        try:
            found: list[tuple[str, str]] = []
            found += [("password", m["value"]) for m in _PASSWORD.finditer(text) if _is_secret(m)]
            for kind, pattern in _DETECTORS:
                check = _VALIDATORS.get(kind)
                found += [(kind, m[0]) for m in pattern.finditer(text) if check is None or check(m[0])]
            return found
        finally:
            self.counts = saved

    def _password(self, m: re.Match[str]) -> str:
        if not _is_secret(m):
            return m[0]
        self.counts["password"] += 1
        return m["label"] + self._kept("password", m["value"], PLACEHOLDERS["password"])

    def _checked(self, kind: str, m: re.Match[str]) -> str:
        if not _VALIDATORS[kind](m[0]):
            return m[0]
        self.counts[kind] += 1
        return self._kept(kind, m[0], PLACEHOLDERS[kind])
