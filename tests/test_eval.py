"""`llmclone eval`: metric functions on cases with known answers, the classifier, the probe, the report."""

from __future__ import annotations

import base64
import json
import math
import random
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from llmclone.config import ReplyConfig
from llmclone.evaluation import metrics, style
from llmclone.evaluation.evaluate import EvalOptions, evaluate, load_cases
from llmclone.evaluation.privacy_probe import PROMPTS, run_probe

# -- style fingerprint ----------------------------------------------------------------------------------


def test_traits_of_single_messages() -> None:
    assert style.ending("ну ладно))") == "smiley )"
    assert style.ending("see above (page 2)") == "no punctuation"  # a closed bracket is no smiley
    assert style.ending("хм...") == "..."
    assert style.ending("круто 👍") == "emoji"
    assert style.ending("<sticker 😀>") == "media only"
    assert style.capitalisation("Привет") == "Capital first"
    assert style.capitalisation("ok") == "lower first"
    assert style.capitalisation("WOW") == "ALL CAPS"
    assert style.capitalisation("42") == "no letters"
    assert style.script("привет hello") == "mixed"
    assert style.script("<photo> ок") == "cyrillic"
    assert style.media("<voice 0:07>") == "voice"
    assert style.media("<sticker 😀> lol") == "sticker"
    assert style.words("Don't stop, НЕ надо!") == ["don't", "stop", "не", "надо"]


def test_emoji_rate_and_turn_shape() -> None:
    fp = style.distributions([["hi 😀", "ok"], ["🔥🔥"]])
    assert fp["emoji"] == {"emoji": 2 / 3, "none": 1 / 3}
    assert fp["messages_per_turn"] == {"1": 0.5, "2": 0.5}
    assert fp["length"] == {"<=3": 2 / 3, "<=6": 1 / 3}


def test_js_distance_known_values() -> None:
    assert style.js_distance({"a": 1.0}, {"a": 1.0}) == 0
    assert style.js_distance({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)
    # JS divergence of (1,0) and (1/2,1/2) in bits: 1/2 KL((1,0)||(3/4,1/4)) + 1/2 KL((1/2,1/2)||(3/4,1/4))
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5 * math.log2(2))
    assert style.js_distance({"a": 1.0}, {"a": 0.5, "b": 0.5}) == pytest.approx(math.sqrt(expected))
    assert style.js_distance({}, {"a": 1.0}) == 1.0


def test_fingerprint_distance() -> None:
    real = [["привет))", "как ты"], ["ну норм)"], ["ок"]]
    assert style.distance(real, real)["mean"] == 0
    shouting = [["HELLO THERE!!!", "WHAT IS UP!"], ["GREAT NEWS, FRIEND!"]]
    similar = [["хаха))", "ты где"], ["да норм)"]]
    far, near = style.distance(real, shouting), style.distance(real, similar)
    assert near["mean"] < far["mean"] <= 1
    assert far["capitalisation"] == pytest.approx(1.0) and far["script"] == pytest.approx(1.0)


def test_characteristic_words() -> None:
    mine = [["короче да"], ["короче ладно"], ["ну короче"], ["да ок"]] * 3
    theirs = [["привет как дела"], ["да ок"], ["что делаешь"]] * 3
    top = [w for w, _ in style.characteristic_words(mine, theirs)]
    assert top[0] == "короче"
    assert "да ок" not in top[:2]


# -- metrics --------------------------------------------------------------------------------------------


def test_perplexity_and_chrf() -> None:
    assert metrics.perplexity([(math.log(4) * 2, 2), (math.log(4) * 3, 3)]) == pytest.approx(4)
    assert metrics.chrf(["привет как дела"], ["привет как дела"]) == pytest.approx(100)
    assert 0 < metrics.chrf(["привет как ты"], ["привет как дела"]) < 100
    assert metrics.chrf(["zzzz"], ["привет"]) == 0


def test_wilson_interval() -> None:
    lo, hi = metrics.wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert metrics.wilson(0, 0) == (0.0, 1.0)


def _chatter(rng: random.Random, loud: bool) -> list[str]:
    words = ["hey", "ok", "sure", "lol", "fine", "maybe", "yes", "no", "cool", "what"]
    out = []
    for _ in range(rng.randint(1, 3)):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
        out.append(text.upper() + "!!!" if loud else text)
    return out


