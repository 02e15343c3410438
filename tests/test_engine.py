"""The reply engine seam: the torch engine decodes as transformers does, batched as alone, with the same stop
rules as the llama.cpp engine; batched scoring equals one case at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from llmclone.clone import LLMClone
from llmclone.errors import UserError
from llmclone.models.engine import Request, Sampling

HISTORIES = [[{"role": "user", "content": "привет! как дела?"}],
             [{"role": "user", "content": "пойдём в кино"}, {"role": "assistant", "content": "ахах))"},
              {"role": "user", "content": "ну так что, в субботу?"}],
             [{"role": "user", "content": "ок"}]]


@pytest.fixture(scope="module")
def clone(tiny_clone: Path) -> LLMClone:
    return LLMClone.load(tiny_clone, merge=False, device="cpu")


def test_greedy_equals_transformers_generate(clone: LLMClone) -> None:
    ids = clone.chat_format.prompt(clone.tokenizer, HISTORIES[1])
    stop = clone.chat_format.stop_ids(clone.tokenizer)
    ours = clone.engine.generate([Request(ids, Sampling(temperature=0, max_new_tokens=24), stop)])[0]
    with torch.inference_mode():
        theirs = clone.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24, repetition_penalty=1.1,
                                      eos_token_id=stop, pad_token_id=clone.tokenizer.pad_token_id)[0, len(ids):]
    theirs = theirs.tolist()
    if theirs and theirs[-1] in stop:
        theirs = theirs[:-1]
    assert ours == theirs and len(ours) > 3


def test_batched_decoding_equals_one_at_a_time(clone: LLMClone) -> None:
    settings = [{"temperature": 0, "max_new_tokens": 12}, {"temperature": 0.9, "seed": 7, "max_new_tokens": 20},
                {"temperature": 1.2, "top_p": 0.5, "seed": 8, "max_new_tokens": 6, "min_new_tokens": 6}]
    alone = [clone.replies([h], samplings=[s])[0] for h, s in zip(HISTORIES, settings, strict=True)]
    together = clone.replies(HISTORIES, samplings=settings)
    assert [r.messages for r in together] == [r.messages for r in alone]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in alone]
    assert together[2].completion_tokens == 6 and together[2].finish_reason == "length"
    again = clone.replies(HISTORIES, samplings=settings)  # seeded: the same again
    assert [r.messages for r in again] == [r.messages for r in together]


def test_batched_scoring_equals_one_at_a_time(clone: LLMClone) -> None:
    cases = [(h, reply) for h in HISTORIES for reply in ("норм", "ахах да))\nа ты как")]
    one = [clone.reply_loss(c, r) for c, r in cases]
    batched = clone.reply_losses(cases, batch=4)
    assert [n for _, n in batched] == [n for _, n in one]
    # A left-padded row of Gemma 3 in transformers 5.25 sums 21.988 nats where alone it sums 21.976 (SDPA and eager
    # alike): padding moves the sum by up to 6e-4 of itself. A wrong row or mask moves it by whole nats.
    assert all(abs(a - b) < 2e-3 * max(1.0, abs(b)) for (a, _), (b, _) in zip(batched, one, strict=True))
    base = clone.reply_losses(cases, base=True, batch=3)
    assert any(abs(a - b) > 1e-3 for (a, _), (b, _) in zip(base, one, strict=True))  # the adapter matters


def test_stop_rules_stop_ids_strings_and_streaming(clone: LLMClone) -> None:
    """A reply never carries the other person's line: generation stops at a stop string, the text is cut there,
    and streamed messages are exactly the returned ones."""
    fmt = clone.chat_format
    request, _ = clone._request(HISTORIES[0], Sampling(), None, False)
    assert request.should_stop is not None and fmt.stop_ids(clone.tokenizer) == request.stop_ids
    label = clone.tokenizer("ок\nUser: а ты", add_special_tokens=False)["input_ids"]
    assert request.should_stop(label)
    assert not request.should_stop(clone.tokenizer("ок и всё", add_special_tokens=False)["input_ids"])
    assert clone._cut("ок\nUser: а ты") == "ок"
    streamed: list[str] = []
    messages = clone.reply(HISTORIES[1], on_message=streamed.append, temperature=0.9, seed=3, max_new_tokens=40)
    assert streamed == messages


def test_bad_sampling_is_refused() -> None:
    for bad in ({"temperature": -1}, {"temperature": 100}, {"max_new_tokens": 0}, {"top_p": 0}):
        with pytest.raises(UserError):
            Sampling.of(bad)


def test_trimmed_prompt_keeps_its_frame(clone: LLMClone) -> None:
    """An over-long history loses its oldest turns; one over-long message keeps its end, and the prompt still
    starts with <bos> and ends with the clone's label."""
    tok, fmt = clone.tokenizer, clone.chat_format
    long = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"слово {i} " * 30} for i in range(200)]
    ids = fmt.prompt_within(tok, long, 1024)
    assert len(ids) <= 1024 and ids == fmt.prompt(tok, long[-len(long):][200 - _kept(fmt, tok, long, ids):])
    huge = [{"role": "user", "content": "а" * 100_000 + " конец"}]
    ids = fmt.prompt_within(tok, huge, 1024)
    text = tok.decode(ids)
    assert len(ids) <= 1024 and ids[0] == tok.bos_token_id and text.endswith("конец\nClone: ")


