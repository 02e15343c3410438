"""Exporting a clone: merged Hugging Face checkpoint, and an f16 GGUF that loads back with the same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmclone.clone import LLMClone
from llmclone.config import TrainConfig
from llmclone.errors import UserError
from llmclone.export import export_gguf, export_merged
from llmclone.training.trainer import train


def _last_logits(model: object, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0, -1]  # type: ignore[operator]


def test_merged_checkpoint_equals_clone(tiny_model: Path, example_dataset: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train(example_dataset, tmp_path / "clone", TrainConfig(model=str(tiny_model), max_steps=3, batch_tokens=512,
                                                           max_length=256, learning_rate=5e-2), quiet=True)
    export_merged(tmp_path / "clone", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    clone = LLMClone.load(tmp_path / "clone")
    ids = clone.chat_format.prompt(tokenizer, [{"role": "user", "content": "привет"}])
    torch.testing.assert_close(_last_logits(merged, ids), _last_logits(clone.model, ids), atol=1e-4, rtol=1e-4)
    assert "Clone: " in (tmp_path / "merged" / "llmclone-prompt.txt").read_text()
    assert json.loads((tmp_path / "merged" / "clone.json").read_text()) == clone.manifest
    with pytest.raises(UserError, match="already exists"):
        export_merged(tmp_path / "clone", tmp_path / "merged")
    with pytest.raises(UserError, match="this clone's base is 'gemma3_text'"):  # Gemma only from its GGUF
        export_gguf(tmp_path / "clone", tmp_path / "clone.gguf")
    assert not (tmp_path / "clone.gguf").exists()


@pytest.mark.slow
def test_gguf_of_embedded_clone_loads_back_with_the_same_predictions(embedded_home: Path, example_dataset: Path,
                                                                      tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    train(example_dataset, tmp_path / "clone", TrainConfig(max_steps=1, max_eval_samples=2, learning_rate=1e-3),
          quiet=True)
    out = export_gguf(tmp_path / "clone", tmp_path / "clone.gguf")
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="clone.gguf", dtype=torch.float32).eval()
    clone = LLMClone.load(tmp_path / "clone")
    ids = clone.chat_format.prompt(clone.tokenizer, [{"role": "user", "content": "привет! как дела?"}])
    ours, theirs = _last_logits(clone.model, ids), _last_logits(back, ids)
    assert (ours - theirs).abs().max() < 0.1  # f16 weights
    assert ours.topk(5).indices.tolist() == theirs.topk(5).indices.tolist()
    assert out.with_name("clone.gguf.prompt.txt").is_file()

    # the llama.cpp engine on the same clone: the GGUF is built once, cached, and predicts like the torch model
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is an optional engine")
    from llama_cpp import Llama

    from llmclone.models.llamacpp import clone_gguf

    fast = LLMClone.load(tmp_path / "clone", engine="llama.cpp", quant="f16", vocabulary="full")
    cached = clone_gguf(tmp_path / "clone", "f16")
    assert cached.parent == embedded_home / "gguf" and cached.stat().st_mode & 0o077 == 0
    llm = Llama(model_path=str(cached), n_ctx=256, logits_all=True, verbose=False)
    llm.eval(ids)
    cpp = torch.tensor(llm.scores[len(ids) - 1])
    assert cpp.topk(5).indices.tolist() == ours.topk(5).indices.tolist()
    streamed: list[str] = []
    greedy = fast.reply([{"role": "user", "content": "привет! как дела?"}], temperature=0, max_new_tokens=12,
                        on_message=streamed.append)
    assert greedy == streamed and all("User:" not in m for m in greedy)
    assert fast.reply([{"role": "user", "content": "привет! как дела?"}], temperature=0, max_new_tokens=12) == greedy
    # the same reply rules as the torch engine: min/max length, finish reason, no other person's line
    for engine in (fast, clone):
        fixed = engine.replies([[{"role": "user", "content": "ну что?"}]] * 2,
                               samplings=[{"temperature": 0, "max_new_tokens": 5, "min_new_tokens": 5}] * 2)
        assert all(r.completion_tokens == 5 and r.finish_reason == "length" for r in fixed)
        assert all(not m.startswith(("User:", "Clone:")) for r in fixed for m in r.messages)
    with pytest.raises(UserError, match="torch engine"):
        fast.reply([{"role": "user", "content": "hi"}], base=True)
    # the default: q8_0 with the shortlisted vocabulary; the same rows scored as the full f16 GGUF scores them
    q8 = LLMClone.load(tmp_path / "clone", engine="llama.cpp", quant="q8_0")
    listed = q8.engine.shortlist
    recorded = json.loads((tmp_path / "clone" / "vocabulary.json").read_text())
    assert len(recorded["likely_ids"]) == 32768  # the base model's likely tokens at the owner's turns
    assert listed is not None and {*recorded["token_ids"], *recorded["likely_ids"]} <= set(listed.full)
    assert q8.engine.llm.n_vocab() == len(listed) < 55_000
    assert Path(q8.engine.llm.model_path).stat().st_size < cached.stat().st_size * 0.35  # q8_0 alone: 0.54
    short16 = Llama(model_path=str(clone_gguf(tmp_path / "clone", "f16", q8.tokenizer)), n_ctx=256, logits_all=True,
                    verbose=False)
    assert short16.n_vocab() == len(listed)
    short = listed.to_short(ids)
    assert [listed.to_full(s) for s in short] == ids  # the prompt's tokens are all listed
    short16.eval(short)
    torch.testing.assert_close(torch.tensor(short16.scores[len(ids) - 1]), cpp[listed.full], atol=2e-2, rtol=0)
    replies = q8.reply([{"role": "user", "content": "hi"}], max_new_tokens=8)
    assert isinstance(replies, list) and all("User:" not in m for m in replies)

    # a reply in another chat replaces llama.cpp's context; the first chat's KV state is kept and resumed, and
    # its next turn is the reply a cold context gives
    q8.engine.forget()
    chat = [{"role": "user", "content": "привет! как дела?"}]
    first = q8.reply(chat, temperature=0, max_new_tokens=8)
    q8.reply([{"role": "user", "content": "what are you up to tonight?"}], temperature=0, max_new_tokens=8)
    assert len(q8.engine.conversations.saved) == 2
    chat += [{"role": "assistant", "content": "\n".join(first)}, {"role": "user", "content": "ну и?"}]
    earlier = listed.to_short(q8.chat_format.prompt(q8.tokenizer, chat[:1]))
    prompt = listed.to_short(q8.chat_format.prompt(q8.tokenizer, chat))
    evaluated: list[int] = []  # tokens per llama.cpp eval call: the first call is the prompt's part not cached
    llm_eval = q8.engine.llm.eval
    q8.engine.llm.eval = lambda tokens: (evaluated.append(len(tokens)), llm_eval(tokens))[1]
    resumed = q8.reply(chat, temperature=0, max_new_tokens=8)
    del q8.engine.llm.eval
    assert evaluated[0] <= len(prompt) - len(earlier)  # continued from the first chat's state, not from scratch
    assert len(q8.engine.conversations.saved) == 2  # the chat's newer state replaced its older one
    q8.engine.forget()
    assert q8.reply(chat, temperature=0, max_new_tokens=8) == resumed
    q8.engine.conversations.budget = 1  # over the memory budget: only the most recent chat is kept
    q8.reply([{"role": "user", "content": "hi"}], temperature=0, max_new_tokens=4)
    assert len(q8.engine.conversations.saved) == 1


def _tiny_family(family: str, vocab: int) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    shape = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1, rms_norm_eps=1e-6)
    config = {"llama": transformers.LlamaConfig(**shape, tie_word_embeddings=False),
              "mistral": transformers.MistralConfig(**shape, sliding_window=None),
              "qwen2": transformers.Qwen2Config(**shape, tie_word_embeddings=True),
              "qwen3": transformers.Qwen3Config(**shape, head_dim=32, tie_word_embeddings=False)}[family]
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_gguf_of_each_family_loads_back_in_llama_cpp(family: str, tiny_model: Path, tmp_path: Path) -> None:
    """The GGUF written from a Hugging Face checkpoint predicts in llama.cpp what torch predicts, and llama.cpp
    splits text into the tokenizer's own ids."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is an optional engine")
    from transformers import AutoTokenizer

    from llmclone.models.gguf_export import write_gguf

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = _tiny_family(family, len(tok))
    out = write_gguf(model, tok, {"kind": "hub"}, tmp_path / f"{family}.gguf")
    assert out.stat().st_mode & 0o077 == 0  # the owner's words: readable by the owner only
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=128, logits_all=True, verbose=False)
    text = "привет! как дела? ok see you at 8"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    llm.eval(ids)
    theirs = torch.tensor(llm.scores[: len(ids)])
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0]
    assert (ours - theirs).abs().max() < 0.02 * ours.abs().max()  # f16 weights
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() > 0.9


def test_gguf_export_refuses_an_unknown_architecture(tiny_model: Path, tmp_path: Path) -> None:
    import transformers
    from transformers import AutoTokenizer

    from llmclone.models.gguf_export import write_gguf

    config = transformers.GPT2Config(vocab_size=400, n_embd=32, n_layer=1, n_head=2)
    with pytest.raises(UserError, match="this clone's base is 'gpt2'"):
        write_gguf(transformers.GPT2LMHeadModel(config), AutoTokenizer.from_pretrained(tiny_model), {"kind": "hub"},
                   tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written
