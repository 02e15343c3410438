"""A 7B clone after training, on the GPU: reply latency, decode speed, eval, serving, 4-bit, and a T4 simulation.

    python benchmarks/gpu_inference.py --data DATASET_DIR [--parts setup,reply,eval,serve,4bit] [--out DIR]
    python benchmarks/gpu_inference.py --data DATASET_DIR --parts setup,cpu,t4

Mistral-7B architecture with random bf16 weights and a BPE trained on the dataset (the build of
benchmarks/train_gpu.py), and a QLoRA clone of it made by the trainer (`setup`: 2 steps). A history of about
280 tokens from the dataset's held-out chats; replies greedy with exactly 40 new tokens unless said otherwise.
Parts, each printing `RESULT {json}` and appending it to OUT/results.jsonl:
- reply: the clone loaded in bf16 with its adapter merged. Ours (CUDA graphs, the default on a GPU), ours with
  eager decoding (LLMCLONE_CUDA_GRAPHS=0), with the largest logit difference between the two over 40 forced
  tokens (bf16 rounding only), and `transformers` `generate()` on the same model: latency of 40 tokens, time
  to first token (a 1-token reply), single-stream decode tokens/s against the card's limit (bf16 weight
  bytes / 4.8 TB/s), and 16 conversations decoded together; the same with graphs over the whole static
  cache (as before models/decode_window.py) beside the windowed default.
- eval: `llmclone eval --limit 200` (evaluate(), batched) wall time with loading, against one case at a time
  (--batch 1) on the first 40 cases of the same set.
- serve: the OpenAI server (uvicorn on 127.0.0.1, the official route) under 1 and 16 concurrent conversations
  (64 tokens, temperature 0.8, a seed each): completion tokens/s and failed requests.
- 4bit: the same clone loaded as `--load auto` decides for a QLoRA clone (NF4 base, adapter apart).
- cpu: today's path before this change: fp32 on the CPU, merged adapter, `generate()` (16 threads).
- t4: in a subprocess capped at 15 GiB (torch.cuda.set_per_process_memory_fraction), a T4's settings forced
  (precision fp16, SDPA attention, no Liger), QLoRA training for 16 steps (tokens/s, peak memory, losses
  finite), then a reply with the machine reported as a T4 (capability 7.5, 15 GiB free) so that the
  runtime decides as on a T4. Not simulated: the T4's speed (its 320 GB/s and 65 TFLOP/s fp16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_gpu import build  # the same random-weight 7B

NEW_TOKENS = 40
HBM_BYTES_PER_S = 4.8e12  # H200 (shared/docs/performance.md)
T4_BYTES = 15 * 2**30


def emit(out: Path, part: str, result: dict[str, Any]) -> None:
    result = {"part": part, **result}
    print("RESULT " + json.dumps(result), flush=True)
    with open(out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")


def history(clone: Any, data: Path, tokens: int = 280) -> list[dict[str, str]]:
    turns: list[dict[str, str]] = []
    for line in (data / "eval.jsonl").read_text(encoding="utf-8").splitlines():
        turns += json.loads(line)["messages"]
        if len(clone.chat_format.prompt(clone.tokenizer, turns)) >= tokens:
            break
    while turns[-1]["role"] != "user":
        turns.pop()
    return turns


def timed(fn: Any, runs: int = 5) -> float:
    fn()  # warm-up (graph capture, allocator)
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def setup(data: Path, work: Path) -> tuple[Path, Path]:
    from llmclone.config import TrainConfig
    from llmclone.training.trainer import train

    model = build("mistral7b", data, work)
    clone = work / "clone"
    if not (clone / "clone.json").exists():
        quantize = "4bit" if _has_bnb() else None
        train(data, clone, TrainConfig(model=str(model), quantize=quantize, max_steps=2, eval_steps=10**6,
                                       save_steps=10**6, logging_steps=1), force=True, quiet=True)
    torch.cuda.empty_cache()
    return model, clone


def _has_bnb() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def reply_speed(clone: Any, turns: list[dict[str, str]], engine_label: str) -> dict[str, Any]:
    greedy = {"temperature": 0, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
    got = clone.replies([turns], samplings=[greedy])[0]
    latency = timed(lambda: clone.replies([turns], samplings=[greedy]))
    ttft = timed(lambda: clone.replies([turns], samplings=[{**greedy, "max_new_tokens": 1, "min_new_tokens": 1}]))
    long = {**greedy, "max_new_tokens": 256, "min_new_tokens": 256}
    long_got = clone.replies([turns], samplings=[long])[0]
    long_s = timed(lambda: clone.replies([turns], samplings=[long]), runs=3)
    decode = (long_got.completion_tokens - 1) / (long_s - ttft)
    return {"variant": engine_label, "prompt_tokens": got.prompt_tokens, "tokens": got.completion_tokens,
            "latency_s": latency, "ttft_s": ttft, "decode_tokens_per_s": decode}


def forced_logits(clone: Any, turns: list[dict[str, str]], graph: bool, steps: int = 40) -> Any:
    """Logits of the prefill and `steps` forced tokens, graph-decoded or eager (None where graphs refuse)."""
    from llmclone.models.torch_engine import _EagerDecoder

    ids = torch.tensor([clone.chat_format.prompt(clone.tokenizer, turns)], device=clone.runtime.device)
    attention, positions = torch.ones_like(ids), torch.arange(ids.shape[1], device=ids.device)[None]
    forced = torch.randint(3, 1000, (steps,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.inference_mode():
        step = (clone.engine.graphs.start(ids, attention, positions, steps + 1, (False, False)) if graph
                else _EagerDecoder(clone.model).start(ids, attention, positions))
        if step is None:  # graphs refused this model
            return None
        logits = [step.logits.clone()]
        for t in forced:
            logits.append(step.advance(torch.tensor([t], device=ids.device)).clone())
    return torch.cat(logits).float().cpu()


def graph_error(clone: Any, turns: list[dict[str, str]]) -> float:
    """Largest |logit| difference between graph and eager decoding over forced tokens (0 = same)."""
    graph = forced_logits(clone, turns, graph=True)
    return float("nan") if graph is None else float((graph - forced_logits(clone, turns, graph=False)).abs().max())


def part_reply(clone_dir: Path, data: Path, out: Path) -> Any:
    from llmclone.clone import LLMClone

    clone = LLMClone.load(clone_dir, load="bf16")
    turns = history(clone, data)
    weights = sum(p.numel() * p.element_size() for p in clone.model.parameters())
    limit = HBM_BYTES_PER_S / weights
    print(clone.runtime.describe(), f"; weights {weights / 2**30:.2f} GiB; limit {limit:.0f} tokens/s", flush=True)
    ours = reply_speed(clone, turns, "ours (CUDA graphs, the default)")
    ours.update(graphs_failed=getattr(clone.engine.graphs, "failed", "no graphs"), kernels=clone.runtime.kernels,
                max_logit_diff=graph_error(clone, turns) if clone.engine.graphs else float("nan"))
    emit(out, "reply", {**ours, "limit_tokens_per_s": limit, "share_of_limit": ours["decode_tokens_per_s"] / limit})
    graphs, clone.engine.graphs = clone.engine.graphs, None
    eager = reply_speed(clone, turns, "ours, eager decode (LLMCLONE_CUDA_GRAPHS=0)")
    emit(out, "reply", {**eager, "share_of_limit": eager["decode_tokens_per_s"] / limit})
    clone.engine.graphs = graphs

    tok, model = clone.tokenizer, clone.model
    ids = torch.tensor([clone.chat_format.prompt(tok, turns)], device=clone.runtime.device)

    def generate(n: int) -> None:
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)

    hf_latency, hf_ttft = timed(lambda: generate(NEW_TOKENS)), timed(lambda: generate(1))
    hf_long = timed(lambda: generate(256), runs=3)
    emit(out, "reply", {"variant": "transformers generate(), bf16", "tokens": NEW_TOKENS, "latency_s": hf_latency,
                        "ttft_s": hf_ttft, "decode_tokens_per_s": 255 / (hf_long - hf_ttft)})

    batch16(clone, data, out, "ours, 16 conversations in one batch")
    graphs, clone.engine.graphs = clone.engine.graphs, whole_cache(clone)
    whole = reply_speed(clone, turns, "ours, graphs over the whole cache (no windows)")
    emit(out, "reply", {**whole, "share_of_limit": whole["decode_tokens_per_s"] / limit})
    batch16(clone, data, out, "ours, 16 conversations in one batch, graphs over the whole cache")
    clone.engine.graphs = graphs
    emit(out, "memory", {"variant": "bf16 merged", "peak_gib": torch.cuda.max_memory_allocated() / 2**30})
    return clone


def batch16(clone: Any, data: Path, out: Path, label: str) -> None:
    histories = [history(clone, data, 200 + 20 * i) for i in range(16)]
    sampled = [{"temperature": 0.8, "seed": i, "max_new_tokens": 64, "min_new_tokens": 64} for i in range(16)]
    clone.replies(histories, samplings=sampled)
    torch.cuda.synchronize()
    start = time.perf_counter()
    got = clone.replies(histories, samplings=sampled)
    seconds = time.perf_counter() - start
    emit(out, "reply", {"variant": label, "tokens": sum(r.completion_tokens for r in got), "latency_s": seconds,
                        "tokens_per_s": sum(r.completion_tokens for r in got) / seconds})


def whole_cache(clone: Any) -> Any:
    """Graphs as before models/decode_window.py: one window, the whole static cache."""
    from llmclone.models.cuda_graphs import GraphDecoder

    cache = clone.engine.graphs.cache_tokens
    return GraphDecoder(clone.model, cache, smallest_window=cache)


def part_steps(clone: Any, data: Path, out: Path) -> None:
    """Where a decode step's time goes: one graph step alone (rows 1 and 16; windowed, and over the whole
    cache), one eager step, the sampler, and whole replies profiled (GPU busy time against wall time)."""
    from llmclone.models.cuda_graphs import GraphDecoder
    from llmclone.models.engine import Request, Sampling
    from llmclone.models.torch_engine import MAX_REPLY_TOKENS, _Chooser, _EagerDecoder

    dev = clone.runtime.device
    prompt = clone.chat_format.prompt(clone.tokenizer, history(clone, data))
    print("attention:", getattr(clone.model.config, "_attn_implementation", "?"), flush=True)
    cache = clone.engine.context_tokens + MAX_REPLY_TOKENS
    decoder, whole = GraphDecoder(clone.model, cache), GraphDecoder(clone.model, cache, smallest_window=cache)
    for rows in (1, 16):
        ids = torch.tensor([prompt] * rows, device=dev)
        attention = torch.ones_like(ids)
        positions = (attention.cumsum(-1) - 1)
        token = torch.full((rows,), 5, device=dev)
        with torch.inference_mode():
            replays = []
            for graphs in (decoder, whole):  # 7 x 20 steps after the prompt: within one window
                graph = graphs.start(ids, attention, positions, 256, "steps")
                replays.append(timed(lambda g=graph, t=token: [g.advance(t) for _ in range(20)]) / 20 if graph
                               else float("nan"))
            eager = _EagerDecoder(clone.model).start(ids, attention, positions)
            step = timed(lambda e=eager, t=token: [e.advance(t) for _ in range(10)], runs=2) / 10
            for label, sampling in (("greedy", Sampling(temperature=0)), ("sampled", Sampling(temperature=0.8))):
                requests = [Request(prompt, sampling) for _ in range(rows)]
                chooser = _Chooser(requests, [prompt] * rows, dev, clone.engine._vocab(), 128)
                logits = eager.logits
                choose = timed(lambda c=chooser, x=logits: [c.choose(x, n) for n in range(20)]) / 20
                emit(out, "steps", {"variant": f"rows {rows}: sampler {label}", "seconds": choose})
        emit(out, "steps", {"variant": f"rows {rows}: graph step", "seconds": replays[0],
                            "windows": decoder.windows, "graphs_failed": decoder.failed})
        emit(out, "steps", {"variant": f"rows {rows}: graph step over the whole cache", "seconds": replays[1]})
        emit(out, "steps", {"variant": f"rows {rows}: eager step", "seconds": step})
    from torch.profiler import ProfilerActivity, profile

    turns = history(clone, data)
    for label, sampling in (("greedy", {"temperature": 0}), ("sampled", {"temperature": 0.8, "seed": 1})):
        settings = {**sampling, "max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
        clone.replies([turns], samplings=[settings])
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            clone.replies([turns], samplings=[settings])
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
        events = prof.key_averages()
        busy = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e6
        emit(out, "steps", {"variant": f"rows 1: a {label} reply of {NEW_TOKENS} tokens, profiled", "wall_s": wall,
                            "gpu_busy_s": busy})
        print(events.table(sort_by="cuda_time_total", row_limit=10, max_name_column_width=70), flush=True)


def part_eval(clone_dir: Path, data: Path, out: Path) -> None:
    from llmclone.config import ReplyConfig
    from llmclone.evaluation.evaluate import EvalOptions, evaluate

    for limit, batch in ((200, None), (40, 1), (40, None)):
        start = time.perf_counter()
        report = evaluate([clone_dir], data, out / f"eval-{limit}-{batch}",
                          EvalOptions(limit=limit, progress=False, batch=batch, reply=ReplyConfig(load="bf16")))
        seconds = time.perf_counter() - start
        c = report["clones"][0]
        emit(out, "eval", {"variant": f"--limit {limit} --batch {batch or 'auto (16)'}", "seconds": seconds,
                           "per_case_s": seconds / limit, "ppl": c["perplexity"]["clone"],
                           "base_ppl": c["perplexity"]["base"], "runtime": c["runtime"]})


def part_serve(clone: Any, out: Path) -> None:
    import asyncio
    import threading

    import httpx
    import uvicorn

    from llmclone.serving.openai_api import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(clone), host="127.0.0.1", port=8765, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    words = ["so", "what", "are", "you", "doing", "this", "weekend,", "want", "to", "grab", "dinner", "or", "something"]

    async def one(client: httpx.AsyncClient, i: int) -> int:
        body = {"model": "clone", "max_tokens": 64, "temperature": 0.8, "seed": i,
                "messages": [{"role": "user", "content": " ".join(words[i % 5:] * 4)}]}
        r = await client.post("http://127.0.0.1:8765/v1/chat/completions", json=body, timeout=600)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    async def load(concurrent: int, rounds: int) -> tuple[int, float, int]:
        async with httpx.AsyncClient() as client:
            start = time.perf_counter()
            tokens = failed = 0
            for r in range(rounds):
                got = await asyncio.gather(*(one(client, r * concurrent + i) for i in range(concurrent)),
                                           return_exceptions=True)
                failed += sum(isinstance(g, BaseException) for g in got)
                tokens += sum(g for g in got if isinstance(g, int))
            return tokens, time.perf_counter() - start, failed

    asyncio.run(load(4, 1))  # warm-up: graphs of small batches
    rates = {}
    for concurrent, rounds in ((1, 4), (16, 2)):
        tokens, seconds, failed = asyncio.run(load(concurrent, rounds))
        rates[concurrent] = tokens / seconds
        emit(out, "serve", {"variant": f"{concurrent} concurrent", "requests": concurrent * rounds, "tokens": tokens,
                            "seconds": seconds, "tokens_per_s": tokens / seconds, "failed": failed})
    emit(out, "serve", {"variant": "16 / 1", "ratio": rates[16] / rates[1]})
    server.should_exit = True


def part_4bit(clone_dir: Path, data: Path, out: Path) -> None:
    from llmclone.clone import LLMClone

    torch.cuda.reset_peak_memory_stats()
    clone = LLMClone.load(clone_dir)  # --load auto
    print(clone.runtime.describe(), flush=True)
    result = reply_speed(clone, history(clone, data), "ours, --load auto (4-bit NF4, adapter apart)")
    result.update(graphs_failed=getattr(clone.engine.graphs, "failed", "no graphs"), runtime=clone.runtime.to_json(),
                  peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    emit(out, "reply", result)


def part_kernels(clone_dir: Path, data: Path, out: Path, child: bool = False) -> None:
    """Liger's fused kernels against transformers' layers, each in its own process (Liger swaps the family's
    functions process-wide), alternated twice so that neither order nor warm-up favours one."""
    if child:
        from llmclone.clone import LLMClone

        clone = LLMClone.load(clone_dir, load="bf16")
        turns = history(clone, data)
        weights = sum(p.numel() * p.element_size() for p in clone.model.parameters())
        speed = reply_speed(clone, turns, f"ours, kernels {clone.runtime.kernels}")
        speed["share_of_limit"] = speed["decode_tokens_per_s"] * weights / HBM_BYTES_PER_S
        emit(out, "kernels", speed)
        torch.save(forced_logits(clone, turns, graph=True), clone_dir.parent / f"logits-{clone.runtime.kernels}.pt")
        return
    for _ in range(2):
        for kernels in ("none", "auto"):
            subprocess.run([sys.executable, __file__, "--data", str(data), "--work", str(clone_dir.parent),
                            "--out", str(out), "--parts", "kernels-child"], check=True,
                           env={**os.environ, "LLMCLONE_KERNELS": kernels})
    liger, plain = (torch.load(clone_dir.parent / f"logits-{k}.pt") for k in ("liger", "none"))
    emit(out, "kernels", {"variant": "Liger against transformers' layers, 40 forced tokens (bf16)",
                          "max_logit_diff": float((liger - plain).abs().max())})


def part_cpu(model_dir: Path, clone_dir: Path, data: Path, out: Path) -> None:
    """The path before this change: LLMClone loaded the base in fp32 with no device; generate() on the CPU."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(min(16, os.cpu_count() or 1))
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(clone_dir / "adapter")).merge_and_unload().eval()
    load_s = time.perf_counter() - start
    from transformers import AutoTokenizer

    from llmclone.manifest import read_manifest
    from llmclone.models.chat_format import ChatFormat

    tok = AutoTokenizer.from_pretrained(model_dir)
    fmt = ChatFormat.from_json(read_manifest(clone_dir)["chat_format"])

    class View:  # what history() reads
        chat_format, tokenizer = fmt, tok

    ids = torch.tensor([fmt.prompt(tok, history(View, data))])

    def generate(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        return time.perf_counter() - start

    ttft = generate(1)
    latency = generate(NEW_TOKENS)
    emit(out, "reply", {"variant": "before: CPU fp32, generate()", "tokens": NEW_TOKENS, "latency_s": latency,
                        "ttft_s": ttft, "decode_tokens_per_s": (NEW_TOKENS - 1) / (latency - ttft), "load_s": load_s,
                        "threads": torch.get_num_threads()})


def part_t4(model_dir: Path, data: Path, out: Path, work: Path) -> None:
    """Runs in its own process: the memory cap is per process."""
    from dataclasses import replace

    from llmclone.clone import LLMClone
    from llmclone.config import TrainConfig
    from llmclone.models import runtime
    from llmclone.training.trainer import train

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(T4_BYTES / total)
    clone_dir = work / "t4-clone"
    config = TrainConfig(model=str(model_dir), quantize="4bit", precision="fp16", attention="sdpa", kernels="none",
                         max_steps=16, eval_steps=10**6, save_steps=10**6, logging_steps=1)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    manifest = train(data, clone_dir, config, force=True, quiet=True)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (clone_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in rows if "loss" in r]
    tokens = max((r.get("num_tokens", 0) for r in rows), default=0)
    emit(out, "t4", {"variant": "QLoRA training, fp16, sdpa, no Liger, 15 GiB cap", "steps": len(losses),
                     "tokens": tokens, "seconds_with_load": seconds, "tokens_per_s_with_load": tokens / seconds,
                     "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "losses": [round(x, 3) for x in losses],
                     "finite": all(x == x and abs(x) != float("inf") for x in losses),
                     "precision": (manifest.get("training") or {}).get("precision")})
    del manifest
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    real = runtime.machine

    def t4() -> runtime.Machine:
        found = real()
        gpu = replace(found.gpus[0], name="Tesla T4 (simulated)", capability=(7, 5), free_bytes=T4_BYTES,
                      total_bytes=T4_BYTES)
        return replace(found, gpus=(gpu,))

    runtime.machine = t4
    clone = LLMClone.load(clone_dir)
    print(clone.runtime.describe(), flush=True)
    result = reply_speed(clone, history(clone, data), "T4 sim: reply, --load auto")
    result.update(runtime=clone.runtime.to_json(), graphs_failed=getattr(clone.engine.graphs, "failed", "no graphs"),
                  peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    emit(out, "t4", result)


def table(out: Path) -> None:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    print(f"\n{'part':<7} {'variant':<48} {'latency s':>9} {'TTFT s':>7} {'tok/s':>8}  other")
    for r in rows:
        rate = r.get("decode_tokens_per_s") or r.get("tokens_per_s")
        other = {k: v for k, v in r.items() if k in ("share_of_limit", "seconds", "per_case_s", "failed", "ratio",
                                                      "peak_gib", "graphs_failed", "finite", "tokens",
                                                      "max_logit_diff", "liger_logit_diff", "kernels", "wall_s",
                                                      "gpu_busy_s")}
        print(f"{r['part']:<7} {r.get('variant', ''):<48} {r.get('latency_s', float('nan')):>9.3f} "
              f"{r.get('ttft_s', float('nan')):>7.3f} {rate or float('nan'):>8.1f}  {json.dumps(other)}")
    by = {r.get("variant"): r for r in rows}
    ours, before = by.get("ours (CUDA graphs, the default)"), by.get("before: CPU fp32, generate()")
    hf = by.get("transformers generate(), bf16")
    if ours and before:
        print(f"reply latency, before / ours: {before['latency_s'] / ours['latency_s']:.1f}x (target >= 50x)")
    if ours and hf:
        print(f"reply latency, generate() bf16 / ours: {hf['latency_s'] / ours['latency_s']:.2f}x")
    if ours:
        print(f"single-stream decode: {ours['share_of_limit']:.0%} of the card's limit (target >= 40%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--parts", default="setup,reply,eval,serve,4bit")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_inference"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu_inference/out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    if parts == ["t4-child"]:
        part_t4(build("mistral7b", args.data, args.work), args.data, args.out, args.work)
        return
    model_dir, clone_dir = setup(args.data, args.work)
    if parts == ["kernels-child"]:
        part_kernels(clone_dir, args.data, args.out, child=True)
        return
    clone = None
    for part in parts:
        started = time.perf_counter()
        try:
            if part == "reply":
                clone = part_reply(clone_dir, args.data, args.out)
            elif part == "steps":
                from llmclone.clone import LLMClone

                part_steps(clone or LLMClone.load(clone_dir, load="bf16"), args.data, args.out)
            elif part == "eval":
                part_eval(clone_dir, args.data, args.out)
            elif part == "serve":
                from llmclone.clone import LLMClone

                part_serve(clone or LLMClone.load(clone_dir, load="bf16"), args.out)
            elif part == "4bit":
                clone = None
                torch.cuda.empty_cache()
                part_4bit(clone_dir, args.data, args.out)
            elif part == "cpu":
                part_cpu(model_dir, clone_dir, args.data, args.out)
            elif part == "kernels":
                part_kernels(clone_dir, args.data, args.out)
            elif part == "t4":
                subprocess.run([sys.executable, __file__, "--data", str(args.data), "--work", str(args.work),
                                "--out", str(args.out), "--parts", "t4-child"], check=True)
        except Exception as err:  # one part failing leaves the others' numbers
            import traceback

            traceback.print_exc()
            emit(args.out, part, {"variant": "failed", "error": f"{type(err).__name__}: {err}"[:500]})
        print(f"[{part}: {time.perf_counter() - started:.0f} s]", flush=True)
    table(args.out)


if __name__ == "__main__":
    main()
