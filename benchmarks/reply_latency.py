"""Reply latency on this CPU: `clone.reply` against plain `transformers` `generate()` in fp32, same weights.

    python benchmarks/reply_latency.py [--clone DIR] [--runs 5]

A clone of the embedded model (trained for a few steps on the bundled example if --clone is not given), a
280-token history, 40 new tokens, greedy; median over runs, each variant in the same process. Also time to
first token. Target (issue 4): >= 5x lower latency than the fp32 baseline, replies unchanged.
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
        if len(clone.chat_format.prompt(clone._tokenizer, turns)) >= tokens:  # type: ignore[attr-defined]
            break
    while turns[-1]["role"] != "user":
        turns.pop()
    return turns


def timed(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clone", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from transformers import TextStreamer

    from llmclone.clone import LLMClone

    clone = LLMClone.load(args.clone or demo_clone())  # merged adapter (the default for replies)
    turns = history(clone)
    ids = torch.tensor([clone.chat_format.prompt(clone._tokenizer, turns)])
    model, tok = clone._model, clone._tokenizer
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


if __name__ == "__main__":
    main()
