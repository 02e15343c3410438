"""A faster reply engine for CPUs: llama.cpp (the `llama-cpp-python` package) on the clone exported to GGUF.

The clone is exported once (merged f16 weights, `llmclone export --gguf`), quantised (q8_0 by default) and
cached under `$LLMCLONE_HOME/gguf/`, keyed by the adapter's bytes. Prompts are the same token ids the torch
path builds (one chat format); llama.cpp keeps the KV cache of the previous call and reuses its longest
common prefix, so the next turn of a conversation only evaluates the new messages; the KV caches of recent
conversations are kept too (`models/kv_states.py`), so that holds when the clone answers several chats in turn.

By default the GGUF's vocabulary is shortlisted (`models/shortlist.py`): the output layer scores the ~40k
tokens the clone uses instead of all 262k, which halves the bytes read per generated token.

Lower precision and the shortlist change the reply distribution slightly: `benchmarks/reply_latency.py`
measures both the speed and the held-out loss of each variant.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmclone.errors import UserError
from llmclone.models.base_models import home
from llmclone.models.engine import Request
from llmclone.models.vocabulary import read_vocabulary

QUANTS = {"f16": 1, "q8_0": 7, "q4_k_m": 15}  # llama_ftype values


def require() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise UserError("the llama.cpp engine needs the llama-cpp-python package: pip install llama-cpp-python "
                        "(it compiles llama.cpp, a few minutes), or use the default torch engine.") from None


def clone_gguf(clone_dir: str | Path, quant: str = "q8_0", tokenizer: Any = None) -> Path:
    """The clone as a GGUF for llama.cpp, built on first use and cached. With the clone's `tokenizer`, its
    vocabulary is shortlisted to the tokens the clone uses (`models/shortlist.py`)."""
    from llmclone.models.chat_format import ChatFormat
    from llmclone.models.gguf_export import merged_clone, write_gguf
    from llmclone.models.shortlist import clone_shortlist, write_shortlisted_gguf

    if quant not in QUANTS:
        raise UserError(f"unknown quantisation {quant!r}; use one of {', '.join(QUANTS)}.")
    clone_dir = Path(clone_dir)
    digest = hashlib.sha256((clone_dir / "clone.json").read_bytes())
    for f in sorted((clone_dir / "adapter").glob("*")):
        digest.update(f.read_bytes())
    stem = home() / "gguf" / f"{clone_dir.name}-{digest.hexdigest()[:12]}"
    keep = None
    if tokenizer is not None:
        chat_format = ChatFormat.from_json(json.loads((clone_dir / "clone.json").read_text())["chat_format"])
        keep = clone_shortlist(tokenizer, chat_format, *read_vocabulary(Path(clone_dir)))
    listed = f"-shortlist-{hashlib.sha256(json.dumps(keep).encode()).hexdigest()[:8]}" if keep else ""
    out = stem.with_name(f"{stem.name}-{quant}{listed}.gguf")
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    full16 = stem.with_name(f"{stem.name}-f16.gguf")  # a full f16 GGUF built before saves the export
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out.parent) as work:
        if full16.is_file():
            f16 = full16
        else:
            model, tok, manifest = merged_clone(clone_dir)
            f16 = write_gguf(model, tok, manifest.get("base_model", {}), Path(work) / "f16.gguf")
            del model
        if keep:
            f16 = write_shortlisted_gguf(f16, Path(work) / "short.gguf", keep)
        target = Path(work) / "out.gguf"
        if quant == "f16":
            f16.rename(target)  # a work file: the cached full f16 is `out` itself, returned above
        else:
            _quantize(f16, target, QUANTS[quant])
        os.chmod(target, 0o600)
        target.rename(out)
    return out


def _quantize(src: Path, dest: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    with _quiet_stderr():  # llama.cpp reports every tensor on the C stderr
        failed = llama_cpp.llama_model_quantize(str(src).encode(), str(dest).encode(), params)
    if failed:
        raise UserError(f"llama.cpp could not quantise {src}.")


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


class LlamaCppEngine:
    """Token ids in, token ids out, with the same sampling settings as the torch path."""

    def __init__(self, path: Path, n_ctx: int, tokenizer: Any, threads: int | None = None) -> None:
        require()
        self.context_tokens = n_ctx - 256
        from llama_cpp import Llama

        from llmclone.models.kv_states import ConversationStates
        from llmclone.models.shortlist import Shortlist, read_shortlist

        listed = read_shortlist(path)
        self.shortlist = Shortlist(listed, tokenizer) if listed is not None else None
        with _quiet_stderr():
            self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(), verbose=False,
                             logits_all=False)
        atexit.register(self.llm.close)  # before interpreter teardown, when llama.cpp's own finaliser fails
        self.conversations = ConversationStates(self.llm)

    def forget(self) -> None:
        """Drop every conversation's KV cache (the next reply is cold)."""
        self.conversations.saved.clear()
        self.llm.reset()

    def generate(self, requests: list[Request], base: bool = False) -> list[list[int]]:
        """One request after another (llama.cpp has one context; the KV caches of recent chats are kept)."""
        if base:
            raise UserError("the llama.cpp engine runs the merged clone only; use the torch engine to compare with the base.")
        return [self._generate(r) for r in requests]

    def _generate(self, request: Request) -> list[int]:
        s = request.sampling.with_seed()
        self.llm.set_seed(int(s.seed or 0))
        out: list[int] = []
        ids, stop_ids = request.ids, request.stop_ids
        listed = self.shortlist
        if listed is not None:  # the GGUF's positions; the caller keeps speaking full ids
            ids = listed.to_short(ids)
            stop_ids = [listed.position[i] for i in stop_ids if i in listed.position]
        room = self.llm.n_ctx() - 1  # prompt and reply share the context; the prompt keeps at least half of it
        ids = ids[-(room - min(s.max_new_tokens, room // 2)):]
        limit = min(s.max_new_tokens, room - len(ids))

        def no_early_stop(_: Any, scores: Any) -> Any:  # as transformers' min_new_tokens: no stop token yet
            if len(out) < s.min_new_tokens:
                scores[stop_ids] = -float("inf")
            return scores

        self.conversations.restore_best(ids)  # another chat's earlier turns may be kept: continue from them
        greedy = s.temperature <= 0
        for token in self.llm.generate(ids, temp=s.temperature, top_p=1.0 if greedy else s.top_p, top_k=0, min_p=0.0,
                                       repeat_penalty=s.repetition_penalty,
                                       logits_processor=[no_early_stop] if s.min_new_tokens else None):
            if token in stop_ids:
                break
            if listed is not None:
                token = listed.to_full(token)
            out.append(token)
            if request.on_token is not None:
                request.on_token(token)
            if len(out) >= limit:
                request.finish_reason = "length"
                break
            if (request.should_stop is not None and request.should_stop(out)) or (
                    request.cancelled is not None and request.cancelled()):
                break
        self.conversations.save(len(ids))
        return out
