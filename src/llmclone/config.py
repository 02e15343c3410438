"""Settings: one typed model per command family, loaded from one TOML file, overridden by flags.

A clone's TOML file may hold a [train] table (TrainConfig), a [reply] table (ReplyConfig: reply, chat, serve,
eval, Telegram) and a [telegram] table (telegram/config.py); `load_table` reads any of them the same way."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from llmclone.errors import UserError
from llmclone.models.engine import Sampling

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # the original LLMClone settings


class TrainConfig(BaseModel):
    """Everything that decides what a clone learns. Recorded whole in the clone's manifest."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    model: str = "embedded"
    chat_format: Literal["transcript", "template"] | None = None  # default: template if the model has one
    # the system prompt of an instruct (template) clone, in training and replying alike: "auto" names the owner
    # and the languages their turns are in (training/persona.py); "none": no system prompt; else the text itself
    persona: str = Field("auto", min_length=1)
    quantize: Literal["4bit"] | None = None
    # "fsdp": the base model's weights (4-bit with QLoRA) and the adapters sharded across the processes of
    # `accelerate launch` / `torchrun` (PyTorch FSDP2), for a model larger than one GPU; "none": each process
    # holds the whole model (DDP); "auto": fsdp when the model does not fit one of the host's GPUs but fits
    # them together
    sharding: Literal["auto", "none", "fsdp"] = "auto"
    # LoRA (defaults: the original library's r=8, alpha=32, dropout 0.05 on q/k/v/o)
    lora_r: int = Field(8, ge=1, le=1024)
    lora_alpha: float = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    # optimisation
    learning_rate: float = Field(2e-4, gt=0, le=1)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1)  # > 0 overrides epochs
    # tokens per micro-step, packed with no padding; "auto": 1024 on a CPU (more optimizer steps per token
    # seen; attention is per sample, so longer rows would not cost more per token), 8192 on a GPU (with QLoRA
    # a 7B model then peaks below the original recipe's 5.6 GiB: layer inputs offloaded, see
    # gradient_checkpointing)
    batch_tokens: int | Literal["auto"] = "auto"
    gradient_accumulation: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16)  # longest sample; longer ones keep their end (the owner's turn)
    seed: int = 42
    # "offload": checkpointing with each layer's input parked in host memory (training/offload.py); "auto": that
    # for QLoRA and for models that fill much of a GPU, none on CPUs or for small models on a GPU
    gradient_checkpointing: bool | Literal["auto", "offload"] = "auto"
    # "auto": bf16 on GPUs that have it (else fp16) and on CPUs that multiply bf16 natively (AVX512-BF16, AMX:
    # faster at about the same held-out loss per step, lower per second: benchmarks/README.md); fp32 on other
    # CPUs, which only emulate bf16
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # "varlen": each packed sample attends only to itself (training/attention.py): Flash Attention on Ampere or
    # newer GPUs, one SDPA call per sample on CPUs; "auto" is varlen except on older GPUs (SDPA with a mask)
    attention: Literal["auto", "varlen", "sdpa", "eager"] = "auto"
    # "auto": Liger's fused Triton kernels (RMSNorm, SwiGLU, RoPE) on a GPU when liger-kernel is installed
    kernels: Literal["auto", "liger", "none"] = "auto"
    # The training softmax. "full": exact. "sampled": exact over the tokens the owner's turns contain, the other
    # ~250k of Gemma's tokens estimated each micro-step from 8,192 drawn where the base model puts its mass at
    # the first micro-batch's owner positions (training/loss.py). "auto": sampled on a CPU when the vocabulary is
    # large (>= 65,536: the output layer is then most of a CPU step), exact on GPUs. On real chats faster steps
    # than exact at the same held-out loss (benchmarks/README.md). Evaluation is
    # always exact.
    loss_vocabulary: Literal["auto", "full", "sampled"] = "auto"
    # evaluation, checkpoints, logging
    eval_steps: int = Field(50, ge=1)
    save_steps: int = Field(100, ge=1)
    logging_steps: int = Field(5, ge=1)
    max_eval_samples: int = Field(200, ge=1)
    # held-out samples each evaluation during training (every eval_steps) runs on, evenly spaced over the
    # held-out period; the final evaluation, whose loss clone.json records, runs on all max_eval_samples.
    # "auto": 48 on a CPU (where a pass over 200 of the embedded model's samples takes minutes), all on a GPU
    periodic_eval_samples: int | Literal["auto"] = "auto"
    # memory (memory/): each sample's prompt carries past exchanges retrieved as they will be when replying,
    # from other conversations only (never the sample's own): memory_k by relevance (BM25) and the chat's
    # memory_recent latest, within memory_tokens (estimated), so the clone learns to draw on them
    memory: bool = True
    memory_k: int = Field(4, ge=0, le=32)
    memory_recent: int = Field(2, ge=0, le=32)
    memory_tokens: int = Field(160, ge=16, le=4096)
    contacts: str | None = None  # a contacts file: each chat's relation to the owner (memory/contacts.py)
    # mixing a general instruction/chat dataset (same JSONL format) to keep general abilities
    mix_data: str | None = None
    mix_ratio: float = Field(0.0, ge=0, le=10)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.max_steps == 0:
            raise ValueError("max_steps must be at least 1 (or -1: train for the epochs)")
        if isinstance(self.periodic_eval_samples, int) and self.periodic_eval_samples < 1:
            raise ValueError("periodic_eval_samples must be at least 1 (or 'auto')")
        if isinstance(self.batch_tokens, int) and self.batch_tokens < 64:
            raise ValueError("batch_tokens must be at least 64")
        if isinstance(self.batch_tokens, int) and self.max_length > self.batch_tokens:
            raise ValueError("max_length must not exceed batch_tokens (a sample must fit in a micro-step)")
        if self.mix_ratio > 0 and not self.mix_data:
            raise ValueError("mix_ratio needs mix_data (a JSONL file of general conversations)")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("target_modules must name at least one module, or be 'all-linear'")
        return self


