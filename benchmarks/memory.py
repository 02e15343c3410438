"""What memory buys, and what it costs: a clone trained with memory beside one trained without, and the
index at a million exchanges.

    python benchmarks/memory.py [--steps 60] [--cases 100]      # both parts
    python benchmarks/memory.py --part index                     # the index only (about a minute)

Quality. Data: the most prolific sender of chitchat-dataset (real texting) through our ingest, as in
train_cpu.py. Model: the embedded Gemma 3 270M, CPU defaults, the same steps and seed for both clones.
- off: `memory = false`, today's prompts;
- on: the default, each sample's prompt with the exchanges memory recalls for it (other conversations only).
Reported: each clone's held-out loss from training (its own prompts: with memory for "on"), then `llmclone
eval` on the same held-out cases for both: perplexity, chrF, style distance, context gain, and the memory
clone with its memory switched off. Plot: memory.png.

Index. A million exchanges built from real chitchat lines (every message with the one before it, copied
into distinct chats until there are a million): build seconds (tokenising and stemming included), size
on disk, and the time of one recall (the query and its search in both views, the cross-chat mask, the
budget), median and 95th percentile over 300 real messages as queries.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_cpu import WORK, dataset  # noqa: E402


def train_clone(variant: str, steps: int) -> dict:
    from llmclone.config import TrainConfig
    from llmclone.training.trainer import train

    config = TrainConfig(max_steps=steps, eval_steps=10**6, save_steps=10**6, logging_steps=5,
                         memory=variant == "on")
    start = time.perf_counter()
    manifest = train(dataset(), WORK / f"memory-{variant}", config, force=True, quiet=True)
    # seconds: the trainer's (clone.json); wall: the whole call, memory building and recall included
    return {"seconds": manifest["metrics"]["seconds"], "wall": time.perf_counter() - start,
            "eval_loss": manifest["metrics"]["eval_loss"], "memory": manifest.get("memory")}


def quality(steps: int, cases: int, reuse: bool = False) -> dict:
    trained = {}
    for variant in ("off", "on"):  # each in its own process, as a user's run
        saved = WORK / f"memory-{variant}" / "trained.json"
        if reuse and saved.is_file() and json.loads(saved.read_text())["steps"] == steps:
            trained[variant] = json.loads(saved.read_text())
            continue
        out = subprocess.run([sys.executable, __file__, "--train", variant, "--steps", str(steps)],
                             capture_output=True, text=True, check=True)
        trained[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        saved.write_text(json.dumps(trained[variant] | {"steps": steps}))
    report_dir = WORK / "memory-report"
    subprocess.run([sys.executable, "-m", "llmclone", "eval", str(WORK / "memory-on"), "--compare",
                    str(WORK / "memory-off"), "--data", str(dataset()), "--out", str(report_dir), "--limit", str(cases),
                    "--no-probe", "--force", "--quiet"], check=True)
    report = json.loads((report_dir / "report.json").read_text())
    return {"trained": trained, "clones": {c["name"].removeprefix("memory-"): c for c in report["clones"]},
            "cases": report["dataset"]["held_out_cases"]}


def real_lines() -> list[tuple[str, str, str]]:
    """(conversation, what was said, the reply) for every message of chitchat-dataset after the first."""
    from chitchat_dataset import Dataset

    pairs = []
    for conv_id, conv in Dataset().items():
        lines = [m["text"] for burst in conv["messages"] for m in burst if m.get("text")]
        pairs += [(conv_id, said, reply) for said, reply in itertools.pairwise(lines)]
    return pairs


def index_part(size: int, queries: int) -> dict:
    from llmclone.memory.exchanges import Exchange
    from llmclone.memory.index import Index
    from llmclone.memory.recall import Memory, RecallSettings

    pairs = real_lines()
    exchanges = []
    copy = 0
    while len(exchanges) < size:
        for n, (conv, said, reply) in enumerate(pairs):
            exchanges.append(Exchange(f"{conv}-{copy}", 1_500_000_000 + n, said, reply))
            if len(exchanges) == size:
                break
        copy += 1
    start = time.perf_counter()
    index = Index.build(exchanges)
    build_s = time.perf_counter() - start
    tmp = Path(tempfile.mkdtemp())
    try:
        index.save(tmp / "index")
        size_mb = sum(p.stat().st_size for p in (tmp / "index").rglob("*") if p.is_file()) / 2**20
        memory = Memory(tmp, exchanges, index, {}, {})
        rng = random.Random(0)
        picks = [pairs[rng.randrange(len(pairs))] for _ in range(queries)]
        chats = [e.chat for e in rng.sample(exchanges, queries)]
        for (_, said, _), chat in zip(picks[:20], chats, strict=False):  # warm-up
            memory.recall([{"role": "user", "content": said}], chat, RecallSettings())
        times = []
        for (_, said, _), chat in zip(picks, chats, strict=True):
            t = time.perf_counter()
            memory.recall([{"role": "user", "content": said}], chat, RecallSettings())
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        return {"exchanges": len(exchanges), "chats": len(index.codes), "build_s": build_s, "size_mb": size_mb,
                "recall_ms_p50": statistics.median(times), "recall_ms_p95": times[int(0.95 * len(times))]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    on, off = result["clones"]["on"], result["clones"]["off"]
    rows = [("held-out perplexity\n(lower is better)", on["perplexity"]["clone"], off["perplexity"]["clone"]),
            ("chrF\n(higher is better)", on["chrf"]["clone"], off["chrf"]["clone"]),
            ("context gain\n(higher is better)", on["context_gain"]["clone"], off["context_gain"]["clone"]),
            ("style distance\n(lower is better)", on["style_distance"]["clone"]["mean"],
             off["style_distance"]["clone"]["mean"])]
    fig, axes = plt.subplots(1, len(rows), figsize=(13, 3.4))
    for ax, (title, a, b) in zip(axes, rows, strict=True):
        ax.bar(["trained with\nmemory", "trained\nwithout"], [a, b], color=["#3b7dd8", "#9aa5b1"])
        ax.set_title(title, fontsize=9)
        for x, v in enumerate((a, b)):
            ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"Memory on real chats (chitchat-dataset owner, {result['cases']} held-out replies, "
                 f"{result['steps']} steps each)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--part", choices=["all", "quality", "index"], default="all")
    parser.add_argument("--train")
    parser.add_argument("--reuse", action="store_true", help="keep a clone trained by an earlier run, same steps")
    args = parser.parse_args()
    if args.train:
        print(json.dumps(train_clone(args.train, args.steps)))
        return
    if args.part in ("all", "index"):
        r = index_part(args.size, 300)
        print(f"index: {r['exchanges']:,} exchanges in {r['chats']:,} chats; built in {r['build_s']:.1f} s; "
              f"{r['size_mb']:.0f} MB on disk; one recall {r['recall_ms_p50']:.2f} ms median, "
              f"{r['recall_ms_p95']:.2f} ms p95")
    if args.part in ("all", "quality"):
        result = quality(args.steps, args.cases, args.reuse) | {"steps": args.steps}
        on, off = result["clones"]["on"], result["clones"]["off"]
        print(f"\n{'clone':<8}{'train s':>9}{'train-time eval loss':>22}{'perplexity':>12}{'chrF':>7}"
              f"{'style dist':>12}{'context gain':>14}")
        for name, c in (("on", on), ("off", off)):
            t = result["trained"][name]
            print(f"{name:<8}{t['seconds']:>9.0f}{t['eval_loss']:>22.4f}{c['perplexity']['clone']:>12.2f}"
                  f"{c['chrf']['clone']:>7}{c['style_distance']['clone']['mean']:>12.4f}"
                  f"{c['context_gain']['clone']:>14.3f}")
        ratio = on["perplexity"]["clone"] / off["perplexity"]["clone"]
        print(f"perplexity on / off: {ratio:.3f} ({(1 - ratio):.1%} lower with memory); "
              f"train-time held-out perplexity {math.exp(result['trained']['on']['eval_loss']):.2f} vs "
              f"{math.exp(result['trained']['off']['eval_loss']):.2f}")
        if m := on.get("memory"):
            print(f"the memory clone without its memory: perplexity {m['off']['perplexity']:.2f}, chrF "
                  f"{m['off']['chrf']} (with it: {m['on']['perplexity']:.2f}, {m['on']['chrf']}); "
                  f"{m['recalled_cases']} of {result['cases']} cases recalled something")
        plot(result, HERE / "memory.png")
        print(f"plot: {HERE / 'memory.png'}")


if __name__ == "__main__":
    main()
