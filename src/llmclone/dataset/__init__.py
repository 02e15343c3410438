"""Chats → training samples: dialogues, privacy, the ingest pipeline and its outputs."""
