"""Training on a tiny random-weight model of the embedded architecture: masks, packing, loss, resume, QLoRA."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from llmclone.config import TrainConfig, load_config
from llmclone.errors import UserError
from llmclone.models.chat_format import ChatFormat
from llmclone.training.trainer import Interrupted, train


def tiny_config(model: Path, **kw: object) -> TrainConfig:
    settings = {"model": str(model), "max_steps": 4, "eval_steps": 2, "save_steps": 2, "logging_steps": 1,
                "batch_tokens": 512, "max_length": 256, "learning_rate": 5e-3, "max_eval_samples": 8} | kw
    return TrainConfig(**settings)  # type: ignore[arg-type]


def test_transcript_mask_covers_exactly_the_owner_tokens(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    messages = [{"role": "user", "content": "как дела?"}, {"role": "assistant", "content": "норм))\nты как"},
                {"role": "user", "content": "ok"}, {"role": "assistant", "content": "ахах"}]
    ids, mask = ChatFormat().encode(tok, messages)
    assert len(ids) == len(mask) and ids[0] == tok.bos_token_id
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "норм))\nты как<eos>ахах<eos>"
    context = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m], skip_special_tokens=True)
    assert "как дела?" in context and "ok" in context and "норм" not in context
    # the reply prompt is exactly the training prefix up to the clone's words
    prompt = ChatFormat().prompt(tok, messages[:3])
    assert ids[: len(prompt)] == prompt


def test_template_mask(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = ("{% for m in messages %}<bos>{{ m['role'] }}\n{{ m['content'] }}<eos>\n{% endfor %}"
                         "{% if add_generation_prompt %}<bos>assistant\n{% endif %}")
    fmt = ChatFormat.for_tokenizer(tok)
    assert fmt.kind == "template"
    ids, mask = fmt.encode(tok, [{"role": "assistant", "content": "first"}, {"role": "user", "content": "q"},
                                 {"role": "assistant", "content": "a1"}, {"role": "assistant", "content": "a2"}])
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert trained == "first<eos>\na1\na2<eos>\n"


def test_truncation_keeps_the_owner_turn(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    messages = [{"role": "user", "content": "long context " * 50}, {"role": "assistant", "content": "answer"}]
    ids, mask = ChatFormat().encode(tok, messages, max_length=20)
    assert len(ids) == 20 and tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "answer<eos>"


def test_packed_samples_do_not_attend_to_each_other(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    a, b = torch.randint(4, 300, (1, 37)), torch.randint(4, 300, (1, 23))
    packed = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(37), torch.arange(23)])[None]
    with torch.no_grad():
        # as in training: no cache, position ids restarting at each sample, no attention mask
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits
        alone_a = model(input_ids=a).logits
        alone_b = model(input_ids=b).logits
    torch.testing.assert_close(together[:, :37], alone_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together[:, 37:], alone_b, atol=1e-5, rtol=1e-4)


def test_loss_falls_and_clone_directory_is_complete(tiny_model: Path, example_dataset: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_model, max_steps=30, eval_steps=10, learning_rate=3e-2, lora_r=16,
                         target_modules="all-linear", lr_scheduler="constant", periodic_eval_samples=3)
    manifest = train(example_dataset, tmp_path / "clone", config, quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "clone" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert min(train_losses[-5:]) < train_losses[0] - 0.3
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    # during training on 3 held-out samples, and none at the last step: the final evaluation, once, on all 8
    held_out = min(8, len((example_dataset / "eval.jsonl").read_text().splitlines()))
    assert held_out > 3
    assert [r["step"] for r in evals] == [0, 10, 20]
    final = [r for r in rows if "final_eval_loss" in r]
    assert len(final) == 1 and final[0]["step"] == 30
    assert manifest["metrics"]["eval_loss"] == final[0]["final_eval_loss"]
    assert manifest["evaluation"] == {"every_steps": 10, "periodic_samples": 3, "final_samples": held_out}
    # what ran, not "auto": the plan, as resolved on this machine
    assert manifest["training"]["batch_tokens"] == 512 and manifest["training"]["attention"] == "auto"
    plan = manifest["plan"]
    assert plan["batch_tokens"] == 512 and plan["attention"] == "varlen" and plan["periodic_eval_samples"] == 3
    if not torch.cuda.is_available():
        assert (plan["device"], plan["precision"], plan["varlen_kernel"], plan["loss_vocabulary"]) == (
            "cpu", "fp32", "per_sample", "full")
    clone = tmp_path / "clone"
    assert sorted(p.name for p in clone.iterdir()) == ["adapter", "clone.json", "loss.png", "memory",
                                                       "metrics.jsonl", "vocabulary.json"]
    assert (clone / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every token of the training samples, both speakers (the llama.cpp engine's shortlist starts from it)
    from transformers import AutoTokenizer

    from llmclone.memory.recall import Memory
    from llmclone.models.chat_format import ChatFormat
    from llmclone.training.data import read_samples
    from llmclone.training.recalls import sample_recalls

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    own = read_samples(example_dataset / "train.jsonl")
    recalls, _ = sample_recalls(Memory.load(clone), example_dataset, config, own, [])  # as trained: with memory
    assert sum(r is not None for r in recalls) > len(own) / 2
    seen = {i for messages, recall in zip(own, recalls, strict=True)
            for i in ChatFormat().encode(tokenizer, messages, config.max_length, recall)[0]}
    recorded = json.loads((clone / "vocabulary.json").read_text())
    assert recorded["token_ids"] == sorted(seen)
    assert recorded["likely_ids"] == []  # a 400-token vocabulary: nothing to shortlist
    for path in [clone, *clone.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    assert manifest["chat_format"]["kind"] == "transcript"
    assert manifest["owner"]["name"] == "Lyosha Petrov"
    assert manifest["training"]["lora_r"] == 16 and manifest["metrics"]["steps"] == 30
    assert manifest["dataset"]["digest"] == json.loads((example_dataset / "stats.json").read_text())["dataset_digest"]
    assert not (tmp_path / ".clone.partial").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU default")
def test_periodic_evaluation_is_bounded_on_a_cpu(tiny_model: Path) -> None:
    from llmclone.training.plan import CPU_PERIODIC_EVAL_SAMPLES, periodic_eval_samples_for

    assert periodic_eval_samples_for(tiny_config(tiny_model), cuda=False) == CPU_PERIODIC_EVAL_SAMPLES < 200
    assert periodic_eval_samples_for(tiny_config(tiny_model), cuda=True) is None  # all of them
    assert periodic_eval_samples_for(tiny_config(tiny_model, periodic_eval_samples=300), cuda=False) == 300
    with pytest.raises(ValueError, match="periodic_eval_samples"):
        tiny_config(tiny_model, periodic_eval_samples=0)
    from llmclone.training.data import evenly_spaced

    assert evenly_spaced(list(range(10)), 3) == [0, 3, 6] and evenly_spaced([1, 2], 5) == [1, 2]


def _adapter(clone: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(clone / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize("loss_vocabulary", ["full", "sampled"])
def test_resume_equals_uninterrupted(tiny_model: Path, example_dataset: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, loss_vocabulary: str) -> None:
    """Ctrl-C at step 3, then --resume: the same adapter as one run. Sampled: the resumed run draws from the
    marginal its checkpoint kept (its own first micro-batch would see trained adapters)."""
    config = tiny_config(tiny_model, max_steps=6, save_steps=100, lora_dropout=0.0, loss_vocabulary=loss_vocabulary)
    train(example_dataset, tmp_path / "straight", config, quiet=True)

    from llmclone.training import callbacks

    original = callbacks.CtrlCStop.on_step_end

    def press_ctrl_c_at_step_3(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        if state.global_step == 3 and not self.session.interrupted:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, through the real handler
        return original(self, args, state, control, **kw)

    monkeypatch.setattr(callbacks.CtrlCStop, "on_step_end", press_ctrl_c_at_step_3)
    with pytest.raises(Interrupted, match="--resume"):
        train(example_dataset, tmp_path / "resumed", config, quiet=True)
    assert not (tmp_path / "resumed").exists()
    kept = list((tmp_path / ".resumed.partial" / "checkpoints").glob("checkpoint-*/owner_marginal.pt"))
    assert len(kept) == (loss_vocabulary == "sampled")
    monkeypatch.setattr(callbacks.CtrlCStop, "on_step_end", original)
    with pytest.raises(UserError, match="other settings"):
        train(example_dataset, tmp_path / "resumed", tiny_config(tiny_model, max_steps=6, lora_r=4), resume=True)
    train(example_dataset, tmp_path / "resumed", config, resume=True, quiet=True)
    straight, resumed = _adapter(tmp_path / "straight"), _adapter(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(straight[key], resumed[key], atol=1e-6, rtol=1e-5)


def test_checkpoints_every_save_steps_and_none_after_the_last_step(tiny_model: Path, example_dataset: Path,
                                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    """Checkpoints every `save_steps`, none after the last step (the clone is written from memory, the work
    folder removed), and one where Ctrl-C stops a run even when that is the last step."""
    from llmclone.training.loss import CloneTrainer

    saved: list[int] = []
    original = CloneTrainer._save_checkpoint

    def recording(self, model, trial):  # type: ignore[no-untyped-def]
        saved.append(self.state.global_step)
        return original(self, model, trial)

    monkeypatch.setattr(CloneTrainer, "_save_checkpoint", recording)
    train(example_dataset, tmp_path / "clone", tiny_config(tiny_model, max_steps=5, save_steps=2), quiet=True)
    assert saved == [2, 4]

    from llmclone.training import callbacks

    press = callbacks.CtrlCStop.on_step_end

    def ctrl_c_at_the_last_step(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
        self.session.interrupted = state.global_step == state.max_steps
        return press(self, args, state, control, **kw)

    monkeypatch.setattr(callbacks.CtrlCStop, "on_step_end", ctrl_c_at_the_last_step)
    saved.clear()
    with pytest.raises(Interrupted):
        train(example_dataset, tmp_path / "stopped", tiny_config(tiny_model, max_steps=3, save_steps=2), quiet=True)
    assert saved == [2, 3]


def test_bf16_on_a_cpu_that_multiplies_it(tiny_model: Path, example_dataset: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """precision "auto" on a CPU with AVX512-BF16 or AMX: frozen weights in bf16, adapters in fp32, and it learns;
    without such a CPU, fp32."""
    from llmclone.models import runtime
    from llmclone.models.base_models import resolve
    from llmclone.training.data import training_samples
    from llmclone.training.plan import plan_for
    from llmclone.training.trainer import TrainingSession

    config = tiny_config(tiny_model, max_steps=20, eval_steps=100, learning_rate=3e-2, lora_r=16,
                         target_modules="all-linear", lr_scheduler="constant")
    base = resolve(config.model)
    assert plan_for(config, base).precision == ("bf16" if torch.cuda.is_available() else "fp32")  # conftest: no bf16
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    plan = plan_for(config, base)
    assert plan.precision == "bf16"
    session = TrainingSession(base, config, plan, tmp_path, quiet=True)
    trainer = session.trainer(training_samples(example_dataset, config)[0], [])
    frozen = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32} and trainer.args.bf16
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 20 and min(losses[-5:]) < losses[0] - 0.3


def test_qlora_on_cpu(tiny_model: Path, example_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                      ) -> None:
    """QLoRA on a CPU, as on one with AVX512-BF16 (told so here: bitsandbytes would repack the 4-bit layers for
    its inference kernel at the evaluation before training, cutting their input gradients; the tiny model's
    layers are too narrow for that packing and fail outright)."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.nn.modules

    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
    manifest = train(example_dataset, tmp_path / "q", tiny_config(tiny_model, quantize="4bit", max_steps=2,
                                                                    target_modules="all-linear"), quiet=True)
    assert manifest["training"]["quantize"] == "4bit" and manifest["metrics"]["train_loss"] > 0
    adapter = _adapter(tmp_path / "q")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: the 4-bit model was trained
    assert any("mlp" in k for k in adapter)  # all-linear reached the MLP too


