"""Gerbang: face-verified check-in gates for exam centres (shared core: wire contract, config)."""

__version__ = "0.1.0"
