"""Where and how a model runs: device, precision and weight loading, decided once for every stage.

`machine()` reads what this computer reports (GPUs with their compute capability and free memory, whether the
CPU multiplies bf16 natively, free host memory); `plan()` turns that and what the user asked for into a
`Runtime`, as a pure function, so the choice is testable without the hardware. Training (precision) and every
stage that loads a clone (reply, chat, serve, eval, export, Telegram) use it, and each says what it chose.

- device "auto": the first CUDA GPU when there is one, else the CPU;
- precision "auto": bf16 on GPUs that compute it natively (compute capability 8.0 or newer: Ampere, Hopper),
  fp16 on older ones (T4, V100), bf16 on CPUs with AVX512-BF16 or AMX, fp32 on other CPUs (they only emulate
  bf16, slower than fp32);
- load "auto": the base model in 4-bit NF4 on a GPU when the clone was trained with QLoRA (its adapter learnt
  against those weights) or when its 16-bit weights would not leave room for the KV cache; full weights
  otherwise. The adapter is merged into full weights; kept apart from 4-bit ones (merging into NF4 rounds it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from llmclone.errors import UserError

GiB = 2**30
RESERVE_BYTES = GiB  # activations, the CUDA context and allocator slack beside weights and KV cache
NF4_BYTES_PER_PARAM = 0.5 + 0.035  # 4-bit values plus double-quantised absmax per 64-value block
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
DEVICES_HELP = "use auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class Machine:
    gpus: tuple[Gpu, ...] = ()
    cpu_bf16: bool = False
    ram_free_bytes: int = 0
    liger: bool = False  # liger-kernel importable (its Triton kernels need a CUDA GPU)


@dataclass(frozen=True)
class ModelSize:
    """What loading costs: parameters of the linear layers (quantisable) and of everything else, and the KV
    cache's bytes per token at 16 bits."""

    linear_params: int
    other_params: int
    kv_bytes_per_token: int

    def weight_bytes(self, dtype: str, four_bit: bool) -> int:
        per = DTYPE_BYTES[dtype]
        if four_bit:
            return int(self.linear_params * NF4_BYTES_PER_PARAM + self.other_params * per)
        return (self.linear_params + self.other_params) * per


@dataclass(frozen=True)
class Runtime:
    device: str  # "cpu" or "cuda:N"
    dtype: str  # "bf16" | "fp16" | "fp32"
    four_bit: bool  # base weights loaded in NF4 (bitsandbytes)
    merge: bool  # adapter folded into the weights (False: kept apart, exact for NF4 bases)
    needed_bytes: int = 0
    available_bytes: int = 0
    kernels: str = "none"  # "liger": Liger's fused RMSNorm, RoPE and SwiGLU Triton kernels (models/fused_kernels.py)
    notes: tuple[str, ...] = field(default_factory=tuple)
    gpus: int = 1  # >1: the layers split across that many GPUs (device_map), for a clone larger than one

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def torch_dtype(self) -> Any:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.dtype]

    def describe(self) -> str:
        weights = "base in 4-bit NF4, adapter kept apart" if self.four_bit else (
            "adapter merged" if self.merge else "adapter kept apart")
        where = "GPU" if self.cuda else "CPU"
        where_runs = f"{self.gpus} GPUs ({self.device} first)" if self.gpus > 1 else self.device
        text = f"running on {where_runs} in {self.dtype} ({weights})"
        if self.kernels == "liger":
            text += " with Liger's fused kernels"
        if self.needed_bytes:
            where = f"{self.gpus} GPUs'" if self.gpus > 1 else f"{where}'s"
            text += f"; needs ~{self.needed_bytes / GiB:.1f} GiB of the {where} {self.available_bytes / GiB:.1f} GiB free"
        return ". ".join([text, *self.notes])

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype, "four_bit": self.four_bit, "merge": self.merge,
                "kernels": self.kernels, "gpus": self.gpus, "needed_gib": round(self.needed_bytes / GiB, 2),
                "available_gib": round(self.available_bytes / GiB, 2)}


def machine(memory: bool = True) -> Machine:
    """What this computer reports (`memory=False`: without free GPU memory, which opens a CUDA context on each)."""
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i) if memory else (0, props.total_memory)
            gpus.append(Gpu(i, props.name, (props.major, props.minor), free, total))
    import importlib.util

    liger = bool(gpus) and importlib.util.find_spec("liger_kernel") is not None
    return Machine(tuple(gpus), cpu_has_bf16(), _ram_free(), liger)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); without it torch emulates bf16 at a
    fraction of fp32's speed (benchmarks/NOTES.md has both rates on two hosts)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    return False  # not Linux, or no flags line: fp32, which is never slow


def _ram_free() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0


def device_for(found: Machine, requested: str = "auto") -> str:
    """"cpu" or "cuda:N" for --device auto|cpu|cuda|cuda:N."""
    requested = (requested or "auto").strip().lower()
    if requested == "cpu":
        return "cpu"
    if requested == "auto":
        return "cuda:0" if found.gpus else "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if not found.gpus:
            raise UserError(f"--device {requested}: this machine has no CUDA GPU that PyTorch can use (a CPU-only "
                            "torch, or no driver); use --device auto or cpu.")
        index = 0 if requested == "cuda" else _index(requested)
        if index >= len(found.gpus):
            raise UserError(f"--device {requested}: this machine has {len(found.gpus)} CUDA GPU(s) (cuda:0 to "
                            f"cuda:{len(found.gpus) - 1}).")
        return f"cuda:{index}"
    raise UserError(f"unknown device {requested!r}; {DEVICES_HELP}.")


