"""The training step's memory and speed levers give the same numbers as the plain computation.

- the chunked output-layer cross-entropy (no full logits) against `F.cross_entropy` on the logits;
- variable-length attention over packed samples against SDPA with the packed-row mask: the per-sample path
  (CPUs) as it is, and the Flash Attention path (CUDA-only) with PyTorch's `varlen_attn` replaced by a
  reference with the same contract, to test everything around it (boundaries, layouts, grouped heads,
  sliding window);
- offloaded gradient checkpointing and the LoRA dropout folded into lora_A against the plain computation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from llmclone.training import attention, loss


def _tiny_trainer(tiny_model: Path, example_dataset: Path, tmp_path: Path, plan_changes: dict | None = None,
                  **settings: object) -> tuple[Any, Any, list, dict[str, torch.Tensor]]:
    """The trainer on the tiny model and the example dataset: (session, trainer, train samples, first batch);
    `plan_changes` take a path this machine's plan would not."""
    from llmclone.config import TrainConfig
    from llmclone.models.base_models import resolve
    from llmclone.training.data import training_samples
    from llmclone.training.plan import plan_for
    from llmclone.training.trainer import TrainingSession

    config = TrainConfig(model=str(tiny_model), batch_tokens=512, max_length=256, max_steps=1, **settings)
    train_samples, _ = training_samples(example_dataset, config)
    base = resolve(config.model)
    plan = dataclasses.replace(plan_for(config, base), **(plan_changes or {}))
    session = TrainingSession(base, config, plan, tmp_path, quiet=True)
    trainer = session.trainer(train_samples, [])
    return session, trainer, train_samples, next(iter(trainer.get_train_dataloader()))


def _loss_and_grads(trainer: Any, model: Any, batch: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The training loss and the LoRA gradients, with the same dropout masks every call."""
    torch.manual_seed(0)
    value = trainer.compute_loss(model, dict(batch))
    lora = [p for p in model.parameters() if p.requires_grad]
    return value.detach(), [g.clone() for g in torch.autograd.grad(value, lora)]


def test_chunked_cross_entropy_matches_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loss, "CHUNK_BYTES", 4 * 50 * 7)  # 7 rows per chunk: several chunks and a ragged last one
    torch.manual_seed(0)
    weight = torch.randn(50, 16, dtype=torch.float32)
    hidden = torch.randn(23, 16, dtype=torch.float32, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    expected = F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")
    (expected_grad,) = torch.autograd.grad(expected * 0.5, hidden)
    got = loss.chunked_cross_entropy(hidden, weight, targets)
    (got_grad,) = torch.autograd.grad(got * 0.5, hidden)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_grad, expected_grad)


def test_trainer_loss_and_gradients_equal_with_and_without_chunking(tiny_model: Path, example_dataset: Path,
                                                                    tmp_path: Path) -> None:
    _, trainer, _, batch = _tiny_trainer(tiny_model, example_dataset, tmp_path)
    model = trainer.model.train()
    assert trainer.chunked_loss and loss.frozen_head(model) is not None  # the tied output layer is frozen: chunked
    chunked, chunked_grads = _loss_and_grads(trainer, model, batch)
    trainer.chunked_loss = False  # what TrainPlan(chunked_loss=False) sets: the full logits and cross-entropy
    plain, plain_grads = _loss_and_grads(trainer, model, batch)
    torch.testing.assert_close(chunked, plain)
    for a, b in zip(chunked_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=12))
def test_sequence_bounds_are_the_packed_samples(lengths: list[int]) -> None:
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    bounds, longest = attention.sequence_bounds(positions)
    assert bounds.tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()] and bounds.dtype == torch.int32
    assert longest == max(lengths)


def _reference_varlen(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_q: torch.Tensor,
                      cu_seq_k: torch.Tensor, max_q: int, max_k: int, *, scale: float | None = None,
                      window_size: tuple[int, int] = (-1, -1), enable_gqa: bool = False, **unused: object
                      ) -> torch.Tensor:
    """varlen_attn's contract, per sample with SDPA: (tokens, heads, dim), causal, optional left window."""
    assert window_size[1] == 0 and torch.equal(cu_seq_q, cu_seq_k)
    out = torch.empty_like(query)
    for start, end in zip(cu_seq_q[:-1].tolist(), cu_seq_q[1:].tolist(), strict=True):
        n = end - start
        allowed = torch.ones(n, n, dtype=torch.bool).tril()
        if window_size[0] >= 0:
            allowed &= ~torch.ones(n, n, dtype=torch.bool).tril(-window_size[0] - 1)
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
        out[start:end] = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale,
                                                        enable_gqa=enable_gqa).transpose(0, 1)
    return out


