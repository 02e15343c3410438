"""CPU training throughput: `llmclone train` against the original article's recipe, same run, same data.

    python benchmarks/train_cpu.py [--tokens 6000] [--rounds 2]

Data: the most prolific sender of chitchat-dataset (real texting) as a Telegram export, through our ingest.
Model: the embedded Gemma 3 270M. Both variants see about `--tokens` real (non-padding) tokens:
- original: HF `Trainer` + `DataCollatorForLanguageModeling` (padding), max_length 256, batch 4 x gradient
  accumulation 4, LoRA r8/alpha 32 on q/k/v/o, gradient checkpointing, loss on every token (all speakers);
- ours-exact: `llmclone train` (packed without padding, loss and logits on the owner's tokens only) with
  `loss_vocabulary = "full"`: the exact training softmax over Gemma's 262k tokens;
- ours: the defaults on a CPU (`loss_vocabulary = "auto"` = sampled: the training softmax exact over the
  owner's tokens, importance-sampled over the rest, placed where the base model's first micro-batch puts its mass;
  `precision = "auto"` = bf16 frozen weights on a CPU that multiplies bf16 natively, fp32 elsewhere);
- ours-fp32: the defaults in fp32 (what a CPU without native bf16 runs; the same as ours there).
Reported: real tokens/s, peak RSS (each variant in its own process) and the owner-token loss on held-out
eval samples after training, computed the same way for both. Target: >= 3x tokens/s, eval loss no worse.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "chitchat_owner"
EVAL_SAMPLES = 40


def dataset() -> Path:
    sys.path.insert(0, str(HERE))
    from chitchat_export import write_export

    from llmclone.dataset.ingest import ingest

    data = WORK / "dataset"
    if not (data / "stats.json").exists():
        write_export(WORK / "result.json")
        ingest([WORK / "result.json"], data, force=True, progress=False)
    return data


def eval_loss(model, tokenizer, chat_format, samples) -> float:  # type: ignore[no-untyped-def]
    """Mean cross-entropy of the owner's tokens in held-out samples."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for messages in samples:
            ids, mask = chat_format.encode(tokenizer, messages, 256)
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1].float()
            target = torch.tensor(ids[1:])
            keep = torch.tensor(mask[1:]).bool()
            total += F.cross_entropy(logits[keep], target[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / max(count, 1)


def run_ours(data: Path, tokens: int, loss_vocabulary: str = "auto", precision: str = "auto") -> dict:
    from llmclone.config import TrainConfig
    from llmclone.models.base_models import resolve
    from llmclone.training.data import read_samples, training_samples
    from llmclone.training.plan import plan_for
    from llmclone.training.trainer import TrainingSession

    config = TrainConfig(max_steps=max(1, tokens // 1024), batch_tokens=1024, eval_steps=10**6, save_steps=10**6,
                         logging_steps=1, loss_vocabulary=loss_vocabulary, precision=precision)
    work = WORK / "ours"
    work.mkdir(parents=True, exist_ok=True)
    base = resolve("embedded")
    session = TrainingSession(base, config, plan_for(config, base), work, quiet=True)
    train, _ = training_samples(data, config)
    trainer = session.trainer(train, [])
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    real = trainer._total_train_tokens
    evaluation = read_samples(data / "eval.jsonl")[:EVAL_SAMPLES]
    loss = eval_loss(trainer.model, session.tokenizer, session.chat_format, evaluation)
    return {"tokens": real, "seconds": seconds, "cpu_s": cpu, "eval_loss": loss}


def run_original(data: Path, tokens: int) -> dict:
    import torch
    from datasets import Dataset
    from original_recipe import ORIGINAL_LORA, counting_collator, original_samples
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    from llmclone.models.base_models import resolve
    from llmclone.models.chat_format import ChatFormat
    from llmclone.training.data import read_samples

    base = resolve("embedded")
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    fmt = ChatFormat()
    texts = original_samples(tokenizer, data)
    ds = Dataset.from_dict({"input_ids": texts})
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(**ORIGINAL_LORA))
    counting, seen = counting_collator(tokenizer)

    per_step = 16 * sum(len(t) for t in texts[:200]) / 200  # 4 x 4 samples of average length
    args = TrainingArguments(output_dir=str(WORK / "original"), per_device_train_batch_size=4,
                             gradient_accumulation_steps=4, learning_rate=2e-4, max_steps=max(1, round(tokens / per_step)),
                             logging_steps=1, save_strategy="no", report_to="none", seed=42, disable_tqdm=True,
                             dataloader_pin_memory=False)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=counting)
    start, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    evaluation = read_samples(data / "eval.jsonl")[:EVAL_SAMPLES]
    return {"tokens": seen["real"], "seconds": seconds, "cpu_s": cpu, "eval_loss": eval_loss(model, tokenizer, fmt, evaluation)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=6000)
    parser.add_argument("--variant", choices=["ours", "ours-fp32", "ours-exact", "original"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    data = dataset()
    if args.variant:
        if args.variant == "original":
            result = run_original(data, args.tokens)
        else:
            result = run_ours(data, args.tokens, "full" if args.variant == "ours-exact" else "auto",
                              "fp32" if args.variant == "ours-fp32" else "auto")
        result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    # This shared machine's speed moves by tens of percent between minutes: the variants run in turns, `--rounds`
    # times, and each round's ratios use that round's original. CPU seconds (all threads) move less than wall time.
    rounds: list[dict[str, dict]] = []
    for _ in range(args.rounds):
        results = {}
        for variant in ("original", "ours", "ours-fp32", "ours-exact"):
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens)],
                                 capture_output=True, text=True, check=True)
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        rounds.append(results)
    print(f"\n{'round':<6}{'variant':<11} {'real tokens':>12} {'seconds':>8} {'CPU s':>7} {'tokens/s':>9} "
          f"{'x orig':>7} {'x orig CPU':>10} {'peak RSS MB':>12} {'eval loss':>10}")
    for n, results in enumerate(rounds, 1):
        base = results["original"]
        for name, r in results.items():
            wall = r["tokens"] / r["seconds"] / (base["tokens"] / base["seconds"])
            cpu = r["tokens"] / r["cpu_s"] / (base["tokens"] / base["cpu_s"])
            print(f"{n:<6}{name:<11} {r['tokens']:>12} {r['seconds']:>8.1f} {r['cpu_s']:>7.1f} "
                  f"{r['tokens'] / r['seconds']:>9.1f} {wall:>6.2f}x {cpu:>9.2f}x {r['rss_mb']:>12.0f} {r['eval_loss']:>10.3f}")
    from llmclone.models.runtime import cpu_has_bf16

    print(f"this CPU multiplies bf16 natively: {cpu_has_bf16()} (ours runs in {'bf16' if cpu_has_bf16() else 'fp32'})")
    for name in ("ours", "ours-fp32", "ours-exact"):
        ratios = sorted(r[name]["tokens"] / r[name]["seconds"] / (r["original"]["tokens"] / r["original"]["seconds"])
                        for r in rounds)
        print(f"{name} / original tokens/s, per round: {', '.join(f'{x:.2f}x' for x in ratios)} (target >= 3x); "
              f"eval loss {rounds[-1][name]['eval_loss']:.3f} vs original {rounds[-1]['original']['eval_loss']:.3f}")

if __name__ == "__main__":
    main()