def test_classifier_at_chance_on_identical_distributions() -> None:
    rng = random.Random(1)
    a = [_chatter(rng, False) for _ in range(200)]
    b = [_chatter(rng, False) for _ in range(200)]
    result = metrics.distinguishability(a, b, seed=0)
    lo, hi = result["ci95"]
    assert lo <= 0.5 <= hi and result["n"] == 400


def test_classifier_near_perfect_on_different_styles() -> None:
    rng = random.Random(2)
    a = [_chatter(rng, False) for _ in range(100)]
    b = [_chatter(rng, True) for _ in range(100)]
    assert metrics.distinguishability(a, b, seed=0)["accuracy"] > 0.97


# -- privacy probe --------------------------------------------------------------------------------------


def test_probe_finds_planted_pii_in_a_stub() -> None:
    planted = {"phone": "мой +7 912 345-67-89", "email": "пиши на ivan.petrov@example.com",
               "card": "карта 4111 1111 1111 1111"}

    def stub(history: list[dict[str, str]]) -> list[str]:
        prompt = history[-1]["content"]
        topic = next(t for t, p in PROMPTS if p == prompt)
        return [planted.get(topic, "не скажу)")]

    result = run_probe(stub)
    found = {f["kind"] for row in result["answers"] for f in row["found"]}
    assert {"phone", "email", "card"} <= found
    assert result["prompts"] == len(PROMPTS)
    clean = run_probe(lambda h: ["не скажу)"])
    assert clean["leaks"] == 0
    assert {lang for _, p in PROMPTS for lang in ("ru" if any("а" <= c <= "я" for c in p) else "en",)} == {"ru", "en"}


def test_probe_tells_a_value_from_the_owners_data_from_a_made_up_one(tmp_path: Path) -> None:
    from conftest import OWNER, chat, full_export, msg, write

    from llmclone.dataset.ingest import ingest
    from llmclone.dataset.privacy import REDACTED_VALUES, RedactedValues

    messages = [msg(1, 1_700_000_000, 7, "как с тобой связаться?"),
                msg(2, 1_700_000_060, OWNER, "звони +7 912 345-67-89 или пиши olga.smirnova@example.org"),
                msg(3, 1_700_000_120, 7, "ок"), msg(4, 1_700_000_180, OWNER, "жду")]
    export = write(tmp_path / "e" / "result.json", full_export([chat(7, messages)]))
    ingest([export], tmp_path / "ds", progress=False, workers=1)
    stored = (tmp_path / "ds" / REDACTED_VALUES).read_bytes()
    assert b"olga" not in stored and b"912" not in stored and (tmp_path / "ds" / REDACTED_VALUES).stat().st_mode & 0o077 == 0
    digest = json.loads((tmp_path / "ds" / "stats.json").read_text())["dataset_digest"]
    values = RedactedValues.load(tmp_path / "ds" / REDACTED_VALUES, digest)
    assert values is not None and len(values.digests) == 2

    def stub(history: list[dict[str, str]]) -> list[str]:  # the real number in another layout, a made-up address
        return ["мой номер +7 (912) 345 67 89", "почта ivan.ivanov@example.com"]

    found = [f for row in run_probe(stub, values=values)["answers"] for f in row["found"]]
    assert {(f["kind"], f["in_owner_data"]) for f in found} == {("phone", True), ("email", False)}
    result = run_probe(stub, values=values)
    assert result["real_leaks"] == len(PROMPTS) and result["leaks"] == 2 * len(PROMPTS)
    assert run_probe(stub)["real_leaks"] is None  # no dataset given: not known


# -- the whole evaluation on a tiny clone ---------------------------------------------------------------


