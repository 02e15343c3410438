"""What `llmclone telegram bot|business|userbot` does: load the clone and the settings, then run."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

from llmclone.config import load_reply_config
from llmclone.errors import UserError
from llmclone.models.base_models import home
from llmclone.telegram.config import load_telegram_config, secret


def default_state(mode: str, clone_dir: Path) -> Path:
    key = hashlib.sha256(str(clone_dir.absolute()).encode()).hexdigest()[:8]
    return home() / "telegram" / f"{mode}-{clone_dir.name}-{key}.sqlite"


def launch(mode: str, clone_dir: Path, config_path: Path | None, overrides: dict[str, Any], state: Path | None) -> None:
    from llmclone.clone import LLMClone

    device = overrides.pop("device", None)
    config = load_telegram_config(config_path, overrides)
    reply = load_reply_config(config_path, {"device": device})  # the same file's [reply] table
    if mode == "bot" and config.owner_id is None and not config.allow:
        raise UserError("nobody may talk to this bot yet: give your Telegram user id with --owner-id (or owner_id "
                        "in the config); ask @userinfobot if you do not know it.")
    if mode in ("bot", "business"):  # fail on a missing secret before spending seconds on the model
        secret("TELEGRAM_BOT_TOKEN", "the bot's token from @BotFather")
    else:
        from llmclone.telegram.userbot import api_credentials, read_session

        api_credentials()
        read_session()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("aiogram.event", "httpx", "telethon.network"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    state = state or default_state(mode, clone_dir)
    clone = LLMClone.load(clone_dir, reply)
    if clone.runtime is not None:
        logging.getLogger("llmclone.telegram").info("%s", clone.runtime.describe())
    if mode in ("bot", "business"):
        from llmclone.telegram import bot

        asyncio.run(bot.run(clone, config, str(state), mode))
    else:
        from llmclone.telegram import userbot

        asyncio.run(userbot.run(clone, config, str(state)))
