"""A style fingerprint of someone's replies, and a distance between two fingerprints.

A reply is one turn: the list of messages the owner (or a model) sent in a row. Every trait of the
fingerprint is a probability distribution over a few categories (message length bins, how a message
ends, capitalisation, script, media tags, words...), so one distance fits all of them: the
Jensen-Shannon distance (square root of the JS divergence, base 2), a metric in [0, 1]: 0 for identical
distributions, 1 for ones with no category in common. The fingerprint distance is its mean over traits.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Sequence

from llmclone.placeholders import MEDIA_TAG

Reply = Sequence[str]

EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\u2b50\u2b55\u231a-\u23ff\u2190-\u21ff\ufe0f]")
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)
LENGTH_BINS = (1, 3, 6, 11, 21, 41, 81, 161)  # characters; upper bounds of each bin, then "longer"
TOP_WORDS = 300  # words kept for the word-use trait (the rest pooled as "other")

TRAITS = ("length", "messages_per_turn", "emoji", "ending", "capitalisation", "script", "media", "words")


def _bin(value: int, bounds: Sequence[int]) -> str:
    for bound in bounds:
        if value <= bound:
            return f"<={bound}"
    return f">{bounds[-1]}"


def ending(message: str) -> str:
    """How a message ends: the punctuation habits people recognise (`))` smileys, `...`, `!`, none)."""
    text = MEDIA_TAG.sub("", message).rstrip()
    if not text:
        return "media only"
    if EMOJI.search(text[-1]):
        return "emoji"
    if text.endswith(")") and not re.search(r"\([^)]*\)$", text):
        return "smiley )"
    if text.endswith(("...", "…")):
        return "..."
    return {"!": "!", "?": "?", ".": "."}.get(text[-1], "no punctuation")


def capitalisation(message: str) -> str:
    letters = [c for c in MEDIA_TAG.sub("", message) if c.isalpha()]
    if not letters:
        return "no letters"
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return "ALL CAPS"
    return "Capital first" if letters[0].isupper() else "lower first"


def script(message: str) -> str:
    """Language mix by alphabet: Cyrillic, Latin, both, or neither."""
    text = MEDIA_TAG.sub("", message)
    cyr = any("\u0400" <= c <= "\u04ff" for c in text)
    lat = any(c.isascii() and c.isalpha() for c in text)
    return {(True, True): "mixed", (True, False): "cyrillic", (False, True): "latin"}.get((cyr, lat), "none")


def media(message: str) -> str:
    m = MEDIA_TAG.search(message)
    if not m:
        return "none"
    return m.group(0).split()[0].strip("<>:")


def words(message: str) -> list[str]:
    return [w.lower() for w in WORD.findall(MEDIA_TAG.sub(" ", message))]


def counts(replies: Sequence[Reply]) -> dict[str, Counter[str]]:
    """Category counts of every trait over a set of replies."""
    out: dict[str, Counter[str]] = {t: Counter() for t in TRAITS}
    for reply in replies:
        out["messages_per_turn"][str(len(reply)) if len(reply) < 5 else "5+"] += 1
        for message in reply:
            out["length"][_bin(len(message), LENGTH_BINS)] += 1
            out["emoji"]["emoji" if EMOJI.search(message) else "none"] += 1
            out["ending"][ending(message)] += 1
            out["capitalisation"][capitalisation(message)] += 1
            out["script"][script(message)] += 1
            out["media"][media(message)] += 1
            out["words"].update(words(message))
    return out


def distributions(replies: Sequence[Reply], vocabulary: set[str] | None = None) -> dict[str, dict[str, float]]:
    """The fingerprint: each trait's counts as probabilities. Words outside `vocabulary` pool as 'other'."""
    fp: dict[str, dict[str, float]] = {}
    for trait, counter in counts(replies).items():
        if trait == "words" and vocabulary is not None:
            pooled: Counter[str] = Counter()
            for word, n in counter.items():
                pooled[word if word in vocabulary else "<other>"] += n
            counter = pooled
        total = sum(counter.values())
        fp[trait] = {k: v / total for k, v in sorted(counter.items())} if total else {}
    return fp


