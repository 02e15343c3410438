"""On a CUDA GPU (skipped elsewhere): CUDA-graph decoding gives the eager tokens, a QLoRA clone trains in fp16
(the T4's precision) to a finite loss and loads back in 4-bit, and eval batches equal one case at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from llmclone.models.engine import Request, Sampling

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
HISTORIES = [[{"role": "user", "content": "привет! как дела?"}],
             [{"role": "user", "content": "пойдём в кино " * 12}, {"role": "assistant", "content": "ахах))"},
              {"role": "user", "content": "ну так что, в субботу?"}],
             [{"role": "user", "content": "ок"}]]


def _stepped(engine: Any, ids: list[int], tokens: list[int], graphs: bool, base: bool = False) -> torch.Tensor:
    """Logits of each step when the reply is forced to be `tokens`: prefill, then one token at a time."""
    import contextlib

    from llmclone.models.torch_engine import _EagerDecoder

    input_ids = torch.tensor([ids], device="cuda")
    attention = torch.ones_like(input_ids)
    positions = torch.arange(len(ids), device="cuda")[None]
    off = engine._adapter_off() if base else contextlib.nullcontext()
    with torch.inference_mode(), off:
        mode = (base, engine._merged())
        step = (engine.graphs.start(input_ids, attention, positions, len(tokens) + 1, mode) if graphs
                else _EagerDecoder(engine.model).start(input_ids, attention, positions))
        out = [step.logits.clone()]
        for t in tokens:
            out.append(step.advance(torch.tensor([t], device="cuda")).clone())
    return torch.cat(out)


def test_graph_decoding_equals_eager(tiny_model: Path) -> None:
    """Graph replay computes eager decoding's logits step after step, reply after reply, as the reply moves into
    a wider window of cache slots (fp32; a Mistral-shaped model, which graphs serve). Compared on forced tokens:
    kernel order alone may flip a greedy near-tie."""
    from test_engine import _tiny_mistral
    from transformers import AutoTokenizer

    from llmclone.models.torch_engine import TorchEngine

    tok = AutoTokenizer.from_pretrained(tiny_model)
    engine = TorchEngine(_tiny_mistral().cuda(), tok, "cuda", context_tokens=512, graphs=True)
    generator = torch.Generator().manual_seed(1)
    for n in (280, 30, 240):  # 240 + 30 crosses the first window (256 slots) mid-reply
        ids = torch.randint(3, 400, (n,), generator=generator).tolist()
        forced = torch.randint(3, 400, (30,), generator=generator).tolist()
        graph, eager = _stepped(engine, ids, forced, True), _stepped(engine, ids, forced, False)
        assert engine.graphs.failed is None and engine.graphs.graphs  # graphs really served it
        torch.testing.assert_close(graph, eager, rtol=1e-4, atol=1e-4)
    assert sorted(engine.graphs.graphs[1, (False, False)].steps) == [256, 512]
    requests = [Request(torch.randint(3, 400, (n,), generator=generator).tolist(),
                        Sampling(temperature=0.9, seed=5, max_new_tokens=20, min_new_tokens=20)) for n in (50, 9)]
    assert [len(r) for r in engine.generate(requests)] == [20, 20]


def test_liger_kernels_give_the_plain_logits(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Liger's fused RMSNorm, RoPE and SwiGLU (chosen on a GPU where liger-kernel is installed) compute the
    logits of transformers' own layers, prefill and graph-decoded steps alike (fp32)."""
    pytest.importorskip("liger_kernel")
    from test_engine import _tiny_mistral
    from transformers import AutoTokenizer
    from transformers.models.mistral import modeling_mistral

    from llmclone.models import fused_kernels
    from llmclone.models.torch_engine import TorchEngine

    for name in ("apply_rotary_pos_emb", "MistralRMSNorm", "MistralMLP"):  # Liger swaps these module-wide
        monkeypatch.setattr(modeling_mistral, name, getattr(modeling_mistral, name))
    tok = AutoTokenizer.from_pretrained(tiny_model)
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 400, (300,), generator=generator).tolist()
    forced = torch.randint(3, 400, (20,), generator=generator).tolist()
    plain = TorchEngine(_tiny_mistral().cuda(), tok, "cuda", context_tokens=512, graphs=True)
    expected = _stepped(plain, ids, forced, True)
    cpu_ids = torch.tensor([ids[:50]])
    with torch.inference_mode():
        cpu_before = _tiny_mistral()(cpu_ids).logits
    model = _tiny_mistral().cuda()
    fused_kernels.apply(model)
    with torch.inference_mode():  # models built later, on the CPU, are still transformers' own
        torch.testing.assert_close(_tiny_mistral()(cpu_ids).logits, cpu_before, rtol=0, atol=0)
    assert getattr(model.model.norm, "casting_mode", None) == "llama"  # Liger's RMSNorm really is in place
    fused = TorchEngine(model, tok, "cuda", context_tokens=512, graphs=True)
    torch.testing.assert_close(_stepped(fused, ids, forced, True), expected, rtol=1e-4, atol=1e-4)
    assert fused.graphs.failed is None