def _index(requested: str) -> int:
    try:
        return int(requested.split(":", 1)[1])
    except ValueError:
        raise UserError(f"unknown device {requested!r}; {DEVICES_HELP}.") from None


def precision_for(found: Machine, device: str, requested: str = "auto") -> str:
    """"bf16", "fp16" or "fp32" on that device (see the module docstring for "auto")."""
    if requested != "auto":
        if requested == "bf16" and device.startswith("cuda") and _gpu(found, device).capability < (8, 0):
            raise UserError(f"{_gpu(found, device).name} has no native bf16 (compute capability "
                            f"{'.'.join(map(str, _gpu(found, device).capability))}); use precision fp16 or auto.")
        return requested
    if device.startswith("cuda"):
        return "bf16" if _gpu(found, device).capability >= (8, 0) else "fp16"
    return "bf16" if found.cpu_bf16 else "fp32"


def _gpu(found: Machine, device: str) -> Gpu:
    return found.gpus[_index(device)]


def plan(found: Machine, size: ModelSize | None, device: str = "auto", load: str = "auto",
         qlora_clone: bool = False, precision: str = "auto", kv_tokens: int = 8 * 1280,
         kernels: str = "auto") -> Runtime:
    """The runtime for loading a clone: device, precision, 4-bit or not, merged or not, fused kernels or not,
    with the memory check.

    `kv_tokens` is the KV cache to leave room for (batch x context); `size` None skips the memory check.
    `kernels` "auto" takes Liger's fused kernels on a GPU where liger-kernel is installed (a decode step is
    hundreds of small kernels; fusing them is most of what separates it from reading the weights)."""
    if load not in ("auto", "4bit", "bf16", "fp16", "fp32", "full"):
        raise UserError(f"unknown --load {load!r}; use auto, 4bit or bf16 (full 16-bit weights).")
    dev = device_for(found, device)
    cuda = dev.startswith("cuda")
    dtype = precision_for(found, dev, load if load in ("bf16", "fp16", "fp32") else precision)
    notes: list[str] = []
    if load == "4bit" and not cuda:
        raise UserError("--load 4bit needs a CUDA GPU (bitsandbytes' NF4 kernels); on a CPU use --load auto.")
    if qlora_clone and not cuda:
        notes.append("a QLoRA clone trained on a GPU, here on the CPU: its adapter is merged into full weights "
                     "(close to, not bit-equal to, its 4-bit training), and replies are slower")
    free = _gpu(found, dev).free_bytes if cuda else found.ram_free_bytes
    kv = size.kv_bytes_per_token * kv_tokens * DTYPE_BYTES[dtype] // 2 if size else 0

    def need(four: bool) -> int:
        return (size.weight_bytes(dtype, four) + kv + (RESERVE_BYTES if cuda else 0)) if size else 0

    if load == "auto":
        four = cuda and (qlora_clone or (size is not None and need(False) > free))
        if four and not qlora_clone:
            notes.append(f"16-bit weights would need ~{need(False) / GiB:.1f} GiB, so the base is loaded in 4-bit")
    else:
        four = load == "4bit"
    if four:
        _require_bitsandbytes()
    needed = need(four)
    gpus = 1
    if size is not None and free and needed > free and cuda and device in ("auto", "cuda") and len(found.gpus) > 1:
        together = sum(g.free_bytes for g in found.gpus)  # each GPU keeps its own reserve
        if needed + RESERVE_BYTES * (len(found.gpus) - 1) <= together:
            gpus, free = len(found.gpus), together
            notes.append(f"too large for one GPU: its layers are split across the {gpus} GPUs, and each token "
                         "passes through them in turn")
    if size is not None and free and needed > free:
        where = f"the GPU {dev} has" if cuda else "this machine has"
        fix = ("use --load 4bit" if cuda and not four else
               "use a smaller base model, a GPU with more memory, or free memory" if cuda else
               "use a machine with more memory or a GPU (--device cuda)")
        raise UserError(f"this clone needs ~{needed / GiB:.1f} GiB; {where} {free / GiB:.1f} GiB free; {fix}.")
    if kernels not in ("auto", "liger", "none"):
        raise UserError(f"unknown kernels {kernels!r}; use auto, liger or none.")
    if kernels == "liger" and not (cuda and found.liger):
        raise UserError("Liger's kernels need a CUDA GPU and liger-kernel (pip install 'llmclone[gpu]'); "
                        "use kernels auto or none.")
    fused = "liger" if kernels != "none" and cuda and found.liger else "none"
    return Runtime(dev, dtype, four, merge=not four, needed_bytes=needed, available_bytes=free, kernels=fused,
                   notes=tuple(notes), gpus=gpus)


def _require_bitsandbytes() -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("loading in 4-bit needs bitsandbytes: pip install 'llmclone[quantize]' (or --load bf16).")


def model_size(model_dir: str) -> ModelSize:
    """Parameter counts from the checkpoint's safetensors headers (no weights read) and the KV cache per token."""
    from pathlib import Path

    from safetensors import safe_open
    from transformers import AutoConfig

    linear = other = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has keys(), no iteration)
                shape = f.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                is_linear = len(shape) == 2 and "embed" not in name and "lm_head" not in name
                linear, other = (linear + count, other) if is_linear else (linear, other + count)
    text = AutoConfig.from_pretrained(model_dir).get_text_config()
    heads = getattr(text, "num_attention_heads", 1)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return ModelSize(linear, other, 2 * text.num_hidden_layers * kv_heads * head_dim * 2)