def test_config_file_flags_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "clone.toml"
    path.write_text('[train]\nlora_r = 16\nlearning_rate = 1e-4\ntarget_modules = "all-linear"\n')
    merged = load_config(path, {"lora_r": 32, "epochs": None})
    assert merged.lora_r == 32 and merged.learning_rate == 1e-4 and merged.target_modules == "all-linear"
    path.write_text("lora_rank = 8\n")
    with pytest.raises(UserError, match="lora_rank: unknown setting"):
        load_config(path, {})
    path.write_text("lora_r = [\n")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(path, {})
    for bad in ({"lora_dropout": 1.5}, {"max_length": 4096, "batch_tokens": 1024}, {"mix_ratio": 0.5}):
        with pytest.raises(UserError):
            load_config(None, bad)


def test_mixing_general_data(tiny_model: Path, example_dataset: Path, tmp_path: Path) -> None:
    from llmclone.training.data import training_samples

    general = tmp_path / "general.jsonl"
    general.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                          {"role": "assistant", "content": f"a{i}"}]})
                                 for i in range(10)))
    base_train, _ = training_samples(example_dataset, tiny_config(tiny_model))
    mixed, _ = training_samples(example_dataset, tiny_config(tiny_model, mix_data=str(general), mix_ratio=0.5))
    assert len(mixed) == len(base_train) + round(len(base_train) * 0.5)
    assert mixed[-1][0]["content"].startswith("q")


