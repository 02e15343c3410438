"""Reply latency on this CPU: `clone.reply` against plain `transformers` `generate()` in fp32, same weights.

    python benchmarks/reply_latency.py [--clone DIR] [--runs 5]
    python benchmarks/reply_latency.py --rounds 8     # baseline and llama.cpp q8_0 in turns (drift-proof);
                                                      # also the next turn after another chat's reply

A clone of the embedded model (trained for a few steps on the bundled example if --clone is not given), a
280-token history, 40 new tokens, greedy; median over runs, each variant in the same process. Also time to
first token. Target (issue 4): >= 5x lower latency than the fp32 baseline, replies unchanged.

With llama-cpp-python installed, the `--engine llama.cpp` variants too (the clone exported to GGUF: f16 and
q8_0, each with the whole vocabulary and with the shortlisted one, the engine's default), each timed from a
cold KV cache and as the next turn of the same chat (the cached prefix is reused), plus what each does to the
reply distribution: the owner's held-out loss (fp32 torch against each GGUF; summed over the owner's text and
divided by its token count in the full tokenization, so a shortlist that spells a word in two pieces is
compared on the same text) and whether the greedy reply is the same.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
NEW_TOKENS = 40


def demo_clone() -> Path:
    from llmclone.config import TrainConfig
    from llmclone.dataset.ingest import ingest
    from llmclone.demo import example_export
    from llmclone.training.trainer import train

    work = HERE / ".work" / "reply"
    if not (work / "clone" / "clone.json").exists():
        ingest([example_export()], work / "dataset", force=True, progress=False)
        train(work / "dataset", work / "clone", TrainConfig(max_steps=4, learning_rate=1e-3, max_eval_samples=4),
              force=True, quiet=True)
    return work / "clone"


def history(clone: object, tokens: int = 280) -> list[dict[str, str]]:
    """The most recent turns of the example chats, about `tokens` long in the clone's prompt format."""
    import json

    rows = (HERE / ".work" / "reply" / "dataset" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    turns: list[dict[str, str]] = []
    for line in rows:
        turns += json.loads(line)["messages"]
        if len(clone.chat_format.prompt(clone.tokenizer, turns)) >= tokens:  # type: ignore[attr-defined]
            break
    while turns[-1]["role"] != "user":
        turns.pop()
    return turns


def prompt_and_cached(clone, turns):  # type: ignore[no-untyped-def]
    """The prompt's ids, and how many of them the KV cache holds on the next turn of a chat (the conversation
    up to the other person's last message)."""
    tok = clone.tokenizer
    full, earlier = clone.chat_format.prompt(tok, turns), clone.chat_format.encode(tok, turns[:-1])[0]
    return full, next((i for i, (a, b) in enumerate(zip(full, earlier, strict=False)) if a != b), len(earlier))


def timed(fn, runs: int, setup=None) -> float:  # type: ignore[no-untyped-def]
    """Median seconds of `fn` over `runs` (after a warm-up); `setup` runs before each call, untimed."""
    if setup:
        setup()
    fn()  # warm-up
    times = []
    for _ in range(runs):
        if setup:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clone", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dataset", type=Path, default=HERE / ".work" / "reply" / "dataset",
                        help="held-out samples (eval.jsonl) for the loss; default the bundled example's")
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=0,
                        help="instead: the baseline and llama.cpp q8_0 (full and shortlisted vocabulary, cold and next "
                             "turn) in turns, this many rounds, medians")
    args = parser.parse_args()
    if args.rounds:
        in_turns(args.clone or demo_clone(), args.rounds)
        return

    from transformers import TextStreamer

    from llmclone.clone import LLMClone

    clone = LLMClone.load(args.clone or demo_clone())  # merged adapter (the default for replies)
    turns = history(clone)
    ids = torch.tensor([clone.chat_format.prompt(clone.tokenizer, turns)])
    model, tok = clone.model, clone.tokenizer
    print(f"history: {ids.shape[1]} tokens; {NEW_TOKENS} new tokens, greedy; median of {args.runs}")

    def baseline() -> None:
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                           pad_token_id=tok.pad_token_id)

    def ours() -> None:
        clone.reply(turns, temperature=0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)

    first: list[float] = []

    class FirstToken(TextStreamer):
        def put(self, value: torch.Tensor) -> None:
            if self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
            elif not first or first[-1] < 0:
                first[-1] = time.perf_counter() - self.started

    def ttft() -> None:
        streamer = FirstToken(tok)
        streamer.started = time.perf_counter()  # type: ignore[attr-defined]
        first.append(-1.0)
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id, streamer=streamer)

    base_s = timed(baseline, args.runs)
    ours_s = timed(ours, args.runs)
    timed(ttft, args.runs)
    print(f"{'variant':<44} {'latency s':>10}")
    print(f"{'transformers generate(), fp32, merged weights':<44} {base_s:>10.2f}")
    print(f"{'clone.reply (merged, fp32)':<44} {ours_s:>10.2f}")
    print(f"time to first token: {statistics.median(first[1:]):.2f} s")
    print(f"speed-up: {base_s / ours_s:.2f}x (target >= 5x)")
    greedy = clone.reply(turns, temperature=0, max_new_tokens=NEW_TOKENS)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python not installed: llama.cpp variants skipped")
        return
    clone_dir = args.clone or demo_clone()
    samples = held_out(args.dataset, args.samples)
    torch_loss = owner_loss_torch(clone, samples)
    print(f"\nheld-out owner-token loss, torch fp32: {torch_loss:.4f} ({len(samples)} samples)")
    print(f"{'engine':<20} {'cold s':>7} {'next turn s':>12} {'first token s':>14} {'× cold':>7} {'× next':>7} {'loss':>8}"
          f" {'same greedy':>12}")
    # the next turn of a chat: the cache holds the conversation up to the other person's last message
    full, cached = prompt_and_cached(clone, turns)
    print(f"next turn: {cached} of the {len(full)} prompt tokens already in the KV cache")
    for quant, vocabulary in (("f16", "full"), ("q8_0", "full"), ("f16", "shortlist"), ("q8_0", "shortlist")):
        fast = LLMClone.load(clone_dir, engine="llama.cpp", quant=quant, vocabulary=vocabulary)
        listed = fast.engine.shortlist
        name = f"{quant} {len(listed) // 1000}k vocab" if listed else f"{quant}"
        llm = fast.engine.llm
        before = listed.to_short(full[:cached]) if listed else full[:cached]

        def earlier_turns(llm=llm, before=before, fast=fast) -> None:  # type: ignore[no-untyped-def]
            fast.engine.forget()
            llm.eval(before)

        def reply(fast: LLMClone = fast) -> None:
            fast.reply(turns, temperature=0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)

        def first_token(fast: LLMClone = fast) -> None:
            fast.reply(turns, temperature=0, max_new_tokens=1)

        cold_s = timed(reply, args.runs, setup=fast.engine.forget)
        warm_s = timed(reply, args.runs, setup=earlier_turns)
        first_s = timed(first_token, args.runs, setup=fast.engine.forget)
        same = fast.reply(turns, temperature=0, max_new_tokens=NEW_TOKENS) == greedy
        loss = owner_loss_gguf(fast, samples)
        print(f"{name:<20} {cold_s:>7.2f} {warm_s:>12.2f} {first_s:>14.2f} {base_s / cold_s:>6.2f}x {base_s / warm_s:>6.2f}x "
              f"{loss:>8.4f} {same!s:>12}")


