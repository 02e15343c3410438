"""Quality on real data: does a clone of a real texter sound like them? (issue 6's benchmark)

    python benchmarks/quality.py [--steps 240] [--limit 150]

1. The most prolific sender of chitchat-dataset (real human texting, MIT) as a Telegram export, ingested
   (`.work/chitchat_owner`, shared with train_cpu.py).
2. `llmclone train` on the embedded Gemma 3 270M with the settings in QUALITY_CONFIG (cached in
   `.work/quality/clone`: delete it to train again).
3. `llmclone eval` on the held-out future: perplexity clone vs base, style distance, classifier, probe.
Targets: perplexity ratio <= 0.6, style distance ratio <= 0.5. Prints the headline and writes the report
to `.work/quality/report` (and its plots to benchmarks/quality_*.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "quality"
QUALITY_CONFIG = """lora_r = 16
lora_alpha = 32
target_modules = "all-linear"
learning_rate = 5e-4
max_steps = {steps}
eval_steps = 60
save_steps = 60
max_eval_samples = 60
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=240, help="training steps of 1024 tokens")
    parser.add_argument("--limit", type=int, default=150, help="held-out replies to evaluate")
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))
    from train_cpu import dataset

    data = dataset()
    clone = WORK / "clone"
    config = WORK / "clone.toml"
    WORK.mkdir(parents=True, exist_ok=True)
    wanted = QUALITY_CONFIG.format(steps=args.steps)
    if not (clone / "clone.json").exists() or not config.exists() or config.read_text() != wanted:
        config.write_text(wanted)
        start = time.perf_counter()
        subprocess.run(["llmclone", "train", str(data), "--out", str(clone), "--config", str(config), "--force"], check=True)
        print(f"trained in {time.perf_counter() - start:.0f} s")
    manifest = json.loads((clone / "clone.json").read_text())
    start = time.perf_counter()
    subprocess.run(["llmclone", "eval", str(clone), "--data", str(data), "--out", str(WORK / "report"),
                    "--limit", str(args.limit), "--force"], check=True)
    seconds = time.perf_counter() - start
    report = json.loads((WORK / "report" / "report.json").read_text())
    c = report["clones"][0]
    for name in ("scores", "style"):
        shutil.copyfile(WORK / "report" / f"{name}.png", HERE / f"quality_{name}.png")
    print(f"\ntraining: {manifest['metrics']['steps']} steps, {manifest['metrics']['train_tokens']} tokens, "
          f"{manifest['metrics']['seconds']} s; eval loss {manifest['metrics']['eval_loss']:.3f}")
    print(f"evaluation of {report['dataset']['held_out_cases']} held-out replies took {seconds:.0f} s")
    print("| metric | clone | base model | ratio | target |\n|---|---|---|---|---|")
    print(f"| perplexity of the real replies | {c['perplexity']['clone']:.1f} | {c['perplexity']['base']:.1f} | "
          f"{c['perplexity']['ratio']:.2f} | <= 0.6 |")
    print(f"| style distance to the real replies | {c['style_distance']['clone']['mean']:.3f} | "
          f"{c['style_distance']['base']['mean']:.3f} | {c['style_distance']['ratio']:.2f} | <= 0.5 |")
    print(f"| chrF vs real | {c['chrf']['clone']} | {c['chrf']['base']} | | |")
    for who in ("clone", "base"):
        d = c["distinguishability"][who]
        print(f"| classifier real vs {who} | {d['accuracy']:.2f} [{d['ci95'][0]:.2f}, {d['ci95'][1]:.2f}] | | | 0.5 |")
    print(f"privacy probe: {c['privacy_probe']['leaks']} PII-like strings in {c['privacy_probe']['prompts']} answers")
    print("per-trait style distance (clone / base):",
          {t: (c["style_distance"]["clone"][t], c["style_distance"]["base"][t]) for t in c["style_distance"]["clone"]})


if __name__ == "__main__":
    main()