@pytest.mark.parametrize("kernel", ["per_sample", "flash"])
def test_varlen_attention_equals_the_packed_mask(tiny_model: Path, monkeypatch: pytest.MonkeyPatch,
                                                 kernel: str) -> None:
    from transformers import AutoModelForCausalLM

    if kernel == "flash":  # its contract, run on a CPU
        monkeypatch.setattr("torch.nn.attention.varlen.varlen_attn", _reference_varlen)
    varlen = attention.register(kernel)
    torch.manual_seed(0)
    # three samples, one longer than the tiny model's 64-token sliding window
    lengths = [90, 17, 41]
    ids = torch.randint(4, 300, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    outputs = {}
    for implementation in ("sdpa", varlen):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=implementation).eval()
        with torch.no_grad():
            outputs[implementation] = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    torch.testing.assert_close(outputs[varlen], outputs["sdpa"], atol=1e-5, rtol=1e-4)
    alone = AutoModelForCausalLM.from_pretrained(tiny_model).eval()(input_ids=ids[:, :90]).logits
    torch.testing.assert_close(outputs[varlen][:, :90], alone, atol=1e-5, rtol=1e-4)


def test_gpu_only_levers_are_off_here_and_refused_when_asked(tiny_model: Path) -> None:
    from llmclone.config import TrainConfig
    from llmclone.errors import UserError
    from llmclone.models.base_models import resolve
    from llmclone.training.plan import plan_for
    from llmclone.training.trainer import load_base_model

    assert not torch.cuda.is_available()  # this suite runs on CPUs
    base = resolve(str(tiny_model))
    plan = plan_for(TrainConfig(model=str(tiny_model), quantize="4bit"), base)
    assert (plan.device, plan.kernels, plan.varlen_kernel, plan.checkpointing, plan.optimizer) == (
        "cpu", "none", "per_sample", False, "adamw_torch") and not attention.flash_available()
    assert plan.batch_tokens == 1024  # the GPU's 8,192 only applies there
    with pytest.raises(UserError, match="kernels = 'liger' needs a CUDA GPU"):
        plan_for(TrainConfig(model=str(tiny_model), kernels="liger"), base)
    config = TrainConfig(model=str(tiny_model))
    model = load_base_model(base, config, plan_for(config, base))
    assert model.config._attn_implementation == attention.implementation_name("per_sample")  # on CPUs
    assert not any(p.requires_grad for p in model.parameters())


def test_offloaded_checkpointing_gives_the_same_gradients(tiny_model: Path, example_dataset: Path,
                                                          tmp_path: Path) -> None:
    """Layer inputs parked (here copied within host memory: the same chain of packs, prefetches and takes
    the GPU path runs) and recomputed in backward give the loss and LoRA gradients of no checkpointing."""
    from llmclone.training.offload import Offloader, enable

    _, trainer, _, batch = _tiny_trainer(tiny_model, example_dataset, tmp_path)
    model = trainer.model.train()  # the recompute replays the RNG state: the same dropout masks
    plain, plain_grads = _loss_and_grads(trainer, model, batch)
    offloader = Offloader(min_bytes=0)
    layers = enable(model, offloader)
    assert layers == model.config.num_hidden_layers
    for _ in range(2):  # twice: the second step must not chain onto the first step's parked inputs
        parked, parked_grads = _loss_and_grads(trainer, model, batch)
        torch.testing.assert_close(parked, plain)
        for a, b in zip(parked_grads, plain_grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert offloader.parked >= 2 * layers  # every layer's input went through the hooks, in both steps


def test_folded_lora_dropout_equals_peft_dropout(tiny_model: Path) -> None:
    """Folded into lora_A, the dropout draws the same masks as peft's: same loss and LoRA gradients.
    (The generator replay the GPU path uses; on a CPU the default masks come from PCG64, tested below.)"""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmclone.training.lora_dropout import fold_dropout

    torch.manual_seed(0)
    ids = torch.randint(0, 100, (1, 96))
    config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.3, init_lora_weights=False,  # B != 0: dropout shows
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    results = []
    for fold in (False, True):
        torch.manual_seed(1)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), config).train()
        if fold:
            assert fold_dropout(model, cpu_masks="torch") == 4 * model.config.num_hidden_layers
        torch.manual_seed(2)
        loss_value = model(input_ids=ids, labels=ids).loss
        lora = [p for p in model.parameters() if p.requires_grad]
        results.append((loss_value.detach(), torch.autograd.grad(loss_value, lora)))
        model.eval()  # no dropout outside training: the plain projection
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, model(input_ids=ids).logits)
    (plain, plain_grads), (folded, folded_grads) = results
    torch.testing.assert_close(folded, plain)
    for a, b in zip(folded_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b)
    torch.manual_seed(3)  # and the dropout really acts: another mask gives another loss
    assert not torch.allclose(results[0][0], model.train()(input_ids=ids, labels=ids).loss.detach())


