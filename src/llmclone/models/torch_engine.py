"""The torch reply engine: a transformers model on a CPU or GPU, several requests decoded in one batch.

Prompts are left-padded into one batch (position ids count real tokens only, so a padded row computes what it
would alone), prefilled once, then decoded a token per step for every row. Each row has its own sampling
settings and its own random generator seeded per request, so a reply does not depend on what else was in the
batch. On a GPU the decode step runs as a captured CUDA graph over a static KV cache (models/cuda_graphs.py;
LLMCLONE_CUDA_GRAPHS=0 turns them off): a 7B model's step is ~700 small kernels, whose launches cost more
than reading the weights.

`score` is the batched counterpart of `reply_loss` (models/scoring.py): summed cross-entropy of given tokens.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any

from llmclone.models.engine import Request

log = logging.getLogger("llmclone.engine")
# transformers >= 5.24 renames past_key_values to cache; older versions (4.56 up) know only the old name
warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated.*", category=FutureWarning)
MAX_REPLY_TOKENS = 512  # the KV cache keeps room for this much reply after the longest prompt


class TorchEngine:
    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu", context_tokens: int = 1024,
                 graphs: bool | None = None, max_batch: int = 16) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.context_tokens = context_tokens
        self.max_batch = max_batch
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        if graphs is None:
            graphs = device.startswith("cuda") and os.environ.get("LLMCLONE_CUDA_GRAPHS", "1") != "0"
        self.graphs: Any = None
        if graphs:
            from llmclone.models.cuda_graphs import GraphDecoder

            self.graphs = GraphDecoder(model, context_tokens + MAX_REPLY_TOKENS)

    # -- generation ------------------------------------------------------------------------------------
    def generate(self, requests: list[Request], base: bool = False) -> list[list[int]]:
        """Reply token ids for each request, decoded `max_batch` at a time."""
        out: list[list[int]] = []
        for start in range(0, len(requests), self.max_batch):
            out += self._generate(requests[start:start + self.max_batch], base)
        return out

    def _generate(self, requests: list[Request], base: bool) -> list[list[int]]:
        import torch

        off = self._adapter_off() if base else contextlib.nullcontext()
        with torch.inference_mode(), off:
            return self._decode(requests, mode=(base, self._merged()))

    def _vocab(self) -> int:
        embeddings = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        return int(embeddings.weight.shape[0]) if embeddings is not None else int(self.model.config.vocab_size)

    def _merged(self) -> bool:
        """Whether a switchable adapter is merged into the weights now (clone.adapter_merged)."""
        if not hasattr(self, "_lora"):
            self._lora = next((m for m in self.model.modules() if hasattr(m, "merged_adapters")), None)
        return bool(self._lora is not None and self._lora.merged)

    def _decode(self, requests: list[Request], mode: Any = None) -> list[list[int]]:
        import torch

        dev = self.device
        rows = len(requests)
        prompts = [r.ids[-self.context_tokens:] for r in requests]
        width = max(map(len, prompts))
        limits = [min(r.sampling.max_new_tokens, MAX_REPLY_TOKENS) for r in requests]
        input_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((rows, width), dtype=torch.long)
        for i, ids in enumerate(prompts):
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            attention[i, width - len(ids):] = 1
        input_ids, attention = input_ids.to(dev), attention.to(dev)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        chooser = _Chooser(requests, prompts, dev, self._vocab(), max(limits))

        step = (self.graphs.start(input_ids, attention, positions, max(limits), mode) if self.graphs is not None
                else None)
        if step is None:
            step = _EagerDecoder(self.model).start(input_ids, attention, positions)
        logits = step.logits
        out: list[list[int]] = [[] for _ in requests]
        done = [False] * rows
        ahead = dev.startswith("cuda")
        for n in range(max(limits)):
            tokens = chooser.choose(logits, n)
            if ahead:  # queue the next step before reading this one's tokens: the GPU never waits for Python
                landed = _Landing(tokens)
                if n + 1 < max(limits):
                    logits = step.advance(tokens)
                next_ids = landed.tolist()
            else:  # on a CPU a step ahead is a whole forward pass wasted after the last token
                next_ids = tokens.tolist()
            for i, r in enumerate(requests):
                if done[i]:
                    continue
                token = next_ids[i]
                if token in r.stop_ids:
                    done[i] = True
                    continue
                out[i].append(token)
                if r.on_token is not None:
                    r.on_token(token)
                if len(out[i]) >= limits[i]:
                    done[i], r.finish_reason = True, "length"
                elif (r.should_stop is not None and r.should_stop(out[i])) or (r.cancelled is not None and r.cancelled()):
                    done[i] = True
            if all(done):
                break
            if not ahead:
                logits = step.advance(tokens)  # finished rows decode on unseen: no row depends on another
        return out

    def _adapter_off(self) -> Any:
        if not hasattr(self.model, "disable_adapter"):
            from llmclone.errors import UserError

            raise UserError("this clone was loaded with its adapter merged; load it with merge=False to compare with "
                            "the base model.")
        return self.model.disable_adapter()

    # -- scoring ---------------------------------------------------------------------------------------
    def score(self, items: list[tuple[list[int], list[bool]]], base: bool = False, batch: int = 8
              ) -> list[tuple[float, int]]:
        """Summed cross-entropy (nats) and count of the tokens marked True in each (ids, mask), batched."""
        import torch

        out: list[tuple[float, int]] = []
        off = self._adapter_off() if base else contextlib.nullcontext()
        with torch.inference_mode(), off:
            for start in range(0, len(items), batch):
                out += self._score(items[start:start + batch])
        return out

    def _score(self, items: list[tuple[list[int], list[bool]]]) -> list[tuple[float, int]]:
        import torch
        import torch.nn.functional as F

        width = max(len(ids) for ids, _ in items)
        # only positions from the first marked token on need logits; left padding lines the ends up
        first = [next((p for p, m in enumerate(mask) if m and p > 0), len(mask)) for _, mask in items]
        keep = max(len(ids) - f + 1 for (ids, _), f in zip(items, first, strict=True))
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        for i, (ids, _) in enumerate(items):
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            attention[i, width - len(ids):] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=False,
                            logits_to_keep=keep).logits.float()
        results = []
        for i, (ids, mask) in enumerate(items):
            marked = [p for p, m in enumerate(mask) if m and p > 0]
            if not marked:
                results.append((0.0, 0))
                continue
            # token p is predicted by the logits at p - 1; the kept window is the last `keep` positions
            rows = torch.tensor([p - 1 - len(ids) + keep for p in marked], device=logits.device)
            target = torch.tensor([ids[p] for p in marked], device=logits.device)
            results.append((F.cross_entropy(logits[i, rows], target, reduction="sum").item(), len(marked)))
        return results


class _Landing:
    """A step's tokens copied to pinned host memory behind the work queued so far, read without waiting for
    what is queued after them."""

    def __init__(self, tokens: Any) -> None:
        import torch

        self.host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        self.host.copy_(tokens, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()

    def tolist(self) -> list[int]:
        self.event.synchronize()
        return self.host.tolist()


class _EagerDecoder:
    """Prefill and decode with transformers' dynamic KV cache (CPUs, and GPUs where graphs are off)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def start(self, input_ids: Any, attention: Any, positions: Any) -> _EagerDecoder:
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.attention, self.positions = attention, positions[:, -1:]
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.logits = out.logits[:, -1].float()
        return self

    def advance(self, tokens: Any) -> Any:
        import torch

        self.attention = torch.cat([self.attention, self.attention.new_ones((self.attention.size(0), 1))], dim=1)
        self.positions = self.positions + 1
        out = self.model(input_ids=tokens[:, None], attention_mask=self.attention, position_ids=self.positions,
                         past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1].float()