@pytest.mark.parametrize("case", ["missing", "empty", "wrong shape", "bad past line 50", "not utf-8"])
def test_bad_datasets(tiny_model: Path, example_dataset: Path, tmp_path: Path, case: str) -> None:
    import shutil

    data = tmp_path / "data"
    if case in ("bad past line 50", "not utf-8"):  # a real dataset, broken far in: checked before any work starts
        shutil.copytree(example_dataset, data)
        lines = (data / "train.jsonl").read_bytes().splitlines(keepends=True)
        lines[60] = b'{"text": "hello"}\n' if case == "bad past line 50" else b'{"messages": "caf\xe9"}\n'
        (data / "train.jsonl").write_bytes(b"".join(lines))
    elif case != "missing":
        data.mkdir()
        (data / "train.jsonl").write_text("" if case == "empty" else '{"text": "hello"}\n')
    with pytest.raises(UserError, match="not UTF-8" if case == "not utf-8" else ""):
        train(data, tmp_path / "clone", tiny_config(tiny_model))
    assert not (tmp_path / "clone").exists()
    assert not (tmp_path / ".clone.partial").exists()


def test_bad_models(example_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="hub"):
        train(example_dataset, tmp_path / "c", TrainConfig(model="nobody/no-such-model"))
    from gguf import GGUFWriter

    bert = tmp_path / "bert.gguf"
    writer = GGUFWriter(str(bert), "bert")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    monkeypatch.setenv("LLMCLONE_HOME", str(tmp_path / "home"))
    with pytest.raises(UserError, match="'bert' model"):
        train(example_dataset, tmp_path / "c", TrainConfig(model=str(bert)))
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf")
    with pytest.raises(UserError, match="not a readable GGUF"):
        train(example_dataset, tmp_path / "c", TrainConfig(model=str(garbage)))
    assert not (tmp_path / "c").exists()
    with pytest.raises(UserError):
        train(example_dataset, tmp_path / "c", TrainConfig(model=str(tmp_path / "no-such-dir")))
    assert not (tmp_path / "c").exists() and not (tmp_path / ".c.partial").exists()


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:116] DefaultCPUAllocator: can't allocate memory"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
])
def test_out_of_memory_names_the_setting_to_lower(tiny_model: Path, example_dataset: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    from transformers import Trainer

    def oom(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise error

    monkeypatch.setattr(Trainer, "train", oom)
    with pytest.raises(UserError, match="lower batch_tokens \\(now 512\\)"):
        train(example_dataset, tmp_path / "clone", tiny_config(tiny_model))
    assert not (tmp_path / "clone").exists()


def test_zero_steps_refused_and_a_short_run_reports_its_loss(tiny_model: Path, example_dataset: Path,
                                                             tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_steps must be at least 1"):
        TrainConfig(max_steps=0)
    manifest = train(example_dataset, tmp_path / "clone", TrainConfig(
        model=str(tiny_model), max_steps=1, logging_steps=5, batch_tokens=512, max_length=256, eval_steps=10**6,
        max_eval_samples=4), quiet=True)
    loss = manifest["metrics"]["train_loss"]
    assert isinstance(loss, float) and loss == loss and loss > 0  # one step, logged every 5: the summary's loss


def _train_cli(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    import sys

    command = [*(launcher or [sys.executable]), "-m", "llmclone", "train", *args, "--quiet"]
    return subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})


def test_fsdp_on_two_processes_follows_one_process(tiny_model: Path, example_dataset: Path, tmp_path: Path) -> None:
    """FSDP2 across two CPU processes (gloo) trains as one process does on the same global batch (two packed
    rows per step: one each, or two micro-steps in one): the same loss curve to noise, one clone written,
    the plan recording what ran; --shard on one process is one sentence."""
    import sys

    settings = (f'[train]\nmodel = "{tiny_model}"\nmax_steps = 6\nbatch_tokens = 512\nmax_length = 256\n'
                'learning_rate = 5e-3\nlora_dropout = 0.0\nlogging_steps = 1\neval_steps = 1000000\n'
                'max_eval_samples = 4\n')
    (tmp_path / "one.toml").write_text(settings + "gradient_accumulation = 2\n")
    (tmp_path / "two.toml").write_text(settings)
    one = _train_cli([str(example_dataset), "--out", str(tmp_path / "one"), "--config", str(tmp_path / "one.toml")])
    assert one.returncode == 0, one.stderr[-3000:]
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(port)]
    two = _train_cli([str(example_dataset), "--out", str(tmp_path / "two"), "--config", str(tmp_path / "two.toml"),
                      "--shard"], torchrun)
    assert two.returncode == 0, two.stderr[-3000:]

    def curve(clone: Path) -> list[float]:
        rows = [json.loads(line) for line in (clone / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    alone, sharded = curve(tmp_path / "one"), curve(tmp_path / "two")
    assert len(alone) == len(sharded) == 6 and alone[-1] < alone[0]
    assert sharded == pytest.approx(alone, rel=2e-3)  # the same steps on the same rows; float sums differ
    manifest = json.loads((tmp_path / "two" / "clone.json").read_text())
    assert (manifest["plan"]["sharding"], manifest["plan"]["processes"], manifest["plan"]["chunked_loss"]) == (
        "fsdp", 2, False)
    from safetensors.torch import load_file

    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()  # the same adapters, gathered whole from the shards
    assert max(float((a[k] - b[k]).norm() / a[k].norm()) for k in a if a[k].norm() > 0) < 0.05
    alone_process = _train_cli([str(example_dataset), "--out", str(tmp_path / "three"), "--config",
                                str(tmp_path / "two.toml"), "--shard"])
    assert alone_process.returncode == 2 and "one" in alone_process.stderr and "Traceback" not in alone_process.stderr
    assert not (tmp_path / "three").exists() and not (tmp_path / ".three.partial").exists()


def test_sharding_decisions_and_refusals(tiny_model: Path, example_dataset: Path, tmp_path: Path) -> None:
    """auto shards what outgrows one GPU but fits the host's together; too large for all is one sentence
    saying how much is needed; a sharded checkpoint resumes only on as many processes."""
    from llmclone.training import trainer as trainer_module
    from llmclone.training.plan import sharding_for

    gib = 2**30
    auto, shard = TrainConfig(), TrainConfig(sharding="fsdp")
    assert sharding_for(auto, 2, True, 30 * gib, 80 * gib) == "none"  # fits one card: DDP
    assert sharding_for(auto, 2, True, 70 * gib, 80 * gib) == "fsdp"  # 70 GiB of weights on two 80 GiB cards
    assert sharding_for(auto, 1, True, 70 * gib, 80 * gib) == "none" and sharding_for(auto, 2, False, 70 * gib, 0) == "none"
    assert sharding_for(shard, 2, True, 1 * gib, 80 * gib) == "fsdp" and sharding_for(shard, 2, False, 0, 0) == "fsdp"
    with pytest.raises(UserError, match=r"need ~140 GiB.*~233 GiB of GPU memory in all"):
        sharding_for(shard, 2, True, 140 * gib, 80 * gib)
    with pytest.raises(UserError, match="this run has one"):
        sharding_for(shard, 1, True, 1 * gib, 80 * gib)

    config = tiny_config(tiny_model)
    stats = json.loads((example_dataset / "stats.json").read_text())
    work = tmp_path / ".clone.partial"
    (work / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (work / "run.json").write_text(json.dumps({"config_key": trainer_module._config_key(config, stats),
                                               "plan": {"sharding": "fsdp", "processes": 2}}))
    with pytest.raises(UserError, match="sharded across 2 processes and this run has 1"):
        train(example_dataset, tmp_path / "clone", config, resume=True)
