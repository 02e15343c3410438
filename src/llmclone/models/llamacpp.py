"""A faster reply engine for CPUs: llama.cpp (the `llama-cpp-python` package) on the clone exported to GGUF.

The clone is exported once (merged f16 weights, `llmclone export --gguf`), quantised (q8_0 by default) and
cached under `$LLMCLONE_HOME/gguf/`, keyed by the adapter's bytes. Prompts are the same token ids the torch
path builds (one chat format); llama.cpp keeps the KV cache of the previous call and reuses its longest
common prefix, so the next turn of a conversation only evaluates the new messages.

Lower precision changes the reply distribution slightly: `benchmarks/reply_latency.py` measures both the
speed and the held-out loss of each quantisation.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmclone.errors import UserError
from llmclone.models.base_models import home

QUANTS = {"f16": 1, "q8_0": 7, "q4_k_m": 15}  # llama_ftype values


def require() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise UserError("the llama.cpp engine needs the llama-cpp-python package: pip install llama-cpp-python "
                        "(it compiles llama.cpp, a few minutes), or use the default torch engine.") from None


def clone_gguf(clone_dir: str | Path, quant: str = "q8_0") -> Path:
    """The clone as a GGUF for llama.cpp, built on first use and cached."""
    from llmclone.export import export_gguf

    if quant not in QUANTS:
        raise UserError(f"unknown quantisation {quant!r}; use one of {', '.join(QUANTS)}.")
    clone_dir = Path(clone_dir)
    digest = hashlib.sha256((clone_dir / "clone.json").read_bytes())
    for f in sorted((clone_dir / "adapter").glob("*")):
        digest.update(f.read_bytes())
    out = home() / "gguf" / f"{clone_dir.name}-{digest.hexdigest()[:12]}-{quant}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out.parent) as work:
        f16 = Path(work) / "f16.gguf"
        export_gguf(clone_dir, f16)
        target = Path(work) / "out.gguf"
        if quant == "f16":
            f16.rename(target)
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

    def __init__(self, path: Path, n_ctx: int, threads: int | None = None) -> None:
        require()
        from llama_cpp import Llama

        with _quiet_stderr():
            self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads or os.cpu_count(), verbose=False,
                             logits_all=False)
        atexit.register(self.llm.close)  # before interpreter teardown, when llama.cpp's own finaliser fails

    def generate(self, ids: list[int], params: dict[str, Any], stop_ids: list[int],
                 should_stop: Callable[[list[int]], bool], on_token: Callable[[int], None] | None = None) -> list[int]:
        import torch

        temperature = params.get("temperature", 0) or 0.0
        self.llm.set_seed(int(torch.randint(0, 2**31 - 1, ()).item()))  # torch.manual_seed makes replies repeatable
        out: list[int] = []
        least = params.get("min_new_tokens") or 0

        def no_early_stop(_: Any, scores: Any) -> Any:  # as transformers' min_new_tokens: no stop token yet
            if len(out) < least:
                scores[stop_ids] = -float("inf")
            return scores

        for token in self.llm.generate(ids, temp=temperature, top_p=params.get("top_p", 1.0) if temperature else 1.0,
                                       top_k=0, min_p=0.0, repeat_penalty=params.get("repetition_penalty", 1.0),
                                       logits_processor=[no_early_stop] if least else None):
            if token in stop_ids:
                break
            out.append(token)
            if on_token is not None:
                on_token(token)
            if len(out) >= params["max_new_tokens"] or should_stop(out):
                break
        return out
