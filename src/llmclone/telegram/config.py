"""Telegram settings: the [telegram] table of a clone's TOML file (its [reply] table says how the clone
replies), plus environment variables for the secrets.

Secrets are never written to the config file or the logs: TELEGRAM_BOT_TOKEN (bot, business),
TG_API_ID / TG_API_HASH / TG_SESSION (userbot), TELEGRAM_API_BASE (another Bot API server).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmclone.config import ReplyConfig, load_table
from llmclone.errors import UserError


class TelegramConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    owner_id: int | None = None  # the owner's Telegram user id: owner commands, and the default allowlist
    allow: list[int] = Field(default_factory=list)  # who the clone may answer besides the owner
    # pacing: look human, and let people finish their thought
    debounce_seconds: float = Field(4.0, ge=0)  # wait this long after someone's last message, then answer once
    read_delay_seconds: float = Field(2.0, ge=0)
    typing_chars_per_second: float = Field(8.0, gt=0)
    max_typing_seconds: float = Field(12.0, ge=0)
    pause_between_messages: float = Field(1.0, ge=0)
    history_messages: int = Field(40, ge=1)  # how much of the chat the clone sees
    # caps and quiet rules
    per_chat_hourly_cap: int = Field(20, ge=0)
    daily_cap: int = Field(200, ge=0)
    quiet_after_owner_seconds: float = Field(900, ge=0)  # userbot/business: the owner wrote here recently → stay quiet
    skip_while_owner_online: bool = True  # userbot
    business_reply_window_hours: float = Field(24, gt=0)  # Telegram Business: only chats active in the last 24 h
    # userbot safety
    draft_mode: bool = True  # suggest replies in Saved Messages; send only what the owner approves
    auto_send: list[int] = Field(default_factory=list)  # chats where replies go out without approval
    disclosure: str = ""  # appended to every sent reply, e.g. " (AI)"
    # robustness
    max_retries: int = Field(5, ge=0)
    backoff_seconds: float = Field(1.0, ge=0)
    breaker_failures: int = Field(5, ge=1)  # consecutive failed sends that open the circuit breaker
    breaker_cooldown_seconds: float = Field(300, ge=0)
    # how the clone replies (engine, device, sampling) is the [reply] table of the same file: ReplyConfig

    @model_validator(mode="before")
    @classmethod
    def _reply_settings_elsewhere(cls, data: Any) -> Any:
        moved = sorted(set(data) & set(ReplyConfig.model_fields)) if isinstance(data, dict) else []
        if moved:
            raise ValueError(f"{', '.join(moved)} now belong(s) in the [reply] table of the same file (shared "
                             "with reply, chat and serve); move them there")
        return data


def load_telegram_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TelegramConfig:
    return load_table(path, "telegram", TelegramConfig, overrides)


def secret(name: str, what: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise UserError(f"set the environment variable {name} ({what}); secrets are never taken from files or flags.")
    return value


class RedactSecrets(logging.Filter):
    """Replace any secret's value in log records (libraries may log URLs that contain the bot token)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(s in message for s in self.secrets):
            record.msg, record.args = self._redact(message), None
        if record.exc_info and not record.exc_text:  # a traceback carries exception texts: format it here, redacted
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True

    def _redact(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "<secret>")
        return text


def install_log_redaction(secrets: list[str]) -> None:
    flt = RedactSecrets(secrets)
    for handler in logging.getLogger().handlers or []:
        handler.addFilter(flt)
    for name in ("", "aiogram", "aiohttp", "telethon", "llmclone"):
        logging.getLogger(name).addFilter(flt)