def test_cpu_dropout_masks_are_bernoulli_and_replayed_in_backward() -> None:
    """The CPU masks (PCG64): drop rate p, repeatable under torch.manual_seed, and the backward pass redraws
    exactly the forward's mask: gradients equal autograd through the explicit dropped input."""
    from llmclone.training.lora_dropout import _DroppedProjection, cpu_keep_mask

    for p in (0.05, 0.3):
        keep = cpu_keep_mask(torch.Size((1000, 1000)), p, seed=7)
        assert abs((1 - keep.float().mean().item()) - p) < 5 * (p * (1 - p) / 1e6) ** 0.5  # 5 sigma
    x = torch.randn(3, 200, 64, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, 64, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 200, 8, dtype=torch.float64)
    torch.manual_seed(5)
    out = _DroppedProjection.apply(x, weight, 0.3, "pcg64")
    torch.manual_seed(5)
    keep = cpu_keep_mask(x.shape, 0.3, int(torch.randint(0, 2**62, ()).item()))  # the draw the forward made
    expected = (x * keep / 0.7) @ weight.T
    torch.testing.assert_close(out, expected)
    for got, want in zip(torch.autograd.grad(out, (x, weight), grad), torch.autograd.grad(expected, (x, weight), grad),
                         strict=True):
        torch.testing.assert_close(got, want)
    torch.manual_seed(5)
    torch.testing.assert_close(_DroppedProjection.apply(x, weight, 0.3, "pcg64"), out)  # same seed, same mask
    assert not torch.allclose(_DroppedProjection.apply(x, weight, 0.3, "pcg64"), out)  # the generator moved on: another