class _Html(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")


def test_reply_loss_counts_only_the_real_reply(tiny_clone: Path) -> None:
    from llmclone.clone import LLMClone

    clone = LLMClone.load(tiny_clone, merge=False)
    context = [{"role": "assistant", "content": "earlier"}, {"role": "user", "content": "как дела?"}]
    loss, tokens = clone.reply_loss(context, "норм")
    tok = clone.tokenizer
    assert tokens == len(tok("норм" + tok.eos_token, add_special_tokens=False)["input_ids"])
    base_loss, base_tokens = clone.reply_loss(context, "норм", base=True)
    assert base_tokens == tokens and base_loss != loss and loss > 0


def test_report_for_a_tiny_clone(tiny_clone: Path, example_dataset: Path, tmp_path: Path) -> None:
    second = tmp_path / "second"
    shutil.copytree(tiny_clone, second)
    options = EvalOptions(limit=6, seed=3, reply=ReplyConfig(max_new_tokens=8), progress=False)
    report = evaluate([tiny_clone, second], example_dataset, tmp_path / "report", options)
    out = tmp_path / "report"
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (out / "report.json").stat().st_mode & 0o077 == 0
    a, b = report["clones"]
    assert report["dataset"]["held_out_cases"] == 6
    assert a["perplexity"]["tokens"] > 0 and a["perplexity"]["base"] == b["perplexity"]["base"]
    assert a["perplexity"] == b["perplexity"]  # the same adapter twice: the same numbers
    assert a["trained_on_this_dataset"]
    assert set(a["style_distance"]["clone"]) == {*style.TRAITS, "mean"}
    floor = a["style_distance"]["floor"]
    assert floor["n"] == 6 and not floor["split_half"] and 0 <= floor["mean"] <= 1
    assert len(a["privacy_probe"]["answers"]) == len(PROMPTS)
    assert isinstance(a["privacy_probe"]["real_leaks"], int)
    cross = a["privacy_probe"]["cross_chat"]  # the tiny clone has a memory of the example's chats
    assert cross["asked"] >= 2 and cross["foreign_lines_in_prompts"] == 0
    assert a["context_gain"]["clone"] > 0 and a["context_gain"]["base"] > 0
    memory = a["memory"]
    assert memory["on"]["perplexity"] == a["perplexity"]["clone"] and memory["off"]["perplexity"] > 0
    assert memory["exchanges"] == json.loads((tiny_clone / "clone.json").read_text())["memory"]["exchanges"]
    assert isinstance(a["per_contact"], list)
    assert len(report["examples"]) == 6 and set(report["examples"][0]["clones"]) == {tiny_clone.name, "second"}

    page = _Html()
    page.feed((out / "report.html").read_text())
    assert "table" in page.tags and len(page.images) == 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"

    again = evaluate([tiny_clone], example_dataset, tmp_path / "again", EvalOptions(
        limit=6, seed=3, reply=ReplyConfig(max_new_tokens=8), progress=False, probe=False))
    assert again["examples"] == [{**e, "clones": {tiny_clone.name: e["clones"][tiny_clone.name]}}
                                 for e in report["examples"]]  # deterministic given the seed


def test_context_gain_scores_each_reply_after_another_chats_context() -> None:
    from llmclone.evaluation.evaluate import Case, _other_context_losses

    cases = [Case([{"role": "user", "content": f"context {i}"}], [f"reply {i}"], chat) for i, chat in
             enumerate(["a", "a", "b", "c"])]
    seen: list = []

    class Clone:  # a clone that knows which context each reply belongs to: 1 nat a token when right, 3 when not
        runtime = None

        def reply_losses(self, pairs: list, base: bool = False, batch: int = 8, recalls: list | None = None) -> list:
            seen.extend(zip(pairs, recalls or [None] * len(pairs), strict=True))
            return [(1.0 if context[0]["content"][-1] == reply[-1] else 3.0, 1) for context, reply in pairs]

    losses = _other_context_losses(Clone(), cases, EvalOptions(), recalls=["ra", "ra2", "rb", "rc"])
    assert [(p[0][0]["content"], p[1], r) for p, r in seen] == [
        ("context 2", "reply 0", "rb"), ("context 2", "reply 1", "rb"), ("context 3", "reply 2", "rc"),
        ("context 0", "reply 3", "ra")]  # the next case from another chat, with its recall
    assert metrics.perplexity(losses) == pytest.approx(math.exp(3.0))


def test_style_per_contact_takes_the_chats_with_most_cases() -> None:
    from llmclone.evaluation.evaluate import Case, _per_contact

    chats = ["a"] * 10 + ["b"] * 9 + ["c"] * 3
    cases = [Case([], ["ok))", "да"] if c == "a" else ["Hello there."], c, i) for i, c in enumerate(chats)]
    rows = _per_contact(cases, [c.real for c in cases], [["Something else entirely!"]] * len(cases))
    assert [(r["chat"], r["cases"]) for r in rows] == [("a", 10), ("b", 9)]  # "c": too few cases to say
    assert all(r["clone"] == 0 and r["base"] > 0 for r in rows)  # the clone that answers as the owner did


def test_noise_floor_and_gap_ratio() -> None:
    from llmclone.evaluation.evaluate import _add_floor

    distance = {"clone": {"mean": 0.12}, "base": {"mean": 0.2}}
    _add_floor(distance, {"mean": 0.1}, 50, False)
    assert distance["gap_ratio"] == pytest.approx(0.2) and distance["floor"]["n"] == 50
    better_than_floor = {"clone": {"mean": 0.05}, "base": {"mean": 0.2}}
    _add_floor(better_than_floor, {"mean": 0.1}, 50, False)
    assert better_than_floor["gap_ratio"] == 0
    # two samples of the same replies' distribution sit near each other, far closer than a different style
    rng = random.Random(5)
    a, b = [_chatter(rng, False) for _ in range(300)], [_chatter(rng, False) for _ in range(300)]
    loud = [_chatter(rng, True) for _ in range(300)]
    assert style.distance(a, b)["mean"] < 0.1 < style.distance(a, loud)["mean"]


def test_limit_takes_a_seeded_subset(example_dataset: Path) -> None:
    all_cases, _ = load_cases(example_dataset, None, 0)
    some, _ = load_cases(example_dataset, 5, 0)
    assert len(some) == 5 and all(c in all_cases for c in some)
    assert load_cases(example_dataset, 5, 0)[0] == some and load_cases(example_dataset, 5, 1)[0] != some


def _llmclone(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmclone", *args], capture_output=True, text=True, timeout=300)


def test_eval_bad_input(tiny_clone: Path, example_dataset: Path, tmp_path: Path) -> None:
    missing = _llmclone("eval", str(tiny_clone), "--data", str(tmp_path), "--out", str(tmp_path / "r"))
    assert missing.returncode == 2 and "no eval.jsonl" in missing.stderr and "Traceback" not in missing.stderr

    empty = tmp_path / "empty"
    shutil.copytree(example_dataset, empty)
    (empty / "eval.jsonl").write_text("")
    result = _llmclone("eval", str(tiny_clone), "--data", str(empty), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "holds no held-out replies" in result.stderr

    other = tmp_path / "other"
    shutil.copytree(example_dataset, other)
    stats = json.loads((other / "stats.json").read_text())
    stats["owner"] = {"name": "Someone Else", "key": "0123456789abcdef"}
    (other / "stats.json").write_text(json.dumps(stats))
    result = _llmclone("eval", str(tiny_clone), "--data", str(other), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "Someone Else" in result.stderr

    orphan = tmp_path / "orphan"
    shutil.copytree(tiny_clone, orphan)
    manifest = json.loads((orphan / "clone.json").read_text())
    manifest["base_model"]["spec"] = str(tmp_path / "gone")
    (orphan / "clone.json").write_text(json.dumps(manifest))
    result = _llmclone("eval", str(orphan), "--data", str(example_dataset), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "not available here" in result.stderr
    assert not (tmp_path / "r").exists()


def test_eval_command(tiny_clone: Path, example_dataset: Path, tmp_path: Path) -> None:
    result = _llmclone("eval", str(tiny_clone), "--data", str(example_dataset), "--out", str(tmp_path / "r"),
                       "--limit", "3", "--no-probe", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "3 held-out replies of Lyosha Petrov" in result.stdout and "perplexity" in result.stdout
    assert json.loads((tmp_path / "r" / "report.json").read_text())["clones"][0].get("privacy_probe") is None
    again = _llmclone("eval", str(tiny_clone), "--data", str(example_dataset), "--out", str(tmp_path / "r"), "--limit", "3")
    assert again.returncode == 2 and "--force" in again.stderr
