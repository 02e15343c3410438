"""GPU training throughput: `llmclone train` against the original article's recipe, same run, same card.

    python benchmarks/train_gpu.py --data DATASET_DIR [--arch mistral7b|qwen14b|gemma270m] [--tokens 60000]

The model is built from the real architecture's config with random weights (no weights can be downloaded;
throughput does not depend on their values) and saved once, so every variant loads it the same way. A
byte-level BPE with the architecture's vocabulary size is trained on the dataset's own text, so token
counts are realistic. Variants, each seeing about `--tokens` real (non-padding) tokens:
- original: HF Trainer + DataCollatorForLanguageModeling (padding), max_length 256, batch 4 x accumulation
  4, bitsandbytes NF4 + double quant, LoRA r8/alpha32 on q/k/v/o, gradient checkpointing, paged AdamW 8-bit,
  bf16;
- unsloth: Unsloth's FastLanguageModel QLoRA (its own kernels, gradient checkpointing and patches) through
  TRL's SFTTrainer with packing, on the same samples, micro-step size, LoRA settings and steps as ours;
- trl: TRL's own SFTTrainer loss and activation offloading (with gradient checkpointing) on the same model,
  samples, packing and steps: its levers where ours would be;
- ours-qlora / ours-lora: `llmclone train` defaults with --quantize 4bit / without; `--batch-tokens`,
  `--attention sdpa`, `--plain-loss` (full logits at the owner positions), `--kernels none`,
  `--checkpointing true` (layer inputs kept on the GPU, not offloaded) and `--unfolded-dropout` (peft's LoRA
  dropout) switch the trainer's levers off one by one, to measure each in the same run.
Printed per variant: real tokens/s, peak GPU memory, MFU (4N FLOPs per token, N = non-embedding parameters,
against 790 TFLOP/s bf16) and the last logged training loss. For several GPUs, run one variant under
torchrun (`torchrun --nproc_per_node 2 benchmarks/train_gpu.py ... --variant ours-qlora`) after a
one-GPU run has built the model: tokens/s is then for all GPUs together.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

PEAK_FLOPS = 790e12  # measured bf16 dense matmul peak of an H100/H200 (shared/docs/performance.md)
ARCHS = {
    "mistral7b": ("MistralConfig", dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                        max_position_embeddings=32768, rope_theta=10000.0, sliding_window=4096,
                                        tie_word_embeddings=False)),
    "qwen14b": ("Qwen2Config", dict(vocab_size=152064, hidden_size=5120, intermediate_size=13824,
                                    num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
                                    max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=False)),
    "gemma270m": ("Gemma3TextConfig", dict(vocab_size=262144, hidden_size=640, intermediate_size=2048,
                                           num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                                           head_dim=256, max_position_embeddings=32768, sliding_window=512)),
}


def build(arch: str, data: Path, work: Path) -> Path:
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = work / arch
    if (out / "config.json").exists():
        return out
    name, params = ARCHS[arch]
    texts = [m["content"] for line in open(data / "train.jsonl", encoding="utf-8") for m in json.loads(line)["messages"]]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=min(params["vocab_size"], 32000), special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                                     pad_token="<pad>", unk_token="<unk>")
    config = getattr(transformers, name)(**params, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def non_embedding_params(path: Path) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)


def run_original(model_path: Path, data: Path, tokens: int) -> dict:
    from datasets import Dataset
    from original_recipe import ORIGINAL_LORA, counting_collator, original_samples
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        Trainer,
        TrainingArguments,
    )


    tokenizer = AutoTokenizer.from_pretrained(model_path)
    ids = original_samples(tokenizer, data)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_path, quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map={"": 0})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(**ORIGINAL_LORA))
    counting, seen = counting_collator(tokenizer)

    per_step = 16 * sum(map(len, ids[:500])) / 500
    timer = _Timer()
    args = TrainingArguments(output_dir="/tmp/original", per_device_train_batch_size=4, gradient_accumulation_steps=4,
                             learning_rate=2e-4, max_steps=max(3, round(tokens / per_step)), logging_steps=1,
                             save_strategy="no", report_to="none", seed=42, bf16=True, optim="paged_adamw_8bit",
                             gradient_checkpointing=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ids}),
                      data_collator=counting, callbacks=[timer.callback])
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return timer.result(seen["real"], losses)


def run_ours(model_path: Path, data: Path, tokens: int, quantize: bool, batch_tokens: int | str = "auto",
             attention: str = "auto", plain_loss: bool = False, kernels: str = "auto",
             checkpointing: str = "auto", unfolded_dropout: bool = False) -> dict:
    import dataclasses

    from llmclone.config import TrainConfig
    from llmclone.models.base_models import resolve
    from llmclone.training.data import training_samples
    from llmclone.training.plan import plan_for
    from llmclone.training.trainer import TrainingSession

    config = TrainConfig(model=str(model_path), quantize="4bit" if quantize else None, batch_tokens=batch_tokens,
                         eval_steps=10**6, save_steps=10**6, logging_steps=1, attention=attention,
                         kernels=kernels, gradient_checkpointing={"true": True, "false": False}.get(checkpointing,
                                                                                                  checkpointing))
    base = resolve(str(model_path))
    # plain_loss: the logits path (full logits at the owner positions, F.cross_entropy); unfolded_dropout:
    # peft's own LoRA dropout (a dropped copy and a mask saved per projection)
    plan = dataclasses.replace(plan_for(config, base), chunked_loss=not plain_loss, fold_dropout=not unfolded_dropout)
    config.max_steps = max(3, tokens // plan.batch_tokens)
    session = TrainingSession(base, config, plan, Path(f"/tmp/ours-{quantize}"), quiet=True)
    train, _ = training_samples(data, config)
    trainer = session.trainer(train, [])
    timer = _Timer()
    trainer.add_callback(timer.callback)
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = timer.result(trainer._total_train_tokens, losses)
    result["attention"] = trainer.model.config._attn_implementation
    result["losses"] = [round(x, 4) for x in losses]
    return result


def owner_dataset(model_path: Path, data: Path, batch_tokens: int) -> tuple[Any, Any]:
    """Our settings and samples for the library variants: the owner's turns tokenized as ours are, with the
    owner mask as TRL's `completion_mask` (loss on the owner's tokens only)."""
    from transformers import AutoTokenizer

    from llmclone.config import TrainConfig
    from llmclone.models.chat_format import ChatFormat
    from llmclone.training.data import tokenized, training_samples

    config = TrainConfig(model=str(model_path), quantize="4bit", batch_tokens=batch_tokens)
    samples, _ = training_samples(data, config)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = tokenized(samples, tokenizer, ChatFormat.for_tokenizer(tokenizer), config.max_length)
    return config, dataset.rename_column("assistant_masks", "completion_mask")


def run_trl(model_path: Path, data: Path, tokens: int) -> dict:
    """TRL's own levers where ours would be: its SFTTrainer's loss (`loss_type="nll"`, which it now computes
    the way its former chunked loss did) and its activation offloading with gradient checkpointing, on the
    same 4-bit model, attention (our varlen), samples (owner-only loss), packing, micro-step size, LoRA and
    steps as ours; peft's own LoRA dropout."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    from llmclone.training import attention

    batch_tokens = 8192
    config, dataset = owner_dataset(model_path, data, batch_tokens)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(model_path, quantization_config=quant, dtype=torch.bfloat16,
                                                 device_map={"": 0},
                                                 attn_implementation=attention.register("flash"))  # ours, as ours
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, task_type="CAUSAL_LM")
    args = SFTConfig(output_dir="/tmp/trl", per_device_train_batch_size=1, max_length=batch_tokens, packing=True,
                     padding_free=True, completion_only_loss=True, loss_type="nll", activation_offloading=True,
                     gradient_checkpointing=True, max_steps=max(3, tokens // batch_tokens),
                     learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler, logging_steps=1,
                     save_strategy="no", report_to="none", seed=config.seed, bf16=True, optim="paged_adamw_8bit",
                     disable_tqdm=True, include_num_input_tokens_seen="non_padding")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    timer = _Timer()
    trainer.add_callback(timer.callback)
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = timer.result(trainer.state.num_input_tokens_seen, losses)
    result["losses"] = [round(x, 4) for x in losses]
    return result


def run_unsloth(model_path: Path, data: Path, tokens: int) -> dict:
    """Unsloth's QLoRA as its docs set it up: FastLanguageModel in 4-bit, its LoRA (the same r8/alpha32 on
    q/k/v/o), its gradient checkpointing, TRL's SFTTrainer with packing. The same samples as ours (the owner's
    turns, loss on them only), the same tokens per micro-step and optimizer steps."""
    import unsloth  # noqa: F401  (first: it patches transformers, peft and trl as it loads)
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel

    batch_tokens = 8192
    config, dataset = owner_dataset(model_path, data, batch_tokens)
    model, tokenizer = FastLanguageModel.from_pretrained(str(model_path), max_seq_length=batch_tokens,
                                                         load_in_4bit=True, dtype=torch.bfloat16)
    model = FastLanguageModel.get_peft_model(model, r=config.lora_r, lora_alpha=config.lora_alpha,
                                             lora_dropout=config.lora_dropout, target_modules=config.target_modules,
                                             use_gradient_checkpointing="unsloth", random_state=config.seed)
    args = SFTConfig(output_dir="/tmp/unsloth", per_device_train_batch_size=1, gradient_accumulation_steps=1,
                     max_length=batch_tokens, packing=True, padding_free=True, completion_only_loss=True,
                     max_steps=max(3, tokens // batch_tokens), learning_rate=config.learning_rate,
                     lr_scheduler_type=config.lr_scheduler, logging_steps=1, save_strategy="no", report_to="none",
                     seed=config.seed, bf16=True, optim="adamw_8bit", disable_tqdm=True,
                     include_num_input_tokens_seen="non_padding")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    timer = _Timer()
    trainer.add_callback(timer.callback)
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = timer.result(trainer.state.num_input_tokens_seen, losses)  # the trainer's own count, per step
    result["losses"] = [round(x, 4) for x in losses]
    result["versions"] = {m: __import__(m).__version__ for m in ("unsloth", "transformers", "trl", "peft")}
    return result


class _Timer:
    """Times training from the end of the first optimizer step (warm-up, compilation) to the end."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
                torch.cuda.synchronize()
                if state.global_step == 1:
                    outer.start = time.perf_counter()
                outer.end = time.perf_counter()
                outer.steps = state.global_step

        self.callback = Callback()
        self.start = self.end = 0.0
        self.steps = 0

    def result(self, real_tokens: int, losses: list[float]) -> dict:
        timed = (self.steps - 1) / self.steps  # share of the tokens after the first step
        seconds = self.end - self.start
        return {"tokens": real_tokens, "tokens_per_s": real_tokens * timed / seconds, "seconds": seconds,
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "loss": losses[-1] if losses else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="mistral7b")
    parser.add_argument("--tokens", type=int, default=60000)
    parser.add_argument("--variant", choices=["original", "ours-qlora", "ours-lora", "unsloth", "trl"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/train_gpu"))
    parser.add_argument("--batch-tokens", default="auto", help="ours: tokens per micro-step (default: the trainer's)")
    parser.add_argument("--attention", default="auto", help="ours: auto, varlen, sdpa")
    parser.add_argument("--plain-loss", action="store_true", help="ours: full logits at the owner positions")
    parser.add_argument("--kernels", default="auto", help="ours: auto (Liger when installed), liger, none")
    parser.add_argument("--checkpointing", default="auto", help="ours: auto, offload, true, false")
    parser.add_argument("--unfolded-dropout", action="store_true", help="ours: peft's LoRA dropout as it is")
    args = parser.parse_args()
    path = build(args.arch, args.data, args.work)
    if args.variant:
        if args.variant == "original":
            result = run_original(path, args.data, args.tokens)
        elif args.variant == "unsloth":
            result = run_unsloth(path, args.data, args.tokens)
        elif args.variant == "trl":
            result = run_trl(path, args.data, args.tokens)
        else:
            result = run_ours(path, args.data, args.tokens, quantize=args.variant == "ours-qlora",
                              batch_tokens=args.batch_tokens, attention=args.attention, plain_loss=args.plain_loss,
                              kernels=args.kernels, checkpointing=args.checkpointing,
                              unfolded_dropout=args.unfolded_dropout)
            result["batch_tokens"] = args.batch_tokens
            result["checkpointing"] = args.checkpointing
        gpus = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun: tokens/s is for all GPUs together
        result["gpus"] = gpus
        result["mfu"] = result["tokens_per_s"] * 4 * non_embedding_params(path) / (PEAK_FLOPS * gpus)
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(result))
        return
    import subprocess
    import sys

    rows = {}
    for variant in ("original", "ours-qlora", "ours-lora"):
        out = subprocess.run([sys.executable, __file__, "--data", str(args.data), "--arch", args.arch, "--tokens",
                              str(args.tokens), "--variant", variant, "--work", str(args.work)],
                             capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        rows[variant] = json.loads(lines[-1][7:]) if lines else {"error": out.stderr[-600:]}
        print(variant, rows[variant], flush=True)
    print(f"\n{args.arch}: {'variant':<11} {'tokens/s':>9} {'peak GiB':>9} {'MFU':>6} {'loss':>7}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<11} failed")
            continue
        print(f"{'':<{len(args.arch) + 2}}{name:<11} {r['tokens_per_s']:>9.0f} {r['peak_gib']:>9.1f} {r['mfu']:>6.1%} "
              f"{r['loss'] or float('nan'):>7.3f}")
    if "error" not in rows["original"]:
        for name in ("ours-qlora", "ours-lora"):
            if "error" not in rows[name]:
                print(f"{name} / original tokens/s: {rows[name]['tokens_per_s'] / rows['original']['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