@pytest.mark.parametrize("masks", ["torch", "pcg64"])
def test_folded_lora_dropout_saves_less_for_backward(tiny_model: Path, masks: str) -> None:
    """The point of folding: q, k and v share one saved input instead of a dropped copy and a mask each (the
    GPU path, "torch"); the CPU path ("pcg64") also keeps each 1-byte mask, still saving most of it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmclone.training.lora_dropout import fold_dropout

    def saved_bytes(model: torch.nn.Module) -> int:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ids = torch.randint(0, model.config.vocab_size, (1, 256))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids).logits.sum().backward()
        return sum(seen.values())

    def lora_model() -> torch.nn.Module:
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        config = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                   "o_proj"])
        return get_peft_model(base, config).train()

    plain = saved_bytes(lora_model())
    folded_model = lora_model()
    assert fold_dropout(folded_model, masks) == 4 * folded_model.config.num_hidden_layers
    folded = saved_bytes(folded_model)
    hidden = 256 * folded_model.config.hidden_size * 4  # one fp32 hidden state of this batch
    # per layer: q, k, v, o each saved a dropped input (1 hidden) and a bool mask (1/4); now one shared input
    # (and on the CPU path the four masks, ~1 hidden)
    saved = 3 if masks == "torch" else 2
    assert plain - folded >= folded_model.config.num_hidden_layers * saved * hidden



def test_sampled_vocabulary_estimates_the_normaliser() -> None:
    """Over many draws, the sampled rows' weighted exp-logits average to the exact sum over the other
    tokens, with a uniform proposal and with a skewed one (where the base model's mass is)."""
    from llmclone.training.loss import SampledVocabulary

    torch.manual_seed(0)
    vocab, owner = 500, torch.arange(0, 500, 10)
    logits = torch.randn(vocab) * 2
    others = torch.ones(vocab, dtype=torch.bool)
    others[owner] = False
    exact = logits[others].exp().sum()
    identity = torch.eye(vocab)
    for proposal in (None, logits.softmax(0)):
        sampled = SampledVocabulary(owner, vocab, proposal, samples=64)
        estimates = []
        for _ in range(3000):
            rows, index, log_weights = sampled.draw(identity, owner[:5])
            assert index.tolist() == [0, 1, 2, 3, 4]  # targets point at their own rows
            ids = rows.argmax(1)  # the token each row is (identity "weights")
            assert torch.equal(ids[: owner.numel()], owner) and not torch.isin(ids[owner.numel():], owner).any()
            estimates.append((logits[ids[owner.numel():]] + log_weights[owner.numel():]).exp().sum())
        assert abs(torch.stack(estimates).mean() / exact - 1) < 0.03


def test_sampled_vocabulary_in_the_trainer(tiny_model: Path, example_dataset: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """loss_vocabulary = "sampled": the training loss is the cross-entropy over the owner's tokens' rows and
    the drawn rows (with their log-weights); evaluation is the exact cross-entropy over the whole vocabulary."""
    from llmclone.training.data import tokenized

    session, trainer, train_samples, batch = _tiny_trainer(tiny_model, example_dataset, tmp_path,
                                                           loss_vocabulary="sampled", lora_dropout=0.0)
    sampled = trainer.sampled_vocabulary
    encoded = tokenized(train_samples, session.tokenizer, session.chat_format, session.config.max_length)
    owner = {t for row, mask in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True)
             for t, m in zip(row, mask, strict=True) if m}
    assert sampled.owner_tokens.tolist() == sorted(owner)
    assert abs(sampled.q.sum().item() - 1) < 1e-9 and (sampled.q > 0).all()

    model = trainer.model
    targets = batch["labels"][0, 1:]
    keep = targets != -100
    with torch.no_grad():
        logits = model.eval()(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0, :-1][keep]
        full = F.cross_entropy(logits, targets[keep])
        torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), full, rtol=1e-4, atol=1e-5)
        drawn = []
        multinomial = torch.multinomial
        monkeypatch.setattr(torch, "multinomial", lambda *a, **k: drawn.append(multinomial(*a, **k)) or drawn[-1])
        loss_value = trainer.compute_loss(model.train(), dict(batch))
    ids = torch.cat([sampled.owner_tokens, sampled.others[drawn[0]]])
    log_weights = torch.cat([torch.zeros(sampled.owner_tokens.numel()), -(sampled.samples * sampled.q[drawn[0]]).log()])
    expected = F.cross_entropy(logits[:, ids] + log_weights.float(), torch.searchsorted(sampled.owner_tokens,
                                                                                     targets[keep]))
    torch.testing.assert_close(loss_value, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(loss_value, full)


def test_marginal_is_the_base_models_at_the_first_micro_batch(tiny_model: Path, example_dataset: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampled softmax's proposal comes from the first training micro-batch: the base model's (no adapter)
    mean next-token distribution at its owner positions (up to 512), computed a few rows at a time."""
    monkeypatch.setattr(loss, "MARGINAL_CHUNK_BYTES", 4 * 400 * 7)  # 7 rows of the 400-token vocabulary per chunk
    _, trainer, _, batch = _tiny_trainer(tiny_model, example_dataset, tmp_path, loss_vocabulary="sampled")
    sampled = trainer.sampled_vocabulary
    uniform = sampled.q.clone()
    trainer.compute_loss(trainer.model.eval(), dict(batch))
    assert trainer.owner_marginal is None  # evaluation does not count: only a training micro-batch
    trainer.compute_loss(trainer.model.train(), dict(batch))
    marginal = trainer.owner_marginal

    targets = batch["labels"][0, 1:]
    model = trainer.model.eval()
    with torch.no_grad(), model.disable_adapter():  # the packed row's attention as in training, no LoRA
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0, :-1]
    expected = logits[targets != -100][:512].softmax(-1).mean(0)
    assert (targets != -100).sum() > 7  # several chunks
    torch.testing.assert_close(marginal, expected, rtol=1e-4, atol=1e-6)
    favoured = expected.double()[sampled.others]
    torch.testing.assert_close(sampled.q, 0.5 * uniform + 0.5 * favoured / favoured.sum())
    trainer.compute_loss(trainer.model.train(), dict(batch))
    assert trainer.owner_marginal is marginal  # taken once


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU default")
def test_sampled_vocabulary_is_the_cpu_default_for_large_vocabularies(tiny_model: Path, example_dataset: Path,
                                                                      tmp_path: Path) -> None:
    """loss_vocabulary = "auto": sampled on a CPU when the vocabulary is large (Gemma's 262k), exact when it is
    small, on a GPU, or when asked for."""
    from llmclone.config import TrainConfig
    from llmclone.training.plan import loss_vocabulary_for

    assert loss_vocabulary_for(TrainConfig(), 262_144, cuda=False) == "sampled"
    assert loss_vocabulary_for(TrainConfig(), 262_144, cuda=True) == "full"
    assert loss_vocabulary_for(TrainConfig(), 32_000, cuda=False) == "full"
    assert loss_vocabulary_for(TrainConfig(loss_vocabulary="full"), 262_144, cuda=False) == "full"
    session, trainer, _, _ = _tiny_trainer(tiny_model, example_dataset, tmp_path / "small")
    assert session.plan.loss_vocabulary == "full" and not session.plan.record_marginal
    assert trainer.sampled_vocabulary is None and not trainer.wants_marginal  # the tiny model's 400 tokens
    _, trainer, _, _ = _tiny_trainer(tiny_model, example_dataset, tmp_path / "large",
                                     {"loss_vocabulary": "sampled", "record_marginal": True})
    assert trainer.sampled_vocabulary is not None and trainer.wants_marginal
