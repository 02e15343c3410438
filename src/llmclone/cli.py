"""The `llmclone` command line: each command parses its options and calls one function elsewhere."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from llmclone import interrupts
from llmclone.errors import UserError

app = typer.Typer(
    name="llmclone",
    help="Turn your chat history into a language model that writes like you.\n\n"
    "Pipeline: ingest (export → dataset) → train (dataset → clone) → chat / reply / serve / export / eval / telegram. `llmclone demo` runs it all on the "
    "bundled example.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        from llmclone import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.command()
def ingest(
    exports: Annotated[list[Path], typer.Argument(help="Telegram Desktop JSON exports: result.json, its folder, or a .zip of it.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset directory to create.")],
    me: Annotated[str | None, typer.Option(help="Which sender is you: user id (user123 or 123) or display name. Default: the export's account.")] = None,
    groups: Annotated[bool, typer.Option("--groups", help="Also use group chats (often only your own messages are exported).")] = False,
    chat: Annotated[list[str] | None, typer.Option("--chat", help="Use only this chat (name or id); repeatable.")] = None,
    exclude_chat: Annotated[list[str] | None, typer.Option("--exclude-chat", help="Leave out this chat (name or id); repeatable.")] = None,
    since: Annotated[str | None, typer.Option(help="Only messages from this date on (YYYY-MM-DD).")] = None,
    until: Annotated[str | None, typer.Option(help="Only messages before this date (YYYY-MM-DD).")] = None,
    merge_gap: Annotated[int, typer.Option(help="Seconds between messages merged into one turn.")] = 300,
    session_gap: Annotated[int, typer.Option(help="Seconds of silence that start a new conversation.")] = 4 * 3600,
    max_context: Annotated[int, typer.Option(help="Context budget of one sample.")] = 256,
    context_unit: Annotated[str, typer.Option(help="Unit of --max-context: tokens (estimated) or chars.")] = "tokens",
    eval_fraction: Annotated[float, typer.Option(help="Latest share of your turns held out for evaluation.")] = 0.1,
    redact_file: Annotated[Path | None, typer.Option(help="Extra words to redact, one per line ('re:' for a regex).")] = None,
    drop_redacted: Annotated[bool, typer.Option("--drop-redacted", help="Drop samples containing words from --redact-file.")] = False,
    max_chat_messages: Annotated[int, typer.Option(help="Refuse a chat with more messages than this (it is held in memory whole).")] = 2_000_000,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing dataset directory.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the stats as JSON.")] = False,
) -> None:
    """Turn Telegram exports into a private training dataset (train.jsonl, eval.jsonl, stats.json)."""
    from llmclone.dataset.ingest import IngestOptions, summary
    from llmclone.dataset.ingest import ingest as run_ingest

    options = IngestOptions.of(
        me=me, groups=groups, chats=chat or [], exclude_chats=exclude_chat or [], since=since, until=until,
        merge_gap=merge_gap, session_gap=session_gap, max_context=max_context, context_unit=context_unit,
        eval_fraction=eval_fraction, redact_file=str(redact_file) if redact_file else None,
        drop_redacted=drop_redacted, max_chat_messages=max_chat_messages,
    )
    stats = run_ingest(exports, out, options, force=force, progress=not quiet and sys.stderr.isatty())
    if as_json:
        typer.echo(json.dumps(stats, ensure_ascii=False, indent=2))
    elif not quiet:
        typer.echo(summary(stats))
        typer.echo(f"dataset written to {out}")


@app.command()
def train(
    dataset: Annotated[Path, typer.Argument(help="Dataset directory made by llmclone ingest.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Clone directory to create.")],
    model: Annotated[str | None, typer.Option(help="Base model: 'embedded' (default, offline), a local checkpoint directory, a .gguf file, or a hub id.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with training settings (flags override it).")] = None,
    quantize: Annotated[str | None, typer.Option(help="'4bit' for QLoRA (bitsandbytes NF4 + double quantisation).")] = None,
    shard: Annotated[bool, typer.Option("--shard", help="Shard the model across the GPUs of `accelerate launch` / torchrun (FSDP), for a base larger than one GPU.")] = False,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many optimizer steps (overrides --epochs).")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the training samples.")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    lora_alpha: Annotated[float | None, typer.Option(help="LoRA alpha.")] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="Learning rate.")] = None,
    batch_tokens: Annotated[int | None, typer.Option(help="Tokens per micro-step (samples packed without padding).")] = None,
    all_linear: Annotated[bool, typer.Option("--all-linear", help="Put LoRA on every linear layer, not only q/k/v/o.")] = False,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    persona: Annotated[str | None, typer.Option(help="An instruct clone's system prompt: 'auto' (your name and languages), 'none', or the text.")] = None,
    contacts: Annotated[Path | None, typer.Option(help="TOML file of who each chat is to you ([[contact]] relation = \"mom\", chats = [\"telegram:123\"]).")] = None,
    no_memory: Annotated[bool, typer.Option("--no-memory", help="Train without recalled past exchanges in the prompts (and build no memory).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted training of this clone.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing clone directory.")] = False,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the merged settings and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Fine-tune a base model on your dataset (LoRA, or QLoRA with --quantize 4bit) into a clone directory."""
    from llmclone.config import load_config

    overrides = {"model": model, "quantize": quantize, "max_steps": max_steps, "epochs": epochs, "lora_r": lora_r,
                 "lora_alpha": lora_alpha, "learning_rate": learning_rate, "batch_tokens": batch_tokens, "seed": seed,
                 "persona": persona, "target_modules": "all-linear" if all_linear else None,
                 "sharding": "fsdp" if shard else None, "contacts": str(contacts) if contacts else None,
                 "memory": False if no_memory else None}
    settings = load_config(config, overrides)
    if print_config:
        from llmclone.config import settings_toml
        from llmclone.models.base_models import resolve
        from llmclone.training.plan import plan_for

        typer.echo(settings_toml("train", settings.model_dump(), plan_for(settings, resolve(settings.model)).to_json()))
        return
    from llmclone.training.trainer import Interrupted
    from llmclone.training.trainer import train as run_train

    try:
        manifest = run_train(dataset, out, settings, resume=resume, force=force, quiet=quiet)
    except Interrupted as stop:
        typer.echo(str(stop), err=True)
        raise SystemExit(130) from None
    if not manifest:  # a DDP worker: the main process reports
        return
    m = manifest["metrics"]
    if not quiet:
        typer.echo(f"clone written to {out}: {m['steps']} steps in {m['seconds']:.0f} s, train loss {m['train_loss']}, "
                   f"eval loss {m['eval_loss']}"
                   + (f" (on all {n} held-out samples)" if (n := manifest["evaluation"].get("final_samples")) else ""))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to put the demo's dataset and clone.")] = Path("llmclone-demo"),
    model: Annotated[str, typer.Option(help="Base model (default: the embedded one, offline).")] = "embedded",
    steps: Annotated[int | None, typer.Option(help="Training steps (default 24: a few minutes on a laptop CPU).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """The whole pipeline on the bundled example export: ingest, train a clone, compare its replies with the base model's."""
    from llmclone.demo import run_demo

    run_demo(out, model=model, steps=steps, quiet=quiet)


_ENGINE = typer.Option("--engine", help="'torch' (exact, default) or 'llama.cpp' (faster on a CPU, most for each next turn of a chat; 8-bit GGUF with a shortlisted vocabulary, built once; needs llama-cpp-python).")
_FULL_VOCABULARY = typer.Option("--full-vocabulary", help="With --engine llama.cpp: score all 262k tokens instead of the clone's shortlist (slower; the shortlist costs ~2% held-out loss).")


_DEVICE = typer.Option("--device", help="Where the clone runs: auto (a GPU if there is one), cpu, cuda or cuda:N.")
_LOAD = typer.Option("--load", help="Base weights: auto (4-bit NF4 for QLoRA clones or when 16-bit would not fit), 4bit, or bf16.")


_REPLY_CONFIG = typer.Option("--config", help="TOML file whose [reply] table says how the clone replies (flags override it).")


_CHAT = typer.Option("--chat", help="Answer as in this chat (its key from llmclone memory chats, or source:id): memory brings this contact's past and relation.")
_MEMORY = typer.Option("--memory", help="Recall past exchanges into the prompt: auto (as the clone was trained), on or off.")


def _reply_settings(config: Path | None, temperature: float | None = None, max_new_tokens: int | None = None,
                    engine: str | None = None, full_vocabulary: bool = False, device: str | None = None,
                    load: str | None = None, memory: str | None = None):
    """The [reply] table and the flags given, checked (impossible values refused before anything loads)."""
    from llmclone.config import load_reply_config

    return load_reply_config(config, {"temperature": temperature, "max_new_tokens": max_new_tokens, "engine": engine,
                                      "vocabulary": "full" if full_vocabulary else None, "device": device,
                                      "load": load, "memory": memory})


def _chat_key(chat: str | None) -> str | None:
    from llmclone.memory.contacts import key_of

    return key_of(chat) if chat else None


def _load_clone(clone: Path, settings):
    from llmclone.clone import LLMClone

    loaded = LLMClone.load(clone, settings)
    if loaded.runtime is not None:
        typer.echo(loaded.runtime.describe(), err=True)
    return loaded


@app.command()
def reply(
    clone: Annotated[Path, typer.Argument(help="Clone directory made by llmclone train.", show_default=False)],
    text: Annotated[str | None, typer.Argument(help="The message to answer (default: read from stdin).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {\"messages\": [...]} for scripts.")] = False,
    config: Annotated[Path | None, _REPLY_CONFIG] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (0 = greedy).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Longest reply, in tokens.")] = None,
    engine: Annotated[str | None, _ENGINE] = None,
    full_vocabulary: Annotated[bool, _FULL_VOCABULARY] = False,
    device: Annotated[str | None, _DEVICE] = None,
    load: Annotated[str | None, _LOAD] = None,
    chat: Annotated[str | None, _CHAT] = None,
    memory: Annotated[str | None, _MEMORY] = None,
) -> None:
    """The clone's answer to one message: one line per message it would send."""
    from llmclone.terminal import reply_once

    try:
        message = text if text is not None else sys.stdin.read().strip()
        message.encode("utf-8")  # the shell passes undecodable bytes as lone surrogates
    except UnicodeError:
        raise UserError("the message is not valid UTF-8 text; give it in UTF-8.") from None
    if not message.strip():
        raise UserError("no message to answer; give it as an argument or on stdin.")
    settings = _reply_settings(config, temperature, max_new_tokens, engine, full_vocabulary, device, load, memory)
    reply_once(_load_clone(clone, settings), message, as_json, sys.stdout, chat=_chat_key(chat))


@app.command()
def chat(
    clone: Annotated[Path, typer.Argument(help="Clone directory made by llmclone train.", show_default=False)],
    config: Annotated[Path | None, _REPLY_CONFIG] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (0 = greedy).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Longest reply, in tokens.")] = None,
    engine: Annotated[str | None, _ENGINE] = None,
    full_vocabulary: Annotated[bool, _FULL_VOCABULARY] = False,
    device: Annotated[str | None, _DEVICE] = None,
    load: Annotated[str | None, _LOAD] = None,
    chat: Annotated[str | None, _CHAT] = None,
    memory: Annotated[str | None, _MEMORY] = None,
) -> None:
    """Talk with your clone in the terminal (/reset, /regen, /exit; end a line with \\ to continue it)."""
    from llmclone.terminal import chat_loop

    settings = _reply_settings(config, temperature, max_new_tokens, engine, full_vocabulary, device, load, memory)
    loaded = _load_clone(clone, settings)
    name = ((loaded.manifest or {}).get("owner") or {}).get("name") or "clone"
    chat_loop(loaded, sys.stdin, sys.stdout, name=name.split()[0].lower(), chat=_chat_key(chat))


@app.command()
def serve(
    clone: Annotated[Path, typer.Argument(help="Clone directory made by llmclone train.", show_default=False)],
    host: Annotated[str, typer.Option(help="Address to listen on; keep 127.0.0.1 unless others must reach it.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="LLMCLONE_API_KEY", show_envvar=True, help="Require 'Authorization: Bearer KEY'.")] = None,
    config: Annotated[Path | None, _REPLY_CONFIG] = None,
    engine: Annotated[str | None, _ENGINE] = None,
    full_vocabulary: Annotated[bool, _FULL_VOCABULARY] = False,
    device: Annotated[str | None, _DEVICE] = None,
    load: Annotated[str | None, _LOAD] = None,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body accepted, in MB (larger: 413).", min=0.01)] = 4,
) -> None:
    """Serve the clone over an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health)."""
    from llmclone.serving.openai_api import serve as run_server

    settings = _reply_settings(config, engine=engine, full_vocabulary=full_vocabulary, device=device, load=load)
    typer.echo(f"serving {clone} on http://{host}:{port}/v1" + (" (API key required)" if api_key else ""))
    run_server(str(clone), settings, host=host, port=port, api_key=api_key, max_body_bytes=int(max_body_mb * 2**20))


@app.command()
def export(
    clone: Annotated[Path, typer.Argument(help="Clone directory made by llmclone train.", show_default=False)],
    merged: Annotated[Path | None, typer.Option(help="Write the base model with the adapter merged in (a Hugging Face checkpoint) here.")] = None,
    gguf: Annotated[Path | None, typer.Option(help="Write an f16 GGUF for llama.cpp / Ollama here (Gemma-family bases, e.g. the embedded one).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace what is there.")] = False,
    device: Annotated[str, _DEVICE] = "auto",
) -> None:
    """Export the clone as a standalone model: --merged DIR and/or --gguf FILE."""
    from llmclone.export import export_gguf, export_merged

    if merged is None and gguf is None:
        raise UserError("say what to export: --merged DIR (Hugging Face checkpoint) and/or --gguf FILE (llama.cpp).")
    if merged is not None:
        typer.echo(f"merged checkpoint written to {export_merged(clone, merged, force=force, device=device)}")
    if gguf is not None:
        typer.echo(f"GGUF written to {export_gguf(clone, gguf, force=force)} (prompt format beside it)")


memory_app = typer.Typer(help="The clone's memory of past exchanges: build it, see what a message recalls, forget a chat.",
                         no_args_is_help=True)
app.add_typer(memory_app, name="memory")
_CLONE = typer.Argument(help="Clone directory made by llmclone train.", show_default=False)


@memory_app.command("build")
def memory_build(
    clone: Annotated[Path, _CLONE],
    data: Annotated[Path, typer.Option("--data", help="The owner's dataset directory (its training split is remembered).")],
    contacts: Annotated[Path | None, typer.Option(help="TOML file of who each chat is to you (see llmclone train --help).")] = None,
) -> None:
    """(Re)build the memory from the dataset; exchanges added live by the Telegram modes are kept."""
    from llmclone.memory.manage import build

    memory = build(clone, data, contacts)
    typer.echo(f"memory of {clone}: {memory.meta['exchanges']:,} exchanges from {memory.meta['chats']:,} chats "
               f"in {memory.meta['seconds']} s")


@memory_app.command("show")
def memory_show(
    clone: Annotated[Path, _CLONE],
    query: Annotated[str, typer.Argument(help="A message, as if someone had just sent it.", show_default=False)],
    chat: Annotated[str | None, typer.Option("--chat", help="The chat it came from: its key (llmclone memory chats) or source:id.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of the exchanges.")] = False,
) -> None:
    """Print what the clone would recall for a message (in --chat, or from an unknown chat)."""
    from llmclone.memory.manage import show

    found = show(clone, query, chat)
    if as_json:
        typer.echo(json.dumps(found, ensure_ascii=False, indent=2))
        return
    for e in found:
        said = f"  them: {e['said']}\n" if e["said"] else ""
        typer.echo(f"[{e['chat']} {e['origin']}]\n{said}  you: {e['owner']}")
    if not found:
        typer.echo("nothing recalled")


@memory_app.command("chats")
def memory_chats(
    clone: Annotated[Path, _CLONE],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the chats the memory holds: key, relation, exchanges, first and last conversation (UTC)."""
    import time

    from llmclone.memory.manage import chats

    rows = chats(clone)
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    day = lambda t: time.strftime("%Y-%m-%d", time.gmtime(t))  # noqa: E731
    for r in rows:
        typer.echo(f"{r['chat']}  {r['exchanges']:>6}  {day(r['first'])}..{day(r['last'])}  {r['relation'] or ''}")


@memory_app.command("forget")
def memory_forget(
    clone: Annotated[Path, _CLONE],
    chat: Annotated[str, typer.Argument(help="The chat: its key (llmclone memory chats) or source:id.", show_default=False)],
) -> None:
    """Remove a chat from the memory: its exchanges, index entries, live additions and relation."""
    from llmclone.memory.manage import forget

    gone = forget(clone, chat)
    typer.echo(f"forgot {gone} exchanges of {chat}. The clone's weights still learned from that chat: to drop it "
               f"there too, ingest again with --exclude-chat and train the clone again.")


telegram_app = typer.Typer(help="Put the clone to work in Telegram: a bot, a Telegram Business bot, or your own account.",
                           no_args_is_help=True)
app.add_typer(telegram_app, name="telegram")

_TG_CONFIG = typer.Option("--config", help="TOML file with the Telegram settings ([telegram]) and how the clone replies ([reply]).")
_TG_STATE = typer.Option("--state", help="SQLite state file (default: under LLMCLONE_HOME/telegram).")
_TG_OWNER = typer.Option("--owner-id", help="Your Telegram user id: owner commands, and who the clone answers by default.")
_TG_ALLOW = typer.Option("--allow", help="Another user id the clone may answer (repeatable).")
_TG_DEVICE = typer.Option("--device", help="Where the clone runs: auto, cpu, cuda or cuda:N (default: the [reply] table's device, else auto).")


def _telegram(mode: str, clone: Path, config: Path | None, state: Path | None, owner_id: int | None, allow: list[int] | None,
              device: str | None = None) -> None:
    from llmclone.telegram.launch import launch

    overrides = {"owner_id": owner_id, "allow": allow or None, "device": device}
    launch(mode, clone, config, overrides, state)


def _bot_command(mode: str, summary: str) -> None:
    def command(
        clone: Annotated[Path, typer.Argument(help="Clone directory made by llmclone train.", show_default=False)],
        config: Annotated[Path | None, _TG_CONFIG] = None,
        state: Annotated[Path | None, _TG_STATE] = None,
        owner_id: Annotated[int | None, _TG_OWNER] = None,
        allow: Annotated[list[int] | None, _TG_ALLOW] = None,
        device: Annotated[str | None, _TG_DEVICE] = None,
    ) -> None:
        _telegram(mode, clone, config, state, owner_id, allow, device)

    command.__doc__ = summary
    telegram_app.command(mode)(command)


_bot_command("bot", "People write to a bot and the clone answers (token in TELEGRAM_BOT_TOKEN). Only you and --allow'ed users.")
_bot_command("business", "The bot answers your private chats through Telegram Business (connect it in Settings → Telegram "
             "Business → Chatbots).")


@telegram_app.command("userbot")
def telegram_userbot(
    clone: Annotated[Path, typer.Argument(help="Clone directory made by llmclone train.", show_default=False)],
    config: Annotated[Path | None, _TG_CONFIG] = None,
    state: Annotated[Path | None, _TG_STATE] = None,
    allow: Annotated[list[int] | None, _TG_ALLOW] = None,
    device: Annotated[str | None, _TG_DEVICE] = None,
) -> None:
    """The clone on your own account (TG_API_ID, TG_API_HASH; session from `login`). Drafts to Saved Messages by default."""
    _telegram("userbot", clone, config, state, None, allow, device)


@telegram_app.command("login")
def telegram_login() -> None:
    """Sign in to your account once (phone, code, 2FA) and keep the session, readable by you only."""
    from llmclone.telegram.userbot import login

    typer.echo(f"session saved to {login()} (mode 600); keep it secret: it is your account.")


@app.command("eval")
def eval_(
    clone: Annotated[Path, typer.Argument(help="Clone directory made by llmclone train.", show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="The owner's dataset directory (its eval.jsonl: the held-out future).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report directory to create (report.html, report.json, plots).")],
    limit: Annotated[int | None, typer.Option(help="Held-out replies to use (a seeded subset); 0 for all.")] = 200,
    compare: Annotated[list[Path] | None, typer.Option(help="Another clone of the same owner to put side by side (repeatable).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the subset and the sampled replies.")] = 0,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Run the privacy probe.")] = True,
    config: Annotated[Path | None, _REPLY_CONFIG] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature for the replies (0 = greedy).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing report directory.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    device: Annotated[str | None, _DEVICE] = None,
    load: Annotated[str | None, _LOAD] = None,
    batch: Annotated[int | None, typer.Option(help="Held-out cases per forward pass (default: 16 on a GPU, 4 on a CPU).", min=1)] = None,
) -> None:
    """How much the clone sounds like its owner: held-out perplexity, style, distinguishability, a privacy probe."""
    from llmclone.evaluation.evaluate import EvalOptions, evaluate
    from llmclone.evaluation.summary import summary_lines

    if limit is not None and limit < 0:
        raise UserError("--limit must be 0 (all) or a positive number of held-out replies.")
    settings = _reply_settings(config, temperature, device=device, load=load)
    options = EvalOptions(limit=limit or None, seed=seed, probe=probe, reply=settings, progress=not quiet, batch=batch)
    report = evaluate([clone, *(compare or [])], data, out, options, force=force)
    for line in summary_lines(report):
        typer.echo(line)
    typer.echo(f"report: {out / 'report.html'}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user mistakes become one sentence on stderr and exit code 2."""
    interrupts.install()
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # a privacy tool reports nothing anywhere
    try:
        app(args=argv, prog_name="llmclone")
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except SystemExit as done:  # typer turns Ctrl-C into a silent exit 130: say why it stopped
        if done.code == 130 and isinstance(getattr(done.__context__, "__cause__", None), KeyboardInterrupt):
            typer.echo("interrupted", err=True)
        raise