TABLES = ("train", "reply", "telegram")  # what one clone TOML file may hold
Settings = TypeVar("Settings", bound=BaseModel)


def load_table(path: str | Path | None, table: str, model: type[Settings],
               overrides: dict[str, Any] | None = None) -> Settings:
    """One table of a TOML file (a file with none of the TABLES is that table, flat), then the flags given
    (None: not given), checked by its pydantic model; a mistake is one sentence naming the setting."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"config file {path} does not exist.") from None
        except OSError as err:
            raise UserError(f"cannot read the config file {path} ({err.strerror}).") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{path} is not valid TOML ({err}); fix the file.") from None
        data = raw.get(table, {}) if any(name in raw for name in TABLES) else raw
        if not isinstance(data, dict):
            raise UserError(f"{table} in {path} must be a table ([{table}]); fix the file.")
    data = data | {k: v for k, v in (overrides or {}).items() if v is not None}
    try:
        return model(**data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or table
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown setting"
        command = "train" if table == "train" else "telegram bot" if table == "telegram" else "reply"
        raise UserError(f"{where}: {message}" + (f" (in [{table}] of {path})" if path else "")
                        + f"; see llmclone {command} --help.") from None


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """The training settings: the file's [train] table (or the whole file, flat), then the flags."""
    return load_table(path, "train", TrainConfig, overrides)


class ReplyConfig(BaseModel):
    """How a clone replies: in reply, chat, serve, eval and the Telegram modes alike (a [reply] table)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    engine: Literal["torch", "llama.cpp"] = "torch"  # llama.cpp: faster on a CPU (needs llama-cpp-python)
    # llama.cpp only: its GGUF's quantisation, and whether its output layer scores the clone's shortlist of
    # tokens or the whole vocabulary (models/shortlist.py)
    quant: Literal["q8_0", "f16", "q4_k_m"] = "q8_0"
    vocabulary: Literal["shortlist", "full"] = "shortlist"
    device: str = "auto"  # auto (a GPU if there is one), cpu, cuda or cuda:N
    # base weights (models/runtime.py): auto, 4bit, bf16; fp16, fp32 or full (16-bit, never 4-bit) for exports
    load: Literal["auto", "4bit", "bf16", "fp16", "fp32", "full"] = "auto"
    temperature: float = Field(Sampling.temperature, ge=0, le=2)
    top_p: float = Field(Sampling.top_p, gt=0, le=1)
    repetition_penalty: float = Field(Sampling.repetition_penalty, gt=0)
    max_new_tokens: int = Field(Sampling.max_new_tokens, ge=1)
    # past exchanges in the prompt (memory/): "auto" as the clone was trained (on when it has a memory)
    memory: Literal["auto", "on", "off"] = "auto"

    def sampling(self) -> dict[str, Any]:
        """The defaults every reply starts from (a request may override them)."""
        return self.model_dump(include={"temperature", "top_p", "repetition_penalty", "max_new_tokens"})


def load_reply_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ReplyConfig:
    return load_table(path, "reply", ReplyConfig, overrides)


def settings_toml(table: str, settings: dict[str, Any], resolved: dict[str, Any] | None = None) -> str:
    """The settings as a TOML table (what a config file may hold), and what this machine resolved, as comments."""
    lines = [f"[{table}]"]
    for key, value in settings.items():
        lines.append(f"# {key} = (default)" if value is None else f"{key} = {json.dumps(value)}")
    if resolved:
        lines += ["", "# resolved on this machine (clone.json records it as \"plan\"):"]
        lines += [f"#   {key} = {json.dumps(value)}" for key, value in resolved.items()]
    return "\n".join(lines)