def _kept(fmt, tok, history, ids) -> int:
    for n in range(1, len(history) + 1):
        if fmt.prompt(tok, history[-n:]) == ids:
            return n
    return 0


def test_llamacpp_engine_is_for_the_cpu(tiny_clone: Path) -> None:
    """(The two engines' shared reply rules are checked on a real GGUF in test_export.py.)"""
    with pytest.raises(UserError, match=r"llama\.cpp engine runs on the CPU"):
        LLMClone.load(tiny_clone, engine="llama.cpp", device="cuda")


def _tiny_mistral() -> torch.nn.Module:
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4096, pad_token_id=0,
                           initializer_range=0.3)  # logits far apart: no near-ties for kernel order to flip
    return MistralForCausalLM(config).eval()


def _graph_and_eager_engines(monkeypatch: pytest.MonkeyPatch, capture: Any) -> tuple[Any, Any]:
    """Engines over one tiny Mistral on the CPU: one through the graph decoder with `capture` standing in for
    CUDA graph capture, one eager."""
    from llmclone.models import cuda_graphs
    from llmclone.models.torch_engine import TorchEngine

    monkeypatch.setattr(cuda_graphs._Graph, "_capture", capture)

    class Tok:
        pad_token_id, eos_token_id = 0, 2

    model = _tiny_mistral()
    return (TorchEngine(model, Tok(), "cpu", context_tokens=512, graphs=True),
            TorchEngine(model, Tok(), "cpu", context_tokens=512, graphs=False))


def test_static_cache_decoding_equals_eager_across_replies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA-graph decoder's bookkeeping, on a CPU: its static KV cache is reused reply after reply, and
    the capture's warm-up steps advance the cache's own counters; replies must still equal eager decoding.
    Capture is replaced by its warm-up plus an eager replay (the graph itself is checked in test_gpu.py)."""
    from llmclone.models import cuda_graphs, decode_window

    windows: list[int] = []

    def capture(self: cuda_graphs._Graph, slots: int) -> Any:
        def forward() -> Any:
            with decode_window.window(slots):
                return self._forward(input_ids=self.ids, attention_mask=self.mask, position_ids=self.position,
                                     cache_position=self.slot)

        for _ in range(3):
            forward()

        class Replay:
            out: Any = None

            def replay(self) -> None:
                self.out = forward()

        windows.append(slots)
        return Replay()

    static, eager = _graph_and_eager_engines(monkeypatch, capture)
    generator = torch.Generator().manual_seed(1)
    for lengths in ((280, 100, 30), (60,), (230, 20), (5, 300, 40)):
        requests = [Request(torch.randint(3, 400, (n,), generator=generator).tolist(),
                            Sampling(temperature=0, max_new_tokens=20, min_new_tokens=20)) for n in lengths]
        assert static.generate(requests) == eager.generate(requests)
    assert static.graphs.failed is None and len(static.graphs.graphs) == 3  # buckets of 1, 2 and 4 rows
    assert static.graphs.windows == [256, 512, 1024] and sorted(set(windows)) == [256, 512]  # 230 + 20 crossed 256
    for graph in static.graphs.graphs.values():  # what the causal mask reads must advance inside a graph
        assert all(isinstance(graph.cache.get_seq_length(i), torch.Tensor) for i in range(2))


def test_a_capture_failing_mid_reply_finishes_the_reply_uncaptured(monkeypatch: pytest.MonkeyPatch) -> None:
    """A capture that fails when the reply reaches a wider window (out of memory, say) neither fails the reply
    nor changes it: the rest runs the same step uncaptured, and later replies decode eagerly."""
    from llmclone.models import cuda_graphs

    def capture(self: cuda_graphs._Graph, slots: int) -> Any:
        if slots > 256:
            raise RuntimeError("CUDA out of memory")
        return cuda_graphs._Uncaptured(self, slots)  # stands in for the graph (test_gpu.py checks real ones)

    static, eager = _graph_and_eager_engines(monkeypatch, capture)
    ids = torch.randint(3, 400, (240,), generator=torch.Generator().manual_seed(2)).tolist()
    request = [Request(ids, Sampling(temperature=0, max_new_tokens=30, min_new_tokens=30))]
    assert static.generate(request) == eager.generate(request)  # 240 + 30 crosses into the 512 window
    assert static.graphs.failed == "RuntimeError: CUDA out of memory" and not static.graphs.graphs
    assert static.generate(request) == eager.generate(request)  # eager from now on


def test_graphs_refuse_short_sliding_windows() -> None:
    """Gemma's sliding layers (64 tokens here, 512 in Gemma 3) wrap around in Python: eager decoding, said."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from llmclone.models.cuda_graphs import GraphDecoder

    config = Gemma3TextConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=64)
    decoder = GraphDecoder(Gemma3ForCausalLM(config).eval(), 512)
    ids = torch.ones((1, 8), dtype=torch.long)
    assert decoder.start(ids, ids, torch.arange(8)[None], 4) is None
    assert decoder.failed == "NotImplementedError: sliding-window layers of 64 tokens"