@pytest.fixture(scope="module")
def mistral_clone(tiny_model: Path, example_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of a tiny Mistral-shaped model (graphs serve it, unlike Gemma's sliding layers)."""
    from test_engine import _tiny_mistral
    from transformers import AutoTokenizer

    from llmclone.config import TrainConfig
    from llmclone.training.trainer import train

    work = tmp_path_factory.mktemp("mistral")
    _tiny_mistral().save_pretrained(work / "model")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(work / "model")
    train(example_dataset, work / "clone", TrainConfig(model=str(work / "model"), max_steps=3, batch_tokens=512,
                                                       max_length=256, eval_steps=10**6, learning_rate=1e-2),
          quiet=True)
    return work / "clone"


def test_graphs_follow_the_adapter_switch(mistral_clone: Path) -> None:
    """A graph replays the kernels it captured: with the adapter switched off (base=True) or merged in, the
    logits must still be the base model's and the clone's."""
    from llmclone.clone import LLMClone
    from llmclone.models.cuda_graphs import GraphDecoder

    clone = LLMClone.load(mistral_clone, merge=False, device="cuda", load="fp32")
    engine = clone.engine
    engine.graphs = GraphDecoder(engine.model, 1024)
    ids = clone.chat_format.prompt(clone.tokenizer, HISTORIES[1])
    forced = clone.tokenizer("ну давай в субботу", add_special_tokens=False)["input_ids"]
    adapter, base = _stepped(engine, ids, forced, False), _stepped(engine, ids, forced, False, base=True)
    assert (adapter - base).abs().max() > 1e-2  # the adapter changes the logits well beyond the tolerance
    for _ in range(2):  # on, off, on, off: each state's own graph
        torch.testing.assert_close(_stepped(engine, ids, forced, True), adapter, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(_stepped(engine, ids, forced, True, base=True), base, rtol=1e-4, atol=1e-4)
    with clone.adapter_merged():
        torch.testing.assert_close(_stepped(engine, ids, forced, True), adapter, rtol=1e-3, atol=1e-3)
    assert engine.graphs.failed is None and len(engine.graphs.graphs) == 3  # on, off and merged


def test_qlora_clone_trains_in_fp16_and_loads_in_4bit(tiny_model: Path, example_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    from llmclone.clone import LLMClone
    from llmclone.config import TrainConfig
    from llmclone.training.trainer import train

    config = TrainConfig(model=str(tiny_model), quantize="4bit", precision="fp16", attention="sdpa", kernels="none",
                         max_steps=4, batch_tokens=512, max_length=256, eval_steps=10**6, logging_steps=1)
    train(example_dataset, tmp_path / "clone", config, quiet=True)
    losses = [__import__("json").loads(line).get("loss") for line in (tmp_path / "clone" / "metrics.jsonl").open()]
    assert [x for x in losses if x is not None] and all(x == x and x < 1e4 for x in losses if x is not None)
    clone = LLMClone.load(tmp_path / "clone")
    assert clone.runtime is not None and clone.runtime.four_bit and not clone.runtime.merge
    assert isinstance(clone.reply(HISTORIES[0], max_new_tokens=8), list)


def test_eval_batches_equal_one_case_at_a_time(tiny_clone: Path, example_dataset: Path, tmp_path: Path) -> None:
    from llmclone.config import ReplyConfig
    from llmclone.evaluation.evaluate import EvalOptions, evaluate

    runs = []
    for batch in (1, 6):
        reply = ReplyConfig(max_new_tokens=8, temperature=0, device="cuda", load="bf16")
        options = EvalOptions(limit=6, seed=3, reply=reply, progress=False, probe=False, batch=batch)
        runs.append(evaluate([tiny_clone], example_dataset, tmp_path / f"report{batch}", options)["clones"][0])
    one, batched = runs
    assert batched["perplexity"]["clone"] == pytest.approx(one["perplexity"]["clone"], rel=2e-2)  # bf16 batches
    assert batched["runtime"]["device"].startswith("cuda") and batched["runtime"]["dtype"] == "bf16"
