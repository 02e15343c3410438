"""Evaluation: does the clone sound like its owner (metrics, privacy probe, report)."""