def js_distance(p: dict[str, float], q: dict[str, float]) -> float:
    """Jensen-Shannon distance (base 2) between two categorical distributions; 1.0 if one is empty."""
    if not p or not q:
        return 0.0 if p == q else 1.0
    div = 0.0
    for k in set(p) | set(q):
        a, b = p.get(k, 0.0), q.get(k, 0.0)
        m = (a + b) / 2
        if a:
            div += a / 2 * math.log2(a / m)
        if b:
            div += b / 2 * math.log2(b / m)
    return math.sqrt(max(div, 0.0))


def vocabulary_of(replies: Sequence[Reply], size: int = TOP_WORDS) -> set[str]:
    return {w for w, _ in counts(replies)["words"].most_common(size)}


def distance(real: Sequence[Reply], other: Sequence[Reply]) -> dict[str, float]:
    """Per-trait JS distance from `other`'s fingerprint to `real`'s, plus their mean under "mean".

    Word use is compared on the real replies' most frequent words (everything else pooled), so a model
    that invents rare words is not rewarded or punished word by word.
    """
    vocab = vocabulary_of(real)
    a, b = distributions(real, vocab), distributions(other, vocab)
    per_trait = {t: js_distance(a[t], b[t]) for t in TRAITS}
    return {**per_trait, "mean": sum(per_trait.values()) / len(per_trait)}


def characteristic_words(replies: Sequence[Reply], background: Sequence[Reply], top: int = 15) -> list[tuple[str, float]]:
    """Words and two-word phrases these replies use far more than the background (the people they talk
    to): log-odds ratio with an informative Dirichlet prior (Monroe et al. 2008), most distinctive first."""
    def grams(rs: Sequence[Reply]) -> Counter[str]:
        c: Counter[str] = Counter()
        for reply in rs:
            for message in reply:
                ws = words(message)
                c.update(ws)
                c.update(f"{x} {y}" for x, y in itertools.pairwise(ws))
        return c

    mine, theirs = grams(replies), grams(background)
    prior = mine + theirs
    n_mine, n_theirs, n_prior = sum(mine.values()), sum(theirs.values()), sum(prior.values())
    if not n_mine or not n_theirs:
        return []
    scored = []
    for w, n in mine.items():
        if n < 3:
            continue
        a = prior[w] * 10 / n_prior + 1e-3  # prior strength 10 pseudo-counts spread by frequency
        a0 = 10
        d = (math.log((n + a) / (n_mine + a0 - n - a)) - math.log((theirs[w] + a) / (n_theirs + a0 - theirs[w] - a)))
        var = 1 / (n + a) + 1 / (theirs[w] + a)
        scored.append((w, d / math.sqrt(var)))
    scored.sort(key=lambda x: (-x[1], x[0]))
    return [(w, round(z, 2)) for w, z in scored[:top]]


def features(reply: Reply) -> list[float]:
    """A numeric vector of one reply's style, for the real-vs-generated classifier."""
    msgs = list(reply) or [""]
    n = len(msgs)
    lengths = [len(m) for m in msgs]
    text = "\n".join(msgs)
    ends = Counter(ending(m) for m in msgs)
    caps = Counter(capitalisation(m) for m in msgs)
    scripts = Counter(script(m) for m in msgs)
    ws = words(text)
    return [
        float(n),
        math.log1p(sum(lengths) / n),
        math.log1p(max(lengths)),
        len(EMOJI.findall(text)) / n,
        *(ends[k] / n for k in ("smiley )", "...", "!", "?", ".", "no punctuation", "emoji", "media only")),
        *(caps[k] / n for k in ("Capital first", "lower first", "ALL CAPS")),
        *(scripts[k] / n for k in ("cyrillic", "latin", "mixed")),
        sum(1 for m in msgs if MEDIA_TAG.search(m)) / n,
        (sum(len(w) for w in ws) / len(ws)) if ws else 0.0,
        len(set(ws)) / len(ws) if ws else 0.0,
        sum(1 for c in text if c in ",;:") / max(len(text), 1) * 10,
    ]
