"""What a training run does on this machine: every "auto" of the settings resolved once, before anything loads.

`plan_for` reads the settings, the machine (GPU, bf16 on the CPU, liger-kernel) and the base model's config;
the trainer only applies the plan; `llmclone train --print-config` shows it and clone.json records it. A test
that wants a path this machine would not choose passes `dataclasses.replace(plan, ...)`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from llmclone.config import TrainConfig
from llmclone.errors import UserError
from llmclone.models import runtime
from llmclone.models.base_models import BaseModel

CPU_BATCH_TOKENS, GPU_BATCH_TOKENS = 1024, 8192
SAMPLED_VOCABULARY_MIN = 65536  # from here on the output layer is most of a CPU step
CPU_PERIODIC_EVAL_SAMPLES = 48
SHARDED_WEIGHT_SHARE = 0.6  # of a GPU's memory for weights; the rest: activations, adapters, optimizer, buffers


@dataclass(frozen=True)
class TrainPlan:
    device: Literal["cuda", "cpu"]
    precision: Literal["fp32", "bf16", "fp16"]  # of the frozen weights; the trained ones are fp32
    attention: Literal["varlen", "sdpa", "eager"]
    varlen_kernel: Literal["flash", "per_sample"]  # varlen on Flash Attention, or one SDPA call per sample
    checkpointing: bool | Literal["offload"]
    kernels: Literal["liger", "none"]
    loss_vocabulary: Literal["full", "sampled"]
    chunked_loss: bool  # logits only at the owner's positions, a chunk at a time, when the output layer allows
    record_marginal: bool  # the base model's next-token distribution at the owner's turns (sampled softmax, shortlist)
    batch_tokens: int
    fold_dropout: bool  # LoRA dropout inside lora_A (training/lora_dropout.py), or peft's own
    cpu_masks: Literal["pcg64", "torch"]  # the dropout masks on a CPU: PCG64, or the GPU path's generator replay
    optimizer: str
    periodic_eval_samples: int | None  # held-out samples per evaluation during training; None: all
    sharding: Literal["none", "fsdp"] = "none"
    processes: int = 1  # of accelerate launch / torchrun (WORLD_SIZE)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def offload(self) -> bool:
        return self.checkpointing == "offload" and self.cuda  # on a CPU the activations are in host memory already

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan_for(config: TrainConfig, base: BaseModel, found: runtime.Machine | None = None) -> TrainPlan:
    """The plan for training `base` with `config` on this machine (or on `found`)."""
    found = found or runtime.machine(memory=False)
    device = runtime.device_for(found, "auto")
    cuda = device.startswith("cuda")
    precision = runtime.precision_for(found, device, config.precision)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    vocab_size, param_count = _model_facts(base, with_params=cuda and (
        (config.gradient_checkpointing == "auto" and config.quantize is None)
        or (config.sharding != "none" and processes > 1)))
    per = runtime.NF4_BYTES_PER_PARAM if config.quantize else runtime.DTYPE_BYTES[precision]
    gpu_bytes = found.gpus[0].total_bytes if found.gpus else 0
    sharding = sharding_for(config, processes, cuda, int(param_count * per), gpu_bytes)
    loss_vocabulary = loss_vocabulary_for(config, vocab_size, cuda)
    flash = cuda and _flash_available()
    plan = TrainPlan(
        device="cuda" if cuda else "cpu",
        precision=precision,  # type: ignore[arg-type]
        attention=attention_for(config, cuda, flash),
        varlen_kernel="flash" if flash else "per_sample",
        checkpointing=checkpointing_for(config, cuda, param_count * runtime.DTYPE_BYTES[precision], gpu_bytes),
        kernels=kernels_for(config, cuda and found.liger),
        loss_vocabulary=loss_vocabulary,
        chunked_loss=True,
        record_marginal=loss_vocabulary == "sampled" or vocab_size >= SAMPLED_VOCABULARY_MIN,
        batch_tokens=int(config.batch_tokens) if config.batch_tokens != "auto" else
        GPU_BATCH_TOKENS if cuda else CPU_BATCH_TOKENS,
        fold_dropout=True,
        cpu_masks="pcg64",
        optimizer="paged_adamw_8bit" if config.quantize and cuda else "adamw_torch",
        periodic_eval_samples=periodic_eval_samples_for(config, cuda),
        processes=processes,
    )
    return _sharded(config, plan) if sharding == "fsdp" else plan


def sharding_for(config: TrainConfig, processes: int, cuda: bool, weight_bytes: int, gpu_bytes: int
                 ) -> Literal["none", "fsdp"]:
    """FSDP across the processes when asked, or ("auto") when the weights outgrow one GPU but not all of them."""
    if config.sharding == "fsdp" and processes < 2:
        raise UserError("sharding = 'fsdp' (--shard) splits the model across the processes of a multi-process "
                        "launch, and this run has one: run it as `accelerate launch --num_processes N -m llmclone "
                        "train ...` (or torchrun), or leave --shard out.")
    if config.sharding == "none" or not cuda or processes < 2 or not weight_bytes:
        return "fsdp" if config.sharding == "fsdp" else "none"
    usable = SHARDED_WEIGHT_SHARE * gpu_bytes
    if weight_bytes > usable * processes:
        raise UserError(f"the base model's weights need ~{weight_bytes / runtime.GiB:.0f} GiB, more than "
                        f"{processes} GPUs of {gpu_bytes / runtime.GiB:.0f} GiB can hold with room to train "
                        f"(~{weight_bytes / SHARDED_WEIGHT_SHARE / runtime.GiB:.0f} GiB of GPU memory in all); use "
                        "--quantize 4bit, more GPUs, or a smaller base model.")
    return "fsdp" if config.sharding == "fsdp" or weight_bytes > usable else "none"


def _sharded(config: TrainConfig, plan: TrainPlan) -> TrainPlan:
    """The levers that compose with FSDP2 kept; those that read or park weights outside a layer's forward
    (where FSDP holds only a shard) replaced: the chunked loss and the sampled softmax read the output layer's
    weight after the forward (the full logits at the owner's positions instead), and layer-input offloading
    becomes FSDP's own activation checkpointing."""
    if config.loss_vocabulary == "sampled":
        raise UserError("loss_vocabulary = 'sampled' reads the output layer outside its forward, which FSDP "
                        "shards; use 'full' or 'auto' with --shard.")
    return replace(plan, sharding="fsdp", chunked_loss=False, loss_vocabulary="full",
                   checkpointing=bool(plan.checkpointing), optimizer="adamw_torch")


def attention_for(config: TrainConfig, cuda: bool, flash: bool) -> Literal["varlen", "sdpa", "eager"]:
    """Per-sample attention, except on GPUs without Flash Attention (one launch per sample would be slow)."""
    if config.attention != "auto":
        return config.attention
    return "varlen" if flash or not cuda else "sdpa"


def checkpointing_for(config: TrainConfig, cuda: bool, weight_bytes: int, gpu_bytes: int) -> bool | Literal["offload"]:
    """Gradient checkpointing: False, True or "offload" (see the setting's comment for "auto")."""
    if config.gradient_checkpointing != "auto":
        return config.gradient_checkpointing
    if not cuda:
        return False  # memory is rarely what limits a CPU run; recomputing would cost a third more time
    # Pays where memory is what limits: QLoRA (chosen to fit a card) and big models, whose activations for an
    # 8k-token micro-step would outgrow the card (benchmarks/README.md, GPU training).
    return "offload" if config.quantize is not None or weight_bytes > 0.4 * gpu_bytes else False


def kernels_for(config: TrainConfig, liger_runs: bool) -> Literal["liger", "none"]:
    """Liger's Triton kernels (GPU only) where installed, unless asked not to; asked for without them: refused."""
    if config.kernels == "liger" and not liger_runs:
        raise UserError("kernels = 'liger' needs a CUDA GPU and liger-kernel (pip install 'llmclone[gpu]'); "
                        "use 'auto' or 'none'.")
    return "liger" if liger_runs and config.kernels != "none" else "none"


def loss_vocabulary_for(config: TrainConfig, vocab_size: int, cuda: bool) -> Literal["full", "sampled"]:
    """The training softmax: on a GPU the output layer is a small part of a step, on a CPU a large one is most."""
    if config.loss_vocabulary != "auto":
        return config.loss_vocabulary
    return "sampled" if not cuda and vocab_size >= SAMPLED_VOCABULARY_MIN else "full"


def periodic_eval_samples_for(config: TrainConfig, cuda: bool) -> int | None:
    if config.periodic_eval_samples != "auto":
        return int(config.periodic_eval_samples)
    return None if cuda else CPU_PERIODIC_EVAL_SAMPLES


def _flash_available() -> bool:
    from llmclone.training.attention import flash_available

    return flash_available()


def _model_facts(base: BaseModel, with_params: bool) -> tuple[int, int]:
    """The base model's vocabulary size and (when asked) parameter count, from its config alone."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base.path)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the base model's config from {base.path} ({err}); check --model.") from None
    vocab_size = config.get_text_config().vocab_size
    if not with_params:
        return vocab_size, 0
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: nothing allocated
        model = AutoModelForCausalLM.from_config(config)
    return vocab_size, sum(p.numel() for p in model.parameters())