class _Chooser:
    """Next-token choice for every row at once, each with its own settings: repetition penalty over the row's
    prompt and reply, no stop id before the minimum length, then greedy or temperature + nucleus sampling.

    A fixed number of tensor operations per step whatever the batch size, and no host-to-device copy: the
    settings, the tokens seen and each row's uniform draws (from the row's own seeded generator, drawn once
    per reply) live on the device, so a row's reply does not depend on what else is in the batch."""

    def __init__(self, requests: list[Request], prompts: list[list[int]], device: str, vocab: int,
                 max_new: int) -> None:
        import torch

        rows = len(requests)
        settings = [r.sampling for r in requests]

        def column(values: list[float]) -> Any:
            return torch.tensor(values, dtype=torch.float32, device=device)[:, None]

        self.penalty = column([s.repetition_penalty for s in settings])
        self.temperature = column([s.temperature if s.temperature > 0 else 1.0 for s in settings])
        self.top_p = column([s.top_p for s in settings])
        self.greedy = torch.tensor([s.temperature <= 0 for s in settings], device=device)
        self.all_greedy = all(s.temperature <= 0 for s in settings)  # then no sort: it is most of the sampler
        self.min_new = torch.tensor([s.min_new_tokens for s in settings], device=device)
        seen = torch.zeros((rows, vocab), dtype=torch.bool)
        stops = torch.zeros((rows, vocab), dtype=torch.bool)
        for i, (r, ids) in enumerate(zip(requests, prompts, strict=True)):
            seen[i, [t for t in ids if 0 <= t < vocab]] = True
            stops[i, [t for t in r.stop_ids if 0 <= t < vocab]] = True
        self.seen, self.stops = seen.to(device), stops.to(device)
        self.rows = torch.arange(rows, device=device)
        self.uniform = torch.zeros((rows, max_new), dtype=torch.float32)
        for i, s in enumerate(settings):
            if s.temperature > 0:
                g = torch.Generator()
                g.manual_seed(int(s.with_seed().seed or 0))
                self.uniform[i] = torch.rand(max_new, generator=g)
        self.uniform = self.uniform.to(device)

    def choose(self, logits: Any, step: int) -> Any:
        import torch

        logits = logits.float()
        penalized = torch.where(logits > 0, logits / self.penalty, logits * self.penalty)
        logits = torch.where(self.seen, penalized, logits)
        logits = logits.masked_fill(self.stops & (step < self.min_new)[:, None], -float("inf"))
        greedy = logits.argmax(-1)
        if self.all_greedy:
            self.seen[self.rows, greedy] = True
            return greedy
        scaled = logits / self.temperature
        ordered, order = scaled.sort(dim=-1)
        remove = ordered.softmax(-1).cumsum(-1) <= 1 - self.top_p
        remove[:, -1] = False  # keep at least the most likely token
        scaled = scaled.scatter(1, order, ordered.masked_fill(remove, -float("inf")))
        cdf = scaled.softmax(-1).cumsum(-1)
        draw = self.uniform[:, step:step + 1] * cdf[:, -1:]
        sampled = (cdf < draw).sum(-1).clamp(max=logits.size(-1) - 1)
        tokens = torch.where(self.greedy, greedy, sampled)
        self.seen[self.rows, tokens] = True
        return tokens
