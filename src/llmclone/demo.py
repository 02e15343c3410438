"""`llmclone demo`: the example export → a dataset → a clone of its owner → replies beside the base model's.

Runs on a laptop CPU with the embedded model in a few minutes, with no network.
"""

from __future__ import annotations

import json
import random
import shutil
from importlib.resources import files
from pathlib import Path

from llmclone.config import TrainConfig

# Short and hot: the example owner's habits are strong, and the point is to see them appear quickly.
DEMO_SETTINGS = {"max_steps": 24, "learning_rate": 1e-3, "lora_r": 16, "lora_alpha": 32, "eval_steps": 8,
                 "save_steps": 1000, "logging_steps": 2, "warmup_ratio": 0.05, "max_length": 256, "batch_tokens": 1024,
                 "max_eval_samples": 24}
FIXED_PROMPTS = ["привет! как дела?", "пойдём в кино вечером?", "Hi! Could you review my pull request?"]


def example_export() -> Path:
    return Path(str(files("llmclone") / "examples" / "telegram_export" / "result.json"))


def run_demo(out: Path, model: str = "embedded", steps: int | None = None, quiet: bool = False) -> list[dict]:
    from llmclone.clone import LLMClone
    from llmclone.dataset.ingest import ingest, summary
    from llmclone.training.trainer import train

    out.mkdir(parents=True, exist_ok=True)
    dataset, clone_dir = out / "dataset", out / "clone"
    print(f"1/3  ingest {example_export().name} (the project's example owner, Lyosha)")
    stats = ingest([example_export()], dataset, force=True, progress=not quiet)
    print("     " + summary(stats).replace("\n", "\n     "))
    settings = DEMO_SETTINGS | ({"max_steps": steps} if steps else {})
    print(f"2/3  train a LoRA clone of the {model} base model on this CPU ({settings['max_steps']} steps)")
    shutil.rmtree(clone_dir, ignore_errors=True)
    manifest = train(dataset, clone_dir, TrainConfig(model=model, **settings), force=True, quiet=quiet)
    m = manifest["metrics"]
    print(f"     done in {m['seconds']:.0f} s; eval loss on held-out future chats: {m['eval_loss']:.3f}; "
          f"curve: {clone_dir / 'loss.png'}")
    print("3/3  replies: the clone beside the base model it was trained from")
    clone = LLMClone.load(clone_dir, merge=False)  # keeps the adapter apart: the base model answers too
    rows = []
    for prompt in _prompts(dataset):
        seed = random.Random(prompt).randrange(2**31)
        clone_reply = _sampled(clone, prompt, seed, base=False)
        base_reply = _sampled(clone, prompt, seed, base=True)
        rows.append({"prompt": prompt, "clone": clone_reply, "base": base_reply})
        print(f"\n  > {prompt}\n    clone: {' / '.join(clone_reply) or '(nothing)'}\n"
              f"    base:  {' / '.join(base_reply) or '(nothing)'}")
    (out / "demo.json").write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    print(f"\nclone directory: {clone_dir}  (in Python: LLMClone.load('{clone_dir}').reply(history))")
    return rows


def _sampled(clone: object, prompt: str, seed: int, base: bool) -> list[str]:
    import torch

    torch.manual_seed(seed)
    return clone.reply([{"role": "user", "content": prompt}], base=base, temperature=0.7, max_new_tokens=40)  # type: ignore[attr-defined]


def _prompts(dataset: Path) -> list[str]:
    """A few held-out messages the owner really answered (the future), then fixed ones."""
    held_out = []
    for line in (dataset / "eval.jsonl").read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        if len(messages) >= 2 and messages[-2]["role"] == "user" and "<" not in messages[-2]["content"]:
            held_out.append(messages[-2]["content"])
    unique = list(dict.fromkeys(held_out))
    return unique[:3] + [p for p in FIXED_PROMPTS if p not in unique]
