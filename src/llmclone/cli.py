"""The `llmclone` command line: each command parses its options and calls one function elsewhere."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from llmclone.errors import UserError

app = typer.Typer(
    name="llmclone",
    help="Turn your chat history into a language model that writes like you.\n\n"
    "Pipeline: ingest (export → dataset) → train (dataset → clone) → chat / reply / serve / telegram / eval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
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
    force: Annotated[bool, typer.Option("--force", help="Replace an existing dataset directory.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the stats as JSON.")] = False,
) -> None:
    """Turn Telegram exports into a private training dataset (train.jsonl, eval.jsonl, stats.json)."""
    from llmclone.dataset.ingest import IngestOptions, summary
    from llmclone.dataset.ingest import ingest as run_ingest

    options = IngestOptions(
        me=me, groups=groups, chats=chat or [], exclude_chats=exclude_chat or [], since=since, until=until,
        merge_gap=merge_gap, session_gap=session_gap, max_context=max_context, context_unit=context_unit,
        eval_fraction=eval_fraction, redact_file=str(redact_file) if redact_file else None,
        drop_redacted=drop_redacted,
    )
    stats = run_ingest(exports, out, options, force=force, progress=not quiet and sys.stderr.isatty())
    if as_json:
        typer.echo(json.dumps(stats, ensure_ascii=False, indent=2))
    elif not quiet:
        typer.echo(summary(stats))
        typer.echo(f"dataset written to {out}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user mistakes become one sentence on stderr and exit code 2."""
    try:
        app(args=argv, prog_name="llmclone")
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
