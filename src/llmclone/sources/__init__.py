"""Readers: one module per messenger, each turning exports into `Chat` objects (see base.py)."""
