"""Device, precision and loading chosen from what the machine reports (fake GPUs and memory), and the memory check."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmclone.errors import UserError
from llmclone.models.runtime import GiB, Gpu, Machine, ModelSize, device_for, model_size, plan, precision_for

H200 = Gpu(0, "NVIDIA H200", (9, 0), 139 * GiB, 141 * GiB)
T4 = Gpu(0, "Tesla T4", (7, 5), 15 * GiB, 16 * GiB)
LAPTOP = Gpu(0, "RTX 4090 Laptop", (8, 9), 15 * GiB, 16 * GiB)
MISTRAL_7B = ModelSize(linear_params=6_979_321_856, other_params=262_410_240, kv_bytes_per_token=131_072)
QWEN_14B = ModelSize(linear_params=13_212_057_600, other_params=1_557_000_000, kv_bytes_per_token=196_608)
CPU_ONLY = Machine((), cpu_bf16=False, ram_free_bytes=20 * GiB)


def test_device_auto_cpu_cuda() -> None:
    assert device_for(Machine((H200,)), "auto") == "cuda:0"
    assert device_for(CPU_ONLY, "auto") == "cpu"
    assert device_for(Machine((H200,)), "cpu") == "cpu"
    assert device_for(Machine((H200, H200)), "cuda:1") == "cuda:1"
    with pytest.raises(UserError, match="no CUDA GPU"):
        device_for(CPU_ONLY, "cuda")
    with pytest.raises(UserError, match="has 1 CUDA GPU"):
        device_for(Machine((H200,)), "cuda:3")
    with pytest.raises(UserError, match="unknown device"):
        device_for(Machine((H200,)), "tpu")


def test_precision_by_hardware() -> None:
    assert precision_for(Machine((H200,)), "cuda:0") == "bf16"
    assert precision_for(Machine((T4,)), "cuda:0") == "fp16"  # emulated bf16 does not count
    assert precision_for(Machine((), cpu_bf16=True), "cpu") == "bf16"
    assert precision_for(CPU_ONLY, "cpu") == "fp32"
    assert precision_for(CPU_ONLY, "cpu", "fp32") == "fp32"
    with pytest.raises(UserError, match="no native bf16"):
        precision_for(Machine((T4,)), "cuda:0", "bf16")


def test_qlora_clone_loads_in_4bit_on_a_gpu_and_merged_on_a_cpu() -> None:
    gpu = plan(Machine((H200,)), MISTRAL_7B, qlora_clone=True)
    assert (gpu.device, gpu.dtype, gpu.four_bit, gpu.merge) == ("cuda:0", "bf16", True, False)
    cpu = plan(Machine((), ram_free_bytes=64 * GiB), MISTRAL_7B, qlora_clone=True)
    assert (cpu.device, cpu.dtype, cpu.four_bit, cpu.merge) == ("cpu", "fp32", False, True)
    assert "slower" in cpu.describe()


def test_lora_clone_in_16_bit_when_it_fits_else_4bit() -> None:
    big = plan(Machine((H200,)), MISTRAL_7B)
    assert (big.dtype, big.four_bit, big.merge) == ("bf16", False, True)
    assert 13 * GiB < big.needed_bytes < 18 * GiB
    small = plan(Machine((LAPTOP,)), MISTRAL_7B)  # 14.5 GB of bf16 weights + KV cache do not fit 15 GiB free
    assert small.four_bit and "4-bit" in small.describe()
    assert small.needed_bytes < 8 * GiB
    t4 = plan(Machine((T4,)), MISTRAL_7B, qlora_clone=True)
    assert (t4.dtype, t4.four_bit) == ("fp16", True)


def test_fused_kernels_on_a_gpu_with_liger_only() -> None:
    with_liger = Machine((H200,), liger=True)
    assert plan(with_liger, MISTRAL_7B).kernels == "liger"
    assert "Liger" in plan(with_liger, MISTRAL_7B).describe()
    assert plan(with_liger, MISTRAL_7B).to_json()["kernels"] == "liger"
    assert plan(with_liger, MISTRAL_7B, kernels="none").kernels == "none"
    assert plan(with_liger, MISTRAL_7B, device="cpu").kernels == "none"  # Triton kernels: GPUs only
    assert plan(Machine((H200,)), MISTRAL_7B).kernels == "none"  # not installed
    with pytest.raises(UserError, match="liger-kernel"):
        plan(Machine((H200,)), MISTRAL_7B, kernels="liger")
    with pytest.raises(UserError, match="unknown kernels"):
        plan(with_liger, MISTRAL_7B, kernels="fast")


def test_memory_check_is_one_sentence_before_loading() -> None:
    with pytest.raises(UserError, match=r"needs ~1\d\.\d GiB; the GPU cuda:0 has 15\.0 GiB free; use --load 4bit"):
        plan(Machine((LAPTOP,)), MISTRAL_7B, load="bf16")
    tiny_gpu = Gpu(0, "small", (8, 6), 4 * GiB, 6 * GiB)
    with pytest.raises(UserError, match="needs ~"):
        plan(Machine((tiny_gpu,)), QWEN_14B)  # not even in 4-bit
    with pytest.raises(UserError, match=r"this machine has 20\.0 GiB free"):
        plan(CPU_ONLY, QWEN_14B, device="cpu")  # 59 GB in fp32
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        plan(CPU_ONLY, MISTRAL_7B, load="4bit")
    with pytest.raises(UserError, match="unknown --load"):
        plan(CPU_ONLY, MISTRAL_7B, load="8bit")


def test_model_size_reads_headers(tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    size = model_size(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert size.linear_params + size.other_params == sum(p.numel() for p in model.parameters())
    assert size.kv_bytes_per_token == 2 * 2 * 1 * 16 * 2  # layers x (k, v) x kv heads x head_dim x bf16
    assert size.weight_bytes("fp32", False) == 4 * sum(p.numel() for p in model.parameters())
    del torch


def test_a_clone_larger_than_one_gpu_is_split_across_them() -> None:
    """When the weights fit no single GPU (4-bit included) but the host's GPUs together: split (device_map);
    one GPU named, or too large for all: the memory sentence, as before."""
    small = Gpu(0, "RTX 4090", (8, 9), 23 * GiB, 24 * GiB)
    pair = Machine((small, Gpu(1, "RTX 4090", (8, 9), 23 * GiB, 24 * GiB)))
    split = plan(pair, QWEN_14B, load="bf16")  # ~30 GB of bf16 weights: neither card alone
    assert (split.gpus, split.device, split.four_bit) == (2, "cuda:0", False)
    assert "2 GPUs" in split.describe() and split.to_json()["gpus"] == 2
    assert plan(pair, QWEN_14B).gpus == 1  # auto: 4-bit on one card comes first
    assert plan(Machine((H200, H200)), QWEN_14B, load="bf16").gpus == 1  # fits one: not split
    with pytest.raises(UserError, match="the GPU cuda:1 has"):
        plan(pair, QWEN_14B, load="bf16", device="cuda:1")
    with pytest.raises(UserError, match="needs ~"):
        plan(Machine((T4, Gpu(1, "Tesla T4", (7, 5), 15 * GiB, 16 * GiB))), QWEN_14B, load="fp16")