def in_turns(clone_dir: Path, rounds: int) -> None:
    """Each round times every variant once, so this machine's drift (±30% over minutes) hits all alike."""
    from llmclone.clone import LLMClone

    clone = LLMClone.load(clone_dir)
    turns, tok = history(clone), clone.tokenizer
    full, cached = prompt_and_cached(clone, turns)
    engines = {v: LLMClone.load(clone_dir, engine="llama.cpp", quant="q8_0", vocabulary=v) for v in ("full", "shortlist")}
    times: dict[str, list[float]] = {}

    def clock(name: str, fn) -> None:  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        fn()
        times.setdefault(name, []).append(time.perf_counter() - start)

    def baseline() -> None:
        with torch.inference_mode():
            clone.model.generate(torch.tensor([full]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                  do_sample=False, pad_token_id=tok.pad_token_id)

    other = tok(" ".join(m["content"] for m in reversed(turns)))["input_ids"][: len(full)]  # another chat's history
    print(f"history {len(full)} tokens ({cached} in the KV cache on the next turn), {NEW_TOKENS} new, {rounds} rounds")
    for _ in range(rounds):
        clock("transformers generate(), fp32", baseline)
        for vocabulary, fast in engines.items():
            llm, listed = fast.engine.llm, fast.engine.shortlist

            def reply(fast: LLMClone = fast) -> None:
                fast.reply(turns, temperature=0, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)

            fast.engine.forget()
            clock(f"llama.cpp q8_0 {vocabulary}, cold", reply)
            before = listed.to_short(full[:cached]) if listed else full[:cached]
            fast.engine.forget()
            llm.eval(before)
            clock(f"llama.cpp q8_0 {vocabulary}, next turn", reply)
            # the same, after a reply in another chat replaced the context: the engine restores this chat's state
            fast.engine.forget()
            llm.eval(before)
            fast.engine.conversations.save(len(before))
            llm.reset()
            llm.eval(listed.to_short(other) if listed else other)
            clock(f"llama.cpp q8_0 {vocabulary}, next turn, other chat between", reply)
    base = statistics.median(times["transformers generate(), fp32"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<40} median {median:5.2f} s  x{base / median:5.2f}   ({min(values):.2f}-{max(values):.2f})")


def held_out(dataset: Path, n: int) -> list[list[dict[str, str]]]:
    """`n` held-out samples, evenly spaced over the held-out period."""
    import json

    rows = [json.loads(line)["messages"] for line in (dataset / "eval.jsonl").read_text(encoding="utf-8").splitlines()]
    return [rows[i * len(rows) // n] for i in range(min(n, len(rows)))]


def owner_loss_torch(clone, samples) -> float:  # type: ignore[no-untyped-def]
    import torch.nn.functional as F

    total = count = 0.0
    for messages in samples:
        ids, mask = clone.chat_format.encode(clone.tokenizer, messages, 512)
        with torch.inference_mode():
            logits = clone.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1].float()
        keep = torch.tensor(mask[1:]).bool()
        total += F.cross_entropy(logits[keep], torch.tensor(ids[1:])[keep], reduction="sum").item()
        count += int(keep.sum())
    return total / count


def owner_loss_gguf(fast, samples) -> float:  # type: ignore[no-untyped-def]
    """The same loss from llama.cpp's logits (a second context that keeps logits for every position). With a
    shortlist, the owner's tokens spelled in listed pieces; the sum still divides by the full-tokenization count."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=fast.engine.llm.model_path, n_ctx=1024, logits_all=True, verbose=False)
    listed = fast.engine.shortlist
    total = count = 0.0
    for messages in samples:
        ids, mask = fast.chat_format.encode(fast.tokenizer, messages, 512)
        count += sum(mask[1:])
        if listed is not None:
            pieces = [listed.to_short([i]) for i in ids]
            ids = [p for piece in pieces for p in piece]
            mask = [m for piece, m in zip(pieces, mask, strict=True) for _ in piece]
        llm.reset()
        llm.eval(ids)
        scores = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
        for pos in range(len(ids) - 1):
            if mask[pos + 1]:
                row = scores[pos]
                top = row.max()
                total += top + np.log(np.exp(row - top).sum()) - row[ids[pos + 1]]
    return total / count


if __name__ == "__main__":
    main()
