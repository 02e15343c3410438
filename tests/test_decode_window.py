"""The windowed decode attention (models/decode_window.py): a window covering the tokens held computes the
full cache's numbers; one that does not really cuts (so the equality is not the window being ignored)."""

from __future__ import annotations

import torch
from test_engine import _tiny_mistral

from llmclone.models import decode_window
from llmclone.models.cuda_graphs import _full_attention


def _steps(model: torch.nn.Module, slots: int | None, cache_tokens: int = 96) -> torch.Tensor:
    """Logits of a left-padded 2-row batch prefilled into a static cache, then 30 one-token steps."""
    from transformers import StaticCache

    cache = StaticCache(config=_full_attention(model.config, cache_tokens), max_cache_len=cache_tokens)
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 400, (2, 12), generator=generator)
    mask = torch.ones((2, cache_tokens), dtype=torch.long)
    mask[1, :5] = 0  # row 1 is padded: the mask, cut with the keys, must keep hiding its padding
    positions = (mask[:, :12].cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = [model(input_ids=ids, attention_mask=mask, position_ids=positions, cache_position=torch.arange(12),
                     past_key_values=cache, use_cache=True).logits[:, -1]]
        position = positions[:, -1:]
        for slot in range(12, 42):
            position = position + 1
            token = torch.randint(3, 400, (2, 1), generator=generator)
            with decode_window.window(slots):
                out.append(model(input_ids=token, attention_mask=mask, position_ids=position,
                                 cache_position=torch.tensor([slot]), past_key_values=cache,
                                 use_cache=True).logits[:, -1])
    return torch.stack(out)


def test_a_window_covering_the_tokens_held_changes_nothing() -> None:
    model = _tiny_mistral()
    full = _steps(model, None)
    assert decode_window.install(model) and model.config._attn_implementation == decode_window.NAME
    torch.testing.assert_close(_steps(model, None), full, rtol=0, atol=0)
    torch.testing.assert_close(_steps(model, 42), full, rtol=1e-4, atol=1e-5)  # exactly the slots in use (float sums)
    torch.testing.assert_close(_steps(model, 64), full, rtol=1e-4, atol=1e-5)
    short = _steps(model, 24)  # from slot 24 on, the newest tokens fall outside: the cut is real
    torch.testing.assert_close(short[:13], full[:13], rtol=1e-4, atol=1e-5)
    assert (short[14:] - full[14:]).abs().max() > 1e-2


def test_only_sdpa_models_are_switched() -> None:
    from transformers import MistralForCausalLM

    model = MistralForCausalLM._from_config(_tiny_mistral().config, attn_implementation="eager")
    assert not decode_window.install(model) and model.config._attn_implementation == "eager"
