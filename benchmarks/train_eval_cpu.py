"""Evaluation's share of a CPU training run: every pass on the whole held-out set against ours, same run.

    python benchmarks/train_eval_cpu.py [--steps 60] [--eval-steps 20]

Data: the most prolific sender of chitchat-dataset (real texting) through our ingest (as train_cpu.py).
Model: the embedded Gemma 3 270M, the CPU defaults, the default 200 held-out samples.
- all: `periodic_eval_samples = 200`, each evaluation during training on the whole held-out set; the code
  before this change also ran the last step's evaluation and then the final one, the same pass twice: its
  time is added back from that run's own final pass (reported as "+1 final pass");
- ours: the default (`"auto"`: 48 samples on a CPU during training, none at the last step, all 200 once at the
  end).
Both train the same steps from the same seed, so the final loss on all 200 must agree. Reported: wall seconds,
the seconds spent evaluating, their share, and the final held-out loss.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_cpu import WORK, dataset  # noqa: E402


def run(variant: str, steps: int, eval_steps: int) -> dict:
    from llmclone.config import TrainConfig
    from llmclone.training.trainer import train

    periodic = 200 if variant == "all" else "auto"
    config = TrainConfig(max_steps=steps, eval_steps=eval_steps, save_steps=10**6, logging_steps=5,
                         periodic_eval_samples=periodic)
    out = WORK / f"eval-{variant}"
    start = time.perf_counter()
    manifest = train(dataset(), out, config, force=True, quiet=True)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    periodic_s = sum(r["eval_runtime"] for r in rows if "eval_runtime" in r)
    final_s = sum(r["final_eval_runtime"] for r in rows if "final_eval_runtime" in r)
    repeated = final_s if variant == "all" else 0.0  # the old code's second pass over the same set
    return {"seconds": seconds + repeated, "eval_seconds": periodic_s + final_s + repeated,
            "passes": sum("eval_runtime" in r for r in rows), "final_loss": manifest["metrics"]["eval_loss"],
            "evaluation": manifest["evaluation"], "added": repeated}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--variant")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run(args.variant, args.steps, args.eval_steps)))
        return
    dataset()
    results = {}
    for variant in ("all", "ours"):  # each in its own process, as a user's run
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                              "--eval-steps", str(args.eval_steps)], capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n{'variant':<8}{'periodic':>9}{'passes':>7}{'wall s':>9}{'eval s':>8}{'eval share':>11}{'final loss':>11}")
    for name, r in results.items():
        e = r["evaluation"]
        print(f"{name:<8}{e['periodic_samples']:>9}{r['passes']:>7}{r['seconds']:>9.1f}{r['eval_seconds']:>8.1f}"
              f"{r['eval_seconds'] / r['seconds']:>10.0%}{r['final_loss']:>11.4f}"
              + (f"  (+1 final pass: {r['added']:.1f} s)" if r["added"] else ""))
    a, o = results["all"], results["ours"]
    print(f"wall time all / ours: {a['seconds'] / o['seconds']:.2f}x; evaluation seconds {a['eval_seconds']:.0f} -> "
          f"{o['eval_seconds']:.0f}; final loss on all {o['evaluation']['final_samples']} held-out samples: "
          f"{a['final_loss']:.4f} vs {o['final_loss']:.4f}")


if __name__ == "__main__":
    main()
