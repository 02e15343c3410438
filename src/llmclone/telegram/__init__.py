"""The clone in Telegram: a bot, a Telegram Business bot, or the owner's own account (userbot).

One engine (engine.py) with one policy (policy.py) and one SQLite store (store.py) serves all three;
bot.py (aiogram) and userbot.py (Telethon) only translate Telegram's updates and calls.
"""
